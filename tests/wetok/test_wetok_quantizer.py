"""Group-wise lookup-free quantizer: bit order, position order, exact ids <-> codes."""
import pytest
import torch

from wintok.wetok import WeTok, preset
from wintok.wetok import quantizer as gq


def signs_to_latent(groups: list[str]) -> torch.Tensor:
    """'+-' strings, one per group (first char = the group's first channel) -> (1, C, 1, 1)."""
    vals = [1.0 if ch == "+" else -1.0 for g in groups for ch in g]
    return torch.tensor(vals).view(1, -1, 1, 1)


def test_bit_order_hand_computed():
    # group 0: + - - + - - - -  -> bits b0=1, b3=1 -> 1 + 8 = 9 (first channel = LSB)
    # group 1: all +            -> 255
    # group 2: all -            -> 0
    # group 3: - - - - - - - +  -> only the last channel -> 2**7 = 128
    latent = signs_to_latent(["+--+----", "++++++++", "--------", "-------+"])
    ids = gq.latent_to_ids(latent, num_groups=4)
    assert ids.shape == (1, 4, 1) and ids.dtype == torch.int64
    assert ids.flatten().tolist() == [9, 255, 0, 128]


def test_zero_is_a_zero_bit():
    latent = torch.zeros(1, 8, 1, 1)
    latent[0, 1] = 1e-30  # tiny positive -> bit 1; exact 0 -> bit 0 (official: x > 0)
    assert gq.latent_to_ids(latent, 1).item() == 2


def test_positions_are_row_major():
    latent = -torch.ones(1, 8, 2, 3)
    latent[0, 0, 0, 1] = 1.0  # row 0, col 1 -> position 1
    latent[0, 7, 1, 0] = 1.0  # row 1, col 0 -> position 3
    assert gq.latent_to_ids(latent, 1)[0, 0].tolist() == [0, 1, 0, 128, 0, 0]


def test_every_id_round_trips():
    ids = torch.arange(256).view(1, 1, 256).repeat(2, 4, 1)  # (B, G, P) with P = 16x16
    codes = gq.ids_to_codes(ids, 8, (16, 16))
    assert codes.dtype == torch.float32 and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(gq.codes_to_ids(codes, 4), ids)


def test_model_ids_codes_ids_exact():
    model = WeTok(preset("tiny"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, *model.layout.ids_shape), generator=g)
    codes = model.ids_to_codes(ids)
    assert codes.shape == (3, 32, 8, 8)
    assert torch.equal(model.codes_to_ids(codes), ids)
    # and codes -> ids -> codes for a real latent's codes
    latent = torch.randn(2, 32, 8, 8, generator=g)
    q, ids2 = gq.quantize(latent, 4)
    assert torch.equal(model.ids_to_codes(ids2), q)


def test_codes_to_ids_rejects_wrong_shape():
    model = WeTok(preset("tiny"))
    with pytest.raises(ValueError, match="codes must be"):
        model.codes_to_ids(torch.ones(1, 16, 8, 8))
