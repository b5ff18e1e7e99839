"""WinTok architecture config: one dataclass, presets, and inference from official checkpoints."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class WinTokConfig:
    """Every number that fixes a WinTok's shape. Weights alone do not say all of it (heads)."""

    img_size: int = 256  # trained input resolution; the only size encode() accepts
    patch_size: int = 16  # encoder patch; grid = img_size // patch_size (16 -> 16x16 = 256 tokens)
    # encoder: a SigLIP vision tower without its pooling head
    hidden_size: int = 1152  # encoder width
    num_layers: int = 27  # encoder depth
    num_heads: int = 16  # encoder attention heads (cannot be read off the weights)
    intermediate_size: int = 4304  # encoder MLP width
    layer_norm_eps: float = 1e-6  # encoder and decoder LayerNorm eps (SigLIP)
    num_latent_tokens: int = 32  # N learnable query tokens appended after the patches
    semantic_dim: int | None = None  # semantic token width (projection output); None: hidden_size.
    # Set it to the teacher's width when distilling from a teacher of another width.
    # quantizer: num_codebooks codebooks of vocab_size // num_codebooks entries,
    # each matching a contiguous vocab_width // num_codebooks dims chunk by cosine
    vocab_size: int = 16384  # total entries over all codebooks
    vocab_width: int = 32  # quantized width (quant_proj output)
    num_codebooks: int = 4  # codebooks = ids per position
    # pixel decoder: a SigLIP2-shaped transformer without patch embedding
    decoder_hidden_size: int = 1152  # decoder_rec_hidden_size in the official args
    decoder_depth: int = 27  # decoder_rec_depth
    decoder_num_heads: int = 16  # decoder_rec_num_heads
    decoder_intermediate_size: int = 4304  # decoder_rec_intermediate_size

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ValueError(f"invalid WinTokConfig: {what} (config: {self.to_dict()})")

        for f in fields(self):
            v = getattr(self, f.name)
            need(v is None and f.name == "semantic_dim" or v is not None and v > 0,
                 f"{f.name} must be positive, got {v!r}")
        need(self.img_size % self.patch_size == 0, "img_size must be a multiple of patch_size")
        need(self.hidden_size % self.num_heads == 0, "hidden_size must divide by num_heads")
        need(self.decoder_hidden_size % self.decoder_num_heads == 0,
             "decoder_hidden_size must divide by decoder_num_heads")
        need(self.vocab_size % self.num_codebooks == 0, "vocab_size must divide by num_codebooks")
        need(self.vocab_width % self.num_codebooks == 0, "vocab_width must divide by num_codebooks")
        need(self.hidden_size % self.vocab_width == 0 or self.vocab_width % self.hidden_size == 0,
             "hidden_size and vocab_width must divide one another (attention projection)")
        need(self.hidden_size % self.num_codebooks == 0,
             "hidden_size must divide by num_codebooks (projection heads)")
        need(self.decoder_hidden_size % 2 == 0, "decoder_hidden_size must be even (2D sin-cos)")
        need(self.hidden_size % 2 == 0, "hidden_size must be even (1D sin-cos)")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2

    @property
    def semantic_width(self) -> int:
        """Width of the semantic tokens and the pooled vector."""
        return self.semantic_dim or self.hidden_size

    @property
    def codebook_size(self) -> int:
        """Entries per codebook (4096 for the official model)."""
        return self.vocab_size // self.num_codebooks

    @property
    def code_dim(self) -> int:
        """Dims per codebook chunk (8 for the official model)."""
        return self.vocab_width // self.num_codebooks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WinTokConfig":
        return cls(**only_known_fields(cls, d, "WinTokConfig fields"))


def only_known_fields(cls: type, d: dict[str, Any], what: str) -> dict[str, Any]:
    """`d` unchanged if every key is a field of dataclass `cls`; else ValueError naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return dict(d)


PRESETS: dict[str, WinTokConfig] = {
    # The released model: SigLIP2 so400m/16 at 256 px, 27+27 layers, N=32 queries.
    "so400m-p16-256": WinTokConfig(),
    # Same shape with the official training script's 256 query tokens.
    "so400m-p16-256-q256": WinTokConfig(num_latent_tokens=256),
    # A base-sized model (SigLIP B/16 widths) for benchmarks.
    "base-p16-256": WinTokConfig(hidden_size=768, num_layers=12, num_heads=12,
                                 intermediate_size=3072, decoder_hidden_size=768,
                                 decoder_depth=12, decoder_num_heads=12,
                                 decoder_intermediate_size=3072),
    # Tiny random-initialised shape for tests: full 256 px / 16x16 grid / 4x4096 codebooks,
    # narrow and shallow networks. 192 // 4 heads = 48 exercises the projection's pooling.
    "tiny": WinTokConfig(hidden_size=192, num_layers=2, num_heads=3, intermediate_size=384,
                         num_latent_tokens=8, decoder_hidden_size=192, decoder_depth=2,
                         decoder_num_heads=3, decoder_intermediate_size=384),
    # A small model trainable on 2 CPU cores (64 px, patch 8 -> 8x8 grid), distilled from
    # EfficientNet-Lite0 (1280-d): the shipped demo checkpoint (see README, `wintok train`).
    "small-64": WinTokConfig(img_size=64, patch_size=8, hidden_size=192, num_layers=4,
                             num_heads=3, intermediate_size=768, num_latent_tokens=16,
                             semantic_dim=1280, decoder_hidden_size=192, decoder_depth=4,
                             decoder_num_heads=3, decoder_intermediate_size=768),
}


def preset(name: str, **overrides: Any) -> WinTokConfig:
    """A named preset, optionally with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown WinTok preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# SigLIP towers by (width, depth, MLP width) -> heads: the one number the weights do not hold.
KNOWN_SIGLIP_HEADS: dict[tuple[int, int, int], int] = {
    (1152, 27, 4304): 16,  # so400m
    (768, 12, 3072): 12,  # base
    (1024, 24, 4096): 16,  # large
    (1536, 40, 6144): 16,  # giant (SigLIP2 g)
}
