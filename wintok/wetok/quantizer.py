"""Group-wise lookup-free quantization (WeTok's GQ), as pure functions of tensors.

A latent (B, C, H, W) with C = G * K is split into G groups of K contiguous channels
(group g owns channels g*K .. g*K+K-1). Each channel's sign is one bit: 1 if the value is
strictly > 0, else 0 (so 0.0 quantizes to -1). The group's id is sum_j bit_j * 2**j: the group's
FIRST channel is the LEAST significant bit. The code of a bit is +1 / -1.

Checked against the official `LFQ.forward` (src/WeTok/modules/vqvae/lookup_free_quantize.py:
`rearrange(x, 'b n (c d) -> b n c d', c=num_codebooks)`, `mask = 2 ** arange(codebook_dim)`,
`x > 0`). The official code returns ids flattened in (B, H, W, G) order; ours are (B, G, H*W)
with positions row-major, as `TokenLayout` requires. Everything here runs in float32.
"""
from __future__ import annotations

import torch


def _bit_weights(bits: int, device: torch.device) -> torch.Tensor:
    return torch.pow(2, torch.arange(bits, device=device, dtype=torch.int64))  # (K,) 1,2,4,...


def latent_to_ids(latent: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Latent (B, G*K, H, W) -> ids (B, G, H*W) int64, computed from float32 signs."""
    b, c, h, w = latent.shape
    if c % num_groups:
        raise ValueError(f"latent channels ({c}) must be divisible by num_groups ({num_groups})")
    k = c // num_groups
    bits = (latent.float() > 0).to(torch.int64).reshape(b, num_groups, k, h * w)
    return (bits * _bit_weights(k, latent.device).view(1, 1, k, 1)).sum(dim=2)


def ids_to_codes(ids: torch.Tensor, bits_per_group: int, grid: tuple[int, int]) -> torch.Tensor:
    """ids (B, G, H*W) -> float32 codes (B, G*K, H, W) in {-1, +1}; exact inverse of the ids."""
    b, g, p = ids.shape
    h, w = grid
    if p != h * w:
        raise ValueError(f"ids have {p} positions, grid {grid} needs {h * w}")
    k = bits_per_group
    bits = (ids.long().unsqueeze(2) & _bit_weights(k, ids.device).view(1, 1, k, 1)) != 0
    codes = bits.to(torch.float32) * 2.0 - 1.0  # (B, G, K, P)
    return codes.reshape(b, g * k, h, w)


def codes_to_ids(codes: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Codes (B, G*K, H, W) (any real values; sign decides) -> ids (B, G, H*W) int64."""
    return latent_to_ids(codes, num_groups)


def quantize(latent: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent -> (codes in {-1,+1} float32, ids). Inference only: no straight-through."""
    latent = latent.float()
    codes = torch.where(latent > 0, 1.0, -1.0).to(torch.float32)
    return codes, latent_to_ids(latent, num_groups)
