"""Official-checkpoint loading (strict, EMA), family detection, and our on-disk format."""
import json

import pytest
import torch
from wetok_helpers import official_checkpoint

from wintok.errors import CheckpointError
from wintok.wetok import (WeTok, load_pretrained, load_wetok_official, looks_like_wetok, preset,
                          save_pretrained)
from wintok.wetok.checkpoint import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def ema_model() -> WeTok:
    torch.manual_seed(0)
    return WeTok(preset("tiny"))


@pytest.fixture()
def ckpt(ema_model) -> dict:
    return official_checkpoint(ema_model.state_dict())


def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1


def sd_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- detection
def test_looks_like_wetok(ckpt):
    assert looks_like_wetok(ckpt)
    assert not looks_like_wetok({"state_dict": {"encoder.vision_model.embeddings.patch_embedding.weight": 1}})
    assert not looks_like_wetok({"trainer": {"unitok": {}}})  # a WinTok .pth
    assert not looks_like_wetok({"state_dict": []})
    assert not looks_like_wetok({})


# ---------------------------------------------------------------- strict official loading
def test_official_loads_strictly_with_ema(ckpt, ema_model):
    model = load_wetok_official(ckpt, source="tiny.ckpt", image_size=16)
    assert model.config == preset("tiny")
    assert sd_equal(model.state_dict(), ema_model.state_dict())  # EMA, not the zero raw weights
    rep = model.load_report
    assert rep.weights == "ema" and rep.config_from == "state_dict"
    assert "loss.discriminator.main.3.running_mean" in rep.ignored
    assert "loss.perceptual_loss.lin0.model.1.weight" in rep.ignored
    assert {"model_ema.decay", "model_ema.num_updates",
            "model_ema.lossdiscriminatormain0weight"} <= set(rep.ignored)
    assert not any(k.startswith(("encoder.", "decoder.")) for k in rep.ignored)
    assert torch.equal(model.encode(images()).ids, ema_model.encode(images()).ids)


def test_use_ema_false_takes_raw_weights(ema_model):
    torch.manual_seed(5)
    raw = WeTok(preset("tiny")).state_dict()
    ck = official_checkpoint(ema_model.state_dict(), raw_weights=raw)
    model = load_wetok_official(ck, source="x", use_ema=False, image_size=16)
    assert sd_equal(model.state_dict(), raw)
    assert model.load_report.weights == "raw"
    assert "model_ema.encoderconv_inweight" in model.load_report.ignored


def test_no_ema_falls_back_to_raw_and_says_so(ema_model, caplog):
    ck = official_checkpoint(ema_model.state_dict(), raw_weights=ema_model.state_dict(), ema=False)
    model = load_wetok_official(ck, source="noema.ckpt", image_size=16)
    assert model.load_report.weights == "raw"
    assert any("no EMA" in n for n in model.load_report.notes)
    assert "model_ema" in caplog.text


@pytest.mark.parametrize("mutate, named", [
    (lambda sd: sd.__setitem__("encoder.extra.weight", torch.zeros(1)), "unexpected generator keys: encoder.extra.weight"),
    (lambda sd: sd.pop("decoder.conv_out.bias"), "missing generator keys: decoder.conv_out.bias"),
    (lambda sd: sd.pop("model_ema.decoderconv_outbias"), "missing EMA keys: model_ema.decoderconv_outbias"),
    (lambda sd: sd.__setitem__("model_ema.decoderfoo", torch.zeros(1)), "unexpected EMA keys: model_ema.decoderfoo"),
    (lambda sd: sd.__setitem__("quantize.codebook", torch.zeros(256, 8)), "unexpected keys .*quantize.codebook"),
    (lambda sd: sd.__setitem__("decoder.conv_out.bias", torch.zeros(4)), r"decoder.conv_out.bias has shape \(4,\)"),
])
def test_official_refuses_bad_keys_naming_them(ckpt, mutate, named):
    mutate(ckpt["state_dict"])
    with pytest.raises(CheckpointError, match=named):
        load_wetok_official(ckpt, source="bad.ckpt", image_size=16)


def test_official_requires_a_state_dict():
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        load_wetok_official({"model": {}}, source="odd.ckpt")


def test_config_must_match_the_checkpoint(ckpt):
    with pytest.raises(CheckpointError, match="gan_decoder: True vs False"):
        load_wetok_official(ckpt, source="x", config=preset("tiny_gan"))
    model = load_wetok_official(ckpt, source="x", config=preset("tiny"))
    assert model.load_report.config_from == "WeTokConfig"


