"""WinTok: a SigLIP encoder that emits discrete pixel tokens and continuous semantic tokens.

Read top to bottom: the image is scaled, patch-embedded, N query tokens are appended and the
whole sequence goes through the encoder. Patch outputs -> quant_proj -> 4 cosine codebooks
(pixel ids). Query outputs -> fc_norm -> projection (semantic tokens; pooled = their mean).
Decoding: ids -> normalised codes -> post_quant_proj -> transformer -> pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wintok.config import WinTokConfig
from wintok.quantizer import AttnProjection, MultiCodebookQuantizer, QuantizerOutput
from wintok.siglip import VisionTower
from wintok.tokenizer import (TokenizerOutput, TokenLayout, autocast_for, check_precision,
                              state_dict_hash)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) [sin | cos] with frequencies 1/10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """(grid*grid, dim), positions row-major: first half encodes the column, second the row
    (the MAE layout the official model uses)."""
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


class ScalingLayer(nn.Module):
    """[-1,1] -> clamp to [0,255]/255 -> (x - 0.5) / 0.5, as the official model (SigLIP norm)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("scale", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1.0) * 127.5).clamp(0, 255.0) / 255.0
        return (x - self.shift) / self.scale


class PixelShuffleHead(nn.Module):
    """`decode_task_layer_2`: 1x1 conv to patch*patch*3 channels, then unfold to pixels."""

    def __init__(self, hidden: int, patch: int):
        super().__init__()
        self.patch = patch
        # index "0" so the key reads decode_task_layer_2.0.* as in the official Sequential
        self.add_module("0", nn.Conv2d(hidden, patch * patch * 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, "0")(x)  # (B, p*p*3, h, w), channels ordered (p1, p2, c)
        b, _, h, w = x.shape
        p = self.patch
        x = x.view(b, p, p, 3, h, w).permute(0, 3, 4, 1, 5, 2)  # b c h p1 w p2
        return x.reshape(b, 3, h * p, w * p)


@dataclass
class TrainOutput:
    """Everything a training step needs from one forward pass."""

    recon: torch.Tensor  # (B,3,S,S)
    pooled: torch.Tensor  # (B,D) distilled towards the teacher
    quant: QuantizerOutput


class WinTok(nn.Module):
    """The WinTok tokenizer; implements `wintok.tokenizer.Tokenizer`."""

    family = "wintok"

    def __init__(self, config: WinTokConfig):
        super().__init__()
        c = config
        self.config = c
        self.image_size = c.img_size
        self.scaling_layer = ScalingLayer()
        self.encoder = VisionTower(hidden=c.hidden_size, depth=c.num_layers, heads=c.num_heads,
                                   intermediate=c.intermediate_size, eps=c.layer_norm_eps,
                                   patch=c.patch_size, num_positions=c.num_positions)
        self.query_tokens = nn.Parameter(torch.randn(c.num_latent_tokens, c.hidden_size))
        self.query_tokens_pos_embed = nn.Parameter(
            torch.from_numpy(sincos_1d(c.hidden_size, np.arange(c.num_latent_tokens))).float())
        # pixel-token path (float32)
        self.quant_proj = AttnProjection(c.hidden_size, c.vocab_width, c.num_codebooks)
        self.quantizer = MultiCodebookQuantizer(c.vocab_size, c.vocab_width, c.num_codebooks)
        self.post_quant_proj = AttnProjection(c.vocab_width, c.hidden_size, c.num_codebooks)
        # semantic path
        self.fc_norm = nn.LayerNorm(c.hidden_size, eps=1e-6)
        self.projection = nn.Linear(c.hidden_size, c.semantic_width)
        # pixel decoder
        self.decode_task_layer_1 = nn.Sequential(
            nn.Linear(c.hidden_size, c.decoder_hidden_size), nn.Tanh(),
            nn.Linear(c.decoder_hidden_size, c.decoder_hidden_size))
        self.decoder_rec_pos_embed = nn.Parameter(
            torch.from_numpy(sincos_2d(c.decoder_hidden_size, c.grid_size)).float(),
            requires_grad=False)
        self.decoder = VisionTower(hidden=c.decoder_hidden_size, depth=c.decoder_depth,
                                   heads=c.decoder_num_heads,
                                   intermediate=c.decoder_intermediate_size, eps=c.layer_norm_eps)
        self.decode_task_layer_2 = PixelShuffleHead(c.decoder_hidden_size, c.patch_size)
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        self._init_weights()
        self._identity: str | None = None

    def _init_weights(self) -> None:
        """Fresh-model init as in the official training code (loaded weights replace it)."""
        for m in [self.decode_task_layer_1, self.decode_task_layer_2, self.conv_out]:
            for mod in m.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.trunc_normal_(mod.weight, std=0.02)
                    nn.init.zeros_(mod.bias)
                elif isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(mod.bias)
        self.quantizer.init_uniform()

    # ----------------------------------------------------------------- Tokenizer interface
    @property
    def layout(self) -> TokenLayout:
        c = self.config
        return TokenLayout(family=self.family, num_streams=c.num_codebooks,
                           grid=(c.grid_size, c.grid_size), vocab_per_stream=c.codebook_size)

    @property
    def semantic_shape(self) -> tuple[int, int]:
        return (self.config.num_latent_tokens, self.config.semantic_width)

    @property
    def identity(self) -> str:
        """'wintok-' + 12 hex of sha256 over the config and every tensor (name, dtype, shape,
        bytes), computed once; call `forget_identity()` after changing weights in place."""
        if self._identity is None:
            self._identity = f"{self.family}-{state_dict_hash(self.state_dict(), self.config.to_json())[:12]}"
        return self._identity

    def forget_identity(self) -> None:
        self._identity = None

    def check_images(self, images: torch.Tensor) -> None:
        s = self.image_size
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError("images must be a float tensor (B,3,H,W) in [-1,1]")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (s, s):
            raise ValueError(
                f"images must be (B,3,{s},{s}) (this checkpoint's trained resolution; no "
                f"position-embedding interpolation), got {tuple(images.shape)}; resize first "
                f"(wintok.preprocess)")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, precision: str = "fp32",
               semantic: bool = True) -> TokenizerOutput:
        """Images (B,3,S,S) in [-1,1] -> pixel ids (B, codebooks, grid*grid) int64, semantic
        tokens (B, N, D) and pooled (B, D) in float32. The quantizer path is always float32."""
        self.check_images(images)
        check_precision(precision)
        patches, queries = self._encode_trunk(images, precision)
        ids = self.quantizer.features_to_ids(self._float32(self.quant_proj, patches))
        if not semantic:
            return TokenizerOutput(ids=ids)
        with autocast_for(images.device, precision):
            sem = self.projection(self.fc_norm(queries))
        sem = sem.float()
        return TokenizerOutput(ids=ids, semantic=sem, pooled=sem.mean(dim=1))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, *, precision: str = "fp32") -> torch.Tensor:
        """Pixel ids (B, codebooks, grid*grid) -> images (B,3,S,S), roughly in [-1,1]."""
        check_precision(precision)
        c = self.config
        if ids.dim() != 3 or tuple(ids.shape[1:]) != (c.num_codebooks, c.num_positions):
            raise ValueError(f"ids must be (B, {c.num_codebooks}, {c.num_positions}), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.codebook_size):
            raise ValueError(f"ids must lie in [0, {c.codebook_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        codes = self.quantizer.ids_to_codes(ids.long())
        return self.decode_codes(codes, precision=precision)

    # ---------------------------------------------------------------------- internals
    def _encode_trunk(self, images: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder over [patches | queries]; returns post-layernormed (patches, queries)."""
        vm = self.encoder.vision_model
        with autocast_for(images.device, precision):
            x = vm.embeddings(self.scaling_layer(images))
            b, n_patch, _ = x.shape
            q = (self.query_tokens + self.query_tokens_pos_embed).unsqueeze(0).expand(b, -1, -1)
            h = vm.post_layernorm(vm.encoder(torch.cat([x, q.to(x.dtype)], dim=1)))
        return h[:, :n_patch], h[:, n_patch:]

    @staticmethod
    def _float32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with autocast_for(x.device, "fp32"):
            return module(x.float())

    def decode_codes(self, codes: torch.Tensor, *, precision: str = "fp32") -> torch.Tensor:
        """(B, L, vocab_width) normalised codes -> images (differentiable; used in training)."""
        c = self.config
        h = self._float32(self.post_quant_proj, codes)
        with autocast_for(h.device, precision):
            x = self.decode_task_layer_1(h) + self.decoder_rec_pos_embed.unsqueeze(0)
            vm = self.decoder.vision_model
            x = vm.post_layernorm(vm.encoder(x))
            b = x.shape[0]
            x = x.transpose(1, 2).reshape(b, -1, c.grid_size, c.grid_size)
            x = self.conv_out(self.decode_task_layer_2(x))
        return x.float()

    def forward_train(self, images: torch.Tensor, *, precision: str = "fp32",
                      beta: float = 0.25, entropy_temp: float = 0.01) -> TrainOutput:
        """Differentiable encode -> quantize (straight-through) -> decode, for training."""
        self.check_images(images)
        patches, queries = self._encode_trunk(images, precision)
        quant = self.quantizer(self._float32(self.quant_proj, patches), beta=beta,
                               entropy_temp=entropy_temp)
        with autocast_for(images.device, precision):
            pooled = self.projection(self.fc_norm(queries)).float().mean(dim=1)
        return TrainOutput(recon=self.decode_codes(quant.codes, precision=precision),
                           pooled=pooled, quant=quant)

    def forward(self, images: torch.Tensor, **kwargs) -> TrainOutput:
        """The training forward (`forward_train`), so DDP and hooks wrap the usual call."""
        return self.forward_train(images, **kwargs)
