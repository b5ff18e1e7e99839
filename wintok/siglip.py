"""A SigLIP-shaped vision transformer, with the parameter names transformers uses.

WinTok's encoder is a SigLIP vision tower (pooling head removed) and its pixel decoder a
SigLIP2-shaped stack without patch embedding. Keeping the module tree identical to
transformers' `SiglipVisionModel` (`vision_model.embeddings`, `vision_model.encoder.layers.N`,
`vision_model.post_layernorm`) lets official checkpoints load strictly without transformers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbeddings(nn.Module):
    """Non-overlapping patch projection plus learned absolute position embeddings."""

    def __init__(self, hidden: int, patch: int, num_positions: int, channels: int = 3):
        super().__init__()
        self.patch_embedding = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Embedding(num_positions, hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, hidden), row-major positions
        return x + self.position_embedding.weight.unsqueeze(0)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention (no mask: patches and queries all see each other)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as SigLIP
        return self.out_proj(y.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = SelfAttention(hidden, heads)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = MLP(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, depth: int, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, heads, intermediate, eps) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionModel(nn.Module):
    """`embeddings` (optional) -> `encoder` -> `post_layernorm`, named as in transformers."""

    def __init__(self, *, hidden: int, depth: int, heads: int, intermediate: int, eps: float,
                 patch: int | None = None, num_positions: int | None = None):
        super().__init__()
        if patch is not None:
            assert num_positions is not None
            self.embeddings = PatchEmbeddings(hidden, patch, num_positions)
        else:
            self.embeddings = None
        self.encoder = Encoder(depth, hidden, heads, intermediate, eps)
        self.post_layernorm = nn.LayerNorm(hidden, eps=eps)


class VisionTower(nn.Module):
    """Holds `vision_model` so the keys read `encoder.vision_model.*` like the official model."""

    def __init__(self, **kwargs):
        super().__init__()
        self.vision_model = VisionModel(**kwargs)
