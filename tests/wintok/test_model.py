"""WinTok model behaviour on the tiny config."""
import pytest
import torch

from wintok import WinTok, WinTokConfig, preset
from wintok.model import sincos_2d


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WinTok(preset("tiny")).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 256, 256, generator=g) * 2 - 1


def test_encode_decode_shapes_and_dtypes(model, images):
    out = model.encode(images)
    c = model.config
    assert out.ids.shape == (3, 4, 256) and out.ids.dtype == torch.int64
    assert int(out.ids.min()) >= 0 and int(out.ids.max()) < 4096
    assert out.semantic.shape == (3, c.num_latent_tokens, c.hidden_size)
    assert out.semantic.dtype == torch.float32
    assert torch.equal(out.pooled, out.semantic.mean(1))
    rec = model.decode(out.ids)
    assert rec.shape == (3, 3, 256, 256) and rec.dtype == torch.float32
    assert model.layout.ids_shape == (4, 256) and model.layout.bits_per_id == 12


def test_ids_codes_ids_roundtrip_is_exact(model):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 4096, (5, 4, 256), generator=g)
    codes = model.quantizer.ids_to_codes(ids)
    assert codes.shape == (5, 256, 32)
    torch.testing.assert_close(codes.norm(dim=-1), torch.full((5, 256), 2.0))  # 4 unit chunks
    assert torch.equal(model.quantizer.codes_to_ids(codes), ids)


def test_batch_equals_per_image(model, images):
    batch = model.encode(images)
    for i in range(images.shape[0]):
        one = model.encode(images[i:i + 1])
        assert torch.equal(one.ids[0], batch.ids[i])
        torch.testing.assert_close(one.pooled[0], batch.pooled[i], atol=1e-5, rtol=1e-5)


def test_deterministic_across_runs_and_instances(images):
    torch.manual_seed(0)
    a = WinTok(preset("tiny")).eval()
    torch.manual_seed(0)
    b = WinTok(preset("tiny")).eval()
    assert a.identity == b.identity
    assert torch.equal(a.encode(images).ids, b.encode(images).ids)
    assert torch.equal(a.encode(images).ids, a.encode(images).ids)


def test_identity_changes_with_weights(images):
    torch.manual_seed(0)
    m = WinTok(preset("tiny"))
    before = m.identity
    with torch.no_grad():
        m.conv_out.bias.add_(1e-3)
    m.forget_identity()
    assert m.identity != before and m.identity.startswith("wintok-")


def test_pixel_ids_depend_on_query_tokens(model, images):
    """Queries share the bidirectional encoder with the patches, so they change the ids."""
    torch.manual_seed(0)
    other = WinTok(preset("tiny")).eval()
    with torch.no_grad():
        other.query_tokens.mul_(-3.0)
    assert not torch.equal(other.encode(images).ids, model.encode(images).ids)


def test_bf16_keeps_quantizer_in_float32(model, images):
    out = model.encode(images, precision="bf16")
    assert out.ids.dtype == torch.int64 and out.semantic.dtype == torch.float32
    agree = (out.ids == model.encode(images).ids).float().mean().item()
    assert agree > 0.9, agree  # network rounding moves a few near-ties, not the bulk


def test_wrong_resolution_and_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match=r"\(B,3,256,256\).*trained resolution"):
        model.encode(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match="float tensor"):
        model.encode(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    with pytest.raises(ValueError, match="precision"):
        model.encode(torch.zeros(1, 3, 256, 256), precision="fp8")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4096\)"):
        model.decode(torch.full((1, 4, 256), 4096))
    with pytest.raises(ValueError, match=r"ids must be \(B, 4, 256\)"):
        model.decode(torch.zeros(1, 4, 100, dtype=torch.long))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="img_size must be a multiple of patch_size"):
        WinTokConfig(img_size=250)
    with pytest.raises(ValueError, match="unknown WinTokConfig fields"):
        WinTokConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown WinTok preset"):
        preset("huge")


def test_decoder_position_embedding_is_row_major_sincos():
    pe = sincos_2d(8, 4)  # first half encodes the column, second half the row
    assert pe.shape == (16, 8)
    # position 1 is row 0, col 1: the row half equals position 0's, the column half differs
    assert (pe[1, 4:] == pe[0, 4:]).all() and not (pe[1, :4] == pe[0, :4]).all()
    assert (pe[4, :4] == pe[0, :4]).all() and not (pe[4, 4:] == pe[0, 4:]).all()


def test_training_forward_is_differentiable(model, images):
    torch.manual_seed(0)
    m = WinTok(preset("tiny")).train()
    out = m.forward_train(images[:2])
    loss = (out.recon - images[:2]).abs().mean() + out.quant.commit_loss + 0.1 * out.quant.entropy_loss
    loss.backward()
    assert m.encoder.vision_model.embeddings.patch_embedding.weight.grad is not None
    assert m.quant_proj.proj.weight.grad is not None
    assert m.decoder_rec_pos_embed.grad is None  # frozen
    assert torch.equal(out.quant.ids, model.encode(images[:2]).ids)
