"""Checkpoint formats: official WinTok .pth parity, our safetensors format, and refusals."""
import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wintok import CheckpointError, WinTok, load_checkpoint, preset, save_pretrained

DATA = Path(__file__).parent / "data"


def official_tiny() -> tuple[dict, dict]:
    """The golden fixture: a tiny WinTok built and run by the OFFICIAL implementation.

    Produced with markywg/WinTok at commit eb0452e (models/wintok.py, models/modules/quant.py)
    and transformers 4.52.3: `WinTok(args)` with the args in official_tiny_args.json (encoder: a
    SiglipVisionModel of width 192, 1 layer, 3 heads, patch 16 at 256 px), every parameter
    randomised at bf16-representable values, then `img_to_idx(images)`,
    `encode(images)['pooler_out' / 'query_tokens']` and `idx_to_img(ids)` on 2 images with
    values in [-1.1, 1.1] (the clamp in the scaling layer is exercised). timm's
    get_norm_layer('layernorm') was replaced by nn.LayerNorm (the same function)."""
    sd = {k: v.float() if v.is_floating_point() else v
          for k, v in load_file(DATA / "official_tiny_state.safetensors").items()}
    golden = load_file(DATA / "official_tiny_golden.safetensors")
    return sd, golden


def write_official_pth(path: Path, sd: dict, args: dict | None = None) -> Path:
    args = args if args is not None else json.loads((DATA / "official_tiny_args.json").read_text())
    a = OrderedDict(args)
    a["dtype"] = torch.float32  # the real args hold a torch.dtype: allowed by weights_only
    torch.save({"args": a, "epoch": 3, "iter": 1200,
                "trainer": {"unitok": OrderedDict(sd), "disc": {}, "unitok_optim": {},
                            "disc_optim": {}, "config": {"grad_clip": 10.0}}}, path)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sd, golden = official_tiny()
    path = write_official_pth(tmp_path_factory.mktemp("ckpt") / "ckpt-last.pth", sd)
    return path, sd, golden


def test_official_checkpoint_gives_the_official_ids_exactly(official):
    path, _, golden = official
    model = load_checkpoint(path, encoder_config=3)  # 3 heads: not a released SigLIP shape
    assert model.config.num_latent_tokens == 4 and model.config.decoder_hidden_size == 64
    out = model.encode(golden["images"].float())
    assert torch.equal(out.ids, golden["ids"].long())  # float32 CPU: exact
    assert torch.equal(out.pooled, golden["pooled"])
    assert torch.equal(out.semantic, golden["semantic"])
    recon = model.decode(out.ids)
    torch.testing.assert_close(recon, golden["recon"].float(), atol=2e-3, rtol=0)  # fp16 golden


def test_encoder_heads_from_a_local_siglip_config(official, tmp_path):
    path, _, golden = official
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "siglip", "vision_config": {"hidden_size": 192, "num_attention_heads": 3,
                                                     "layer_norm_eps": 1e-6}}))
    model = load_checkpoint(path, encoder_config=tmp_path)
    assert torch.equal(model.encode(golden["images"].float()).ids, golden["ids"].long())


def test_unknown_encoder_shape_without_config_is_refused(official):
    with pytest.raises(CheckpointError, match="heads cannot be read off the weights.*--encoder-config"):
        load_checkpoint(official[0])


def test_save_and_reload_gives_identical_ids(official, tmp_path):
    path, _, golden = official
    model = load_checkpoint(path, encoder_config=3)
    save_pretrained(model, tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "model.safetensors"]
    again = load_checkpoint(tmp_path / "ours")
    assert again.identity == model.identity
    assert again.config == model.config
    x = golden["images"].float()
    assert torch.equal(again.encode(x).ids, golden["ids"].long())
    # key names are the official ones, so our safetensors loads into the official layout too
    assert set(load_file(tmp_path / "ours" / "model.safetensors")) == set(official[1])


