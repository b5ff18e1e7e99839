"""WinTok's pixel-token path: attention projections and the multi-codebook cosine quantizer.

Everything here runs in float32: the indices must not depend on the network's precision.
Parameter names match the official checkpoint (`quant_proj.*`, `post_quant_proj.*`,
`quantizer.codebooks.{i}.codebook.weight`, `quantizer.codebooks.{i}.vocab_usage`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class HeadAttention(nn.Module):
    """Attention that changes width: `in_dim -> out_dim` with `heads` heads.

    Narrowing (in > out): heads of in_dim // heads dims, averaged over heads, then average-
    pooled to out_dim. Widening (in < out): heads of out_dim // heads dims, concatenated.
    Keys have no bias (a zero buffer `zero_k_bias` stands in its place).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int):
        super().__init__()
        width = max(in_dim, out_dim)
        self.in_dim, self.out_dim, self.heads = in_dim, out_dim, heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(in_dim, width * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        y = F.scaled_dot_product_attention(q, k, v)
        if self.in_dim > self.out_dim:
            y = y.mean(dim=1)  # (B, N, head_dim)
            if self.head_dim != self.out_dim:
                y = F.adaptive_avg_pool1d(y, self.out_dim)
        else:
            y = y.transpose(1, 2).reshape(b, n, -1)
        return self.proj(y)


class GeGLU(nn.Module):
    """Pre-normed gated MLP: w2(gelu_tanh(w0(x)) * w1(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))


class AttnProjection(nn.Module):
    """`quant_proj` (hidden -> vocab_width) and `post_quant_proj` (vocab_width -> hidden).

    y = proj(norm3(x)) + attn(norm1(x));  y = y + mlp(norm2(y)).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = HeadAttention(in_dim, out_dim, heads)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm3 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = GeGLU(out_dim, out_dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.proj.weight.dtype)
        y = self.proj(self.norm3(x)) + self.attn(self.norm1(x))
        return y + self.mlp(self.norm2(y))


class Codebook(nn.Module):
    """One codebook; entries are compared and emitted L2-normalised."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.codebook = nn.Embedding(size, dim)
        # Running usage frequency per entry (training statistic, kept for checkpoint parity).
        self.register_buffer("vocab_usage", torch.zeros(size))

    def normalized(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight.float(), dim=1)

    def nearest(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L) ids of the entry with the highest cosine."""
        b, l, d = features.shape
        f = F.normalize(features.reshape(-1, d), dim=-1).float()
        return torch.argmax(f @ self.normalized().T, dim=1).view(b, l)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, d) normalised code vectors."""
        return F.embedding(ids, self.normalized())


@dataclass
class QuantizerOutput:
    codes: torch.Tensor  # (B, L, vocab_width) normalised codes, straight-through gradient
    ids: torch.Tensor  # (B, num_codebooks, L) int64
    commit_loss: torch.Tensor  # beta * ||sg(q) - f||^2 + ||q - sg(f)||^2, mean over codebooks
    entropy_loss: torch.Tensor  # per-sample entropy - codebook entropy, mean over codebooks
    usage_pct: torch.Tensor  # % of entries chosen in this batch (above 1% of uniform)


class MultiCodebookQuantizer(nn.Module):
    """Splits the vocab_width channels into num_codebooks contiguous chunks, one codebook each."""

    def __init__(self, vocab_size: int, vocab_width: int, num_codebooks: int):
        super().__init__()
        self.num_codebooks = num_codebooks
        self.code_dim = vocab_width // num_codebooks
        self.codebooks = nn.ModuleList(
            Codebook(vocab_size // num_codebooks, self.code_dim) for _ in range(num_codebooks)
        )

    def init_uniform(self, scale: float = 1.0) -> None:
        """Official init (vocab_init=-1): uniform in +-scale * dim**-0.5 / 36."""
        bound = scale * self.code_dim**-0.5 / 36
        for cb in self.codebooks:
            nn.init.uniform_(cb.codebook.weight, -bound, bound)

    def _chunks(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return features.split(self.code_dim, dim=-1)

    def features_to_ids(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L, vocab_width) -> (B, num_codebooks, L) int64."""
        chunks = self._chunks(features)
        return torch.stack([cb.nearest(c) for cb, c in zip(self.codebooks, chunks)], dim=1)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, num_codebooks, L) -> (B, L, vocab_width) normalised codes."""
        if ids.dim() != 3 or ids.shape[1] != self.num_codebooks:
            raise ValueError(f"ids must be (B, {self.num_codebooks}, L), got {tuple(ids.shape)}")
        return torch.cat([cb.lookup(ids[:, i]) for i, cb in enumerate(self.codebooks)], dim=-1)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Inverse of ids_to_codes (each normalised code is its own nearest entry)."""
        return self.features_to_ids(codes)

    def forward(self, features: torch.Tensor, *, beta: float = 0.25,
                entropy_temp: float = 0.01) -> QuantizerOutput:
        """Training path: straight-through codes plus the commitment and entropy terms."""
        codes, ids, commit, entropy, usage = [], [], [], [], []
        for cb, chunk in zip(self.codebooks, self._chunks(features.float())):
            b, l, d = chunk.shape
            f = F.normalize(chunk.reshape(-1, d), dim=-1)
            table = cb.normalized()
            sim = f @ table.T
            idx = sim.detach().argmax(dim=1)
            q = table[idx]
            commit.append(F.mse_loss(q.detach(), f) * beta + F.mse_loss(q, f.detach()))
            entropy.append(_entropy_loss(f, table, 1.0 / entropy_temp))
            freq = torch.bincount(idx, minlength=table.shape[0]).float()
            freq = freq / freq.sum()
            usage.append((freq > 0.01 / table.shape[0]).float().mean() * 100)
            if self.training:
                with torch.no_grad():
                    cb.vocab_usage.mul_(0.99).add_(freq, alpha=0.01)
            codes.append((f + (q - f).detach()).view(b, l, d))
            ids.append(idx.view(b, l))
        n = len(self.codebooks)
        return QuantizerOutput(
            codes=torch.cat(codes, dim=-1),
            ids=torch.stack(ids, dim=1),
            commit_loss=sum(commit) / n,
            entropy_loss=sum(entropy) / n,
            usage_pct=sum(usage) / n,
        )


def _entropy_loss(f: torch.Tensor, table: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """Low per-sample entropy (confident choices), high batch entropy (all entries used)."""
    dist = f.square().sum(1, keepdim=True) + table.square().sum(1) - 2 * f @ table.T
    logits = -dist * inv_temp
    prob, logp = logits.softmax(-1), logits.log_softmax(-1)
    per_sample = (-(prob * logp).sum(-1)).mean()
    avg = prob.mean(0)
    return per_sample - (-(avg * torch.log(avg + 1e-7)).sum())