def test_config_from_official_yaml_path(ckpt, tmp_path):
    yaml_text = """\
model:
  class_path: src.WeTok.models.lfqgan.VQModel
  init_args:
    ddconfig: {double_z: False, z_channels: 32, resolution: 128, in_channels: 3, out_ch: 3,
               ch: 32, ch_mult: [1, 1], num_res_blocks: 1}
    n_embed: 256
    embed_dim: 32
    num_codebooks: 4
    use_ema: True
"""
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml_text)
    model = load_wetok_official(ckpt, source="x", config=p, image_size=16)
    assert model.config == preset("tiny")
    assert model.load_report.config_from == f"yaml:{p}"
    p.write_text(yaml_text.replace("ch_mult: [1, 1]", "ch_mult: [1, 1, 1]"))
    with pytest.raises(CheckpointError, match=r"ch_mult: \[1, 1, 1\] vs \[1, 1\]"):
        load_wetok_official(ckpt, source="x", config=p, image_size=16)
    # The quantizer is stateless, so its grouping can only come from the config: it wins.
    p.write_text(yaml_text.replace("num_codebooks: 4", "num_codebooks: 2").replace("n_embed: 256", "n_embed: 65536"))
    model = load_wetok_official(ckpt, source="x", config=p, image_size=16)
    assert (model.config.num_groups, model.config.bits_per_group) == (2, 16)


# ---------------------------------------------------------------- our format
def test_save_load_round_trip(ema_model, tmp_path):
    d = save_pretrained(ema_model, tmp_path / "tok")
    meta = json.loads((d / CONFIG_FILE).read_text())
    assert meta["family"] == "wetok" and meta["format_version"] == 1
    assert meta["identity"] == ema_model.identity
    loaded = load_pretrained(d)
    assert loaded.identity == ema_model.identity
    assert torch.equal(loaded.encode(images()).ids, ema_model.encode(images()).ids)
    assert not list(d.glob("*.tmp"))


def test_truncated_weights_refused(ema_model, tmp_path):
    d = save_pretrained(ema_model, tmp_path / "tok")
    w = d / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(d)


def test_shape_mismatch_refused(ema_model, tmp_path):
    d = save_pretrained(ema_model, tmp_path / "tok")
    meta = json.loads((d / CONFIG_FILE).read_text())
    meta["config"]["ch_mult"] = [1, 2]
    (d / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="has shape"):
        load_pretrained(d)


def test_missing_or_foreign_config_refused(ema_model, tmp_path):
    d = save_pretrained(ema_model, tmp_path / "tok")
    meta = json.loads((d / CONFIG_FILE).read_text())
    (d / CONFIG_FILE).write_text(json.dumps({**meta, "family": "wintok"}))
    with pytest.raises(CheckpointError, match="family is 'wintok'"):
        load_pretrained(d)
    (d / CONFIG_FILE).write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(CheckpointError, match="format_version 2"):
        load_pretrained(d)
    (d / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(d)


def test_load_tokenizer_recognises_each_family_from_files(ckpt, ema_model, tmp_path):
    """One entry point: the family comes from the file's contents, not its name."""
    from wintok import WinTok, load_tokenizer
    from wintok import preset as wintok_preset
    from wintok import save_pretrained as save_any

    torch.save(ckpt, tmp_path / "wetok.anyname")
    tok = load_tokenizer(tmp_path / "wetok.anyname", image_size=16)  # conv nets: size is a choice
    assert tok.family == "wetok" and tok.layout.family == "wetok"
    assert torch.equal(tok.encode(images()).ids, ema_model.encode(images()).ids)
    save_any(tok, tmp_path / "ours-wetok")
    assert load_tokenizer(tmp_path / "ours-wetok").identity == tok.identity
    torch.manual_seed(0)
    save_any(WinTok(wintok_preset("tiny")), tmp_path / "ours-wintok")
    assert load_tokenizer(tmp_path / "ours-wintok").family == "wintok"


def test_cli_encode_decode_with_an_official_wetok_checkpoint(ckpt, ema_model, tmp_path):
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from flows.cli import cli
    from wintok.tokenfile import read_token_file

    torch.save(ckpt, tmp_path / "wetok.ckpt")
    Image.fromarray((np.random.default_rng(0).random((40, 30, 3)) * 255).astype("uint8")).save(tmp_path / "x.png")
    run = CliRunner().invoke
    r = run(cli, ["encode", str(tmp_path / "x.png"), "-c", str(tmp_path / "wetok.ckpt"),
                  "--image-size", "16", "-o", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output
    tf = read_token_file(tmp_path / "t.json")
    assert tf.layout == ema_model.layout and tf.identity == ema_model.identity
    assert tf.layout.bits_per_id == 8 and tf.semantic is None
    r = run(cli, ["decode", str(tmp_path / "t.json"), "-c", str(tmp_path / "wetok.ckpt"),
                  "--image-size", "16", "-o", str(tmp_path / "r.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "r.png").size == (16, 16)