def test_official_key_groups_present():
    keys = set(WinTok(preset("tiny")).state_dict())
    for k in ["scaling_layer.shift", "scaling_layer.scale", "query_tokens", "query_tokens_pos_embed",
              "decoder_rec_pos_embed", "encoder.vision_model.embeddings.patch_embedding.weight",
              "encoder.vision_model.encoder.layers.1.self_attn.q_proj.weight",
              "encoder.vision_model.post_layernorm.weight",
              "decoder.vision_model.encoder.layers.0.mlp.fc1.weight",
              "decoder.vision_model.post_layernorm.bias", "decode_task_layer_1.0.weight",
              "decode_task_layer_1.2.weight", "decode_task_layer_2.0.weight", "conv_out.weight",
              "fc_norm.weight", "projection.weight", "quant_proj.attn.qkv.weight",
              "quant_proj.attn.q_bias", "quant_proj.attn.v_bias", "quant_proj.attn.zero_k_bias",
              "quant_proj.attn.proj.weight", "quant_proj.mlp.norm.weight", "quant_proj.mlp.w0.weight",
              "post_quant_proj.norm3.weight", "quantizer.codebooks.3.codebook.weight",
              "quantizer.codebooks.3.vocab_usage"]:
        assert k in keys, k
    assert not any(k.startswith(("encoder.vision_model.head", "decoder.vision_model.head",
                                 "decoder.vision_model.embeddings")) for k in keys)


def test_shapes_disagreeing_with_args_are_named(official, tmp_path):
    _, sd, _ = official
    args = json.loads((DATA / "official_tiny_args.json").read_text())
    args["num_latent_tokens"] = 32
    p = write_official_pth(tmp_path / "bad.pth", sd, args)
    with pytest.raises(CheckpointError, match=r"args\['num_latent_tokens'\]=32 but the weights say 4"):
        load_checkpoint(p, encoder_config=3)


def test_shape_mismatch_in_state_dict_is_named(official, tmp_path):
    _, sd, _ = official
    bad = dict(sd)
    bad["fc_norm.weight"] = torch.zeros(10)
    p = write_official_pth(tmp_path / "bad.pth", bad)
    with pytest.raises(CheckpointError, match=r"fc_norm.weight: checkpoint \(10,\) vs config \(192,\)"):
        load_checkpoint(p, encoder_config=3)


def test_missing_and_unexpected_keys_are_named(official, tmp_path):
    _, sd, _ = official
    bad = {k: v for k, v in sd.items() if k != "fc_norm.bias"}
    bad["encoder.vision_model.head.probe"] = torch.zeros(1, 1, 192)
    p = write_official_pth(tmp_path / "bad.pth", bad)
    with pytest.raises(CheckpointError, match=r"missing keys: fc_norm.bias.*unexpected keys: encoder.vision_model.head.probe"):
        load_checkpoint(p, encoder_config=3)


def test_truncated_files_are_refused(official, tmp_path):
    path = official[0]
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_checkpoint(cut, encoder_config=3)
    model = load_checkpoint(path, encoder_config=3)
    save_pretrained(model, tmp_path / "ours")
    st = tmp_path / "ours" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "ours")


def test_weights_swapped_under_a_config_are_caught(tmp_path):
    torch.manual_seed(0)
    a = WinTok(preset("tiny"))
    torch.manual_seed(1)
    b = WinTok(preset("tiny"))
    save_pretrained(a, tmp_path / "a")
    save_pretrained(b, tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_checkpoint(tmp_path / "a")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(official, tmp_path):
    _, sd, _ = official
    p = tmp_path / "evil.pth"
    torch.save({"args": {"img_size": 256}, "trainer": {"unitok": sd}, "hook": Evil()}, p)
    with pytest.raises(CheckpointError, match="refused: it needs arbitrary Python objects"):
        load_checkpoint(p)


def test_legacy_pickles_load_through_the_restricted_unpickler(official, tmp_path):
    """Files saved before torch 1.6 (torchvision's VGG16, LPIPS, the FID Inception) are legacy
    pickles: they load, and one that needs code is refused just like a zip checkpoint."""
    path, sd, _ = official
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    a, b = load_checkpoint(path, encoder_config=3), load_checkpoint(legacy, encoder_config=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    evil = tmp_path / "evil_legacy.pth"
    torch.save({"w": torch.zeros(2), "hook": Evil()}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refused: it needs arbitrary Python objects.*posix.system"):
        load_checkpoint(evil)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.pth"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not a recognised tokenizer checkpoint"):
        load_checkpoint(p)
    (tmp_path / "junk.pth").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="neither a torch zip checkpoint nor a legacy"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path)
