"""The WeTok model behind the Tokenizer interface (tiny configs)."""
import re

import pytest
import torch

from wintok.tokenizer import Tokenizer, TokenLayout
from wintok.wetok import PRESETS, WeTok, WeTokConfig, config_from_official_yaml, preset


@pytest.fixture(scope="module")
def tiny() -> WeTok:
    torch.manual_seed(0)
    return WeTok(preset("tiny"))


@pytest.fixture(scope="module")
def tiny_gan() -> WeTok:
    torch.manual_seed(1)
    return WeTok(preset("tiny_gan"))


def images(b: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1


def test_satisfies_protocol(tiny):
    assert isinstance(tiny, Tokenizer)
    assert tiny.family == "wetok" and tiny.image_size == 16 and tiny.semantic_shape is None
    assert tiny.layout == TokenLayout(family="wetok", num_streams=4, grid=(8, 8), vocab_per_stream=256)
    assert tiny.layout.bits_per_id == 8


def test_identity_stable_and_weight_sensitive(tiny):
    ident = tiny.identity
    assert re.fullmatch(r"wetok-[0-9a-f]{12}", ident)
    twin = WeTok(tiny.config)
    twin.load_state_dict(tiny.state_dict())
    assert twin.identity == ident
    sd = tiny.state_dict()
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"] + 1
    twin.load_state_dict(sd)  # load_state_dict resets the cached identity
    assert twin.identity != ident
    other_cfg = WeTok(tiny.config.replace(image_size=32))
    other_cfg.load_state_dict(tiny.state_dict())
    assert other_cfg.identity != ident  # the config is part of the identity


def test_encode_decode_shapes_and_dtypes(tiny):
    out = tiny.encode(images())
    assert out.ids.shape == (2, 4, 64) and out.ids.dtype == torch.int64
    assert out.semantic is None and out.pooled is None
    assert 0 <= int(out.ids.min()) and int(out.ids.max()) < 256
    rec = tiny.decode(out.ids)
    assert rec.shape == (2, 3, 16, 16) and rec.dtype == torch.float32


def test_bf16_runs_and_quantizes_in_fp32(tiny):
    x = images()
    ref = tiny.encode(x).ids
    ids = tiny.encode(x, precision="bf16").ids
    assert ids.dtype == torch.int64 and ids.shape == ref.shape
    assert (ids == ref).float().mean() > 0.5  # not exact: the encoder ran in bf16
    rec = tiny.decode(ref, precision="bf16")
    assert rec.dtype == torch.float32 and rec.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(2, 3, 32, 32), r"\(B,3,16,16\).*\(2, 3, 32, 32\)"),
    (torch.zeros(2, 1, 16, 16), r"\(2, 1, 16, 16\)"),
    (torch.zeros(3, 16, 16), r"\(3, 16, 16\)"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "float tensor"),
])
def test_encode_rejects_bad_images(tiny, bad, msg):
    with pytest.raises(ValueError, match=msg):
        tiny.encode(bad)


def test_precision_is_checked(tiny):
    with pytest.raises(ValueError, match="precision"):
        tiny.encode(images(), precision="fp16")


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(2, 4, 63, dtype=torch.int64), r"\(B, 4, 64\)"),
    (torch.zeros(2, 64, 4, dtype=torch.int64), r"\(B, 4, 64\)"),
    (torch.full((1, 4, 64), 256), r"\[0, 256\)"),
    (torch.full((1, 4, 64), -1), r"\[0, 256\)"),
    (torch.zeros(1, 4, 64), "integer"),
])
def test_decode_rejects_bad_ids(tiny, bad, msg):
    with pytest.raises(ValueError, match=msg):
        tiny.decode(bad)


def test_plain_decoder_is_deterministic(tiny):
    ids = tiny.encode(images()).ids
    assert torch.equal(tiny.decode(ids), tiny.decode(ids, seed=3))


def test_generative_decoder_seeded(tiny_gan):
    ids = tiny_gan.encode(images()).ids
    a, b = tiny_gan.decode(ids, seed=11), tiny_gan.decode(ids, seed=11)
    c = tiny_gan.decode(ids, seed=12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert tiny_gan.decoder.conv_in.in_channels == 2 * tiny_gan.config.z_channels


def test_released_presets_match_their_names():
    want = {  # name -> (downsample, groups, grid at 256px, compression ratio, gan decoder)
        "GeneralDomain_compratio24": (8, 8, (32, 32), 24, False),
        "GeneralDomain_compratio48": (8, 4, (32, 32), 48, False),
        "GeneralDomain_compratio192": (16, 4, (16, 16), 192, False),
        "GeneralDomain_compratio768": (32, 4, (8, 8), 768, True),
        "ImageNet_downsample8": (8, 4, (32, 32), 48, False),
        "ImageNet_downsample16": (16, 4, (16, 16), 192, False),
    }
    for name, (f, g, grid, ratio, gan) in want.items():
        c = PRESETS[name]
        assert (c.downsample, c.num_groups, c.grid, c.compression_ratio, c.gan_decoder) == \
            (f, g, grid, ratio, gan), name
        assert c.ch == 256 and c.num_res_blocks == 4 and c.vocab_per_group == 256
    assert preset("GeneralDomain_compratio192_mscoco") == PRESETS["GeneralDomain_compratio192"]
    with pytest.raises(ValueError, match="unknown WeTok preset"):
        preset("compratio1000")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="z_channels"):
        WeTokConfig(z_channels=30)
    with pytest.raises(ValueError, match="image_size"):
        WeTokConfig(image_size=100)
    with pytest.raises(ValueError, match="unknown WeTokConfig fields"):
        WeTokConfig.from_dict({"chanels": 3})


# The model section of configs/WeToK/Inference/GeneralDomain_compratio768_imagenet.yaml.
OFFICIAL_768_YAML = """\
model:
  class_path: src.WeTok.models.lfqgan.VQModel
  init_args:
    ddconfig:
      double_z: False
      z_channels: 32
      resolution: 128
      in_channels: 3
      out_ch: 3
      ch: 256
      ch_mult: [1,1,2,2,4,8]  # num_down = len(ch_mult)-1
      num_res_blocks: 4
    lossconfig:
      target: src.WeTok.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
    n_embed: 256
    embed_dim: 32
    num_codebooks: 4
    use_ema: True
    gan_decoder: True
data:
  init_args:
    test:
      params:
        config:
          size: 256
"""


def test_official_yaml_reads_as_the_preset(tmp_path):
    p = tmp_path / "GeneralDomain_compratio768_imagenet.yaml"
    p.write_text(OFFICIAL_768_YAML)
    assert config_from_official_yaml(p) == PRESETS["GeneralDomain_compratio768"]
    p.write_text(OFFICIAL_768_YAML.replace("gan_decoder: True", "gan_decoder: False")
                 .replace("num_codebooks: 4", "num_codebooks: 8"))
    with pytest.raises(ValueError, match="z_channels"):
        config_from_official_yaml(p)
