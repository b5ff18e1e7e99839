"""WeTok: a MAGVIT2-style convolutional tokenizer with group-wise lookup-free quantization.

Read top to bottom: image (B,3,S,S) in [-1,1] -> Encoder (conv_in, per level residual blocks
+ a stride-2 conv, middle blocks, GroupNorm-swish-1x1 conv) -> latent (B, z, S/f, S/f) ->
sign bits in groups of 8 -> ids (B, G, positions). Decoding: ids -> +-1 codes -> Decoder
(conv_in, middle blocks, per level an adaptive GroupNorm conditioned on the codes' per-channel
mean/std, residual blocks and a conv + depth-to-space x2 upsample) -> image. The generative
decoder (released compratio768) concatenates a standard-normal noise map to the codes.

Module and parameter names equal the official ones (src/WeTok/modules/diffusionmodules/
improved_model.py) so that an official state dict loads without renaming.

Input range: the official data pipeline (src/WeTok/data/base.py, imagenet.py) feeds RGB
`uint8 / 127.5 - 1` (i.e. [-1, 1]) after a shortest-side resize + center crop, with no further
normalisation; decoder output is clamped to [-1, 1] only when converting to an image.
"""
from __future__ import annotations

import torch
from torch import nn

# Shared with WinTok (one copy of each helper): bf16/fp32 autocast regions and the identity hash.
from wintok.tokenizer import (TokenizerOutput, TokenLayout, autocast_for, check_precision,
                              state_dict_hash)
from wintok.wetok import quantizer as gq
from wintok.wetok.config import GROUPNORM_GROUPS, WeTokConfig

EPS = 1e-6  # GroupNorm / adaptive-norm epsilon in the official model


def swish(x: torch.Tensor) -> torch.Tensor:
    # Written as x * sigmoid(x), not F.silu, to round exactly like the official code.
    return x * torch.sigmoid(x)


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPNORM_GROUPS, channels, eps=EPS, affine=affine)


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C*block^2, H, W) -> (B, C, H*block, W*block), channel index = (i*block + j)*C + c
    for output offset (i, j): the DCR order of the official Upsampler (not torch's
    pixel_shuffle, which uses c*block^2 + i*block + j)."""
    b, c, h, w = x.shape
    c_out = c // (block * block)
    x = x.view(b, block, block, c_out, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c_out, h * block, w * block)


class ResBlock(nn.Module):
    """GroupNorm-swish-conv3x3 twice, bias-free convs, 1x1 shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


class Upsample(nn.Module):
    """conv3x3 to 4x channels, then depth-to-space by 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """Parameter-free GroupNorm, then scale = gamma(std of each code channel over space) and
    bias = beta(mean of each code channel). The std uses the unbiased variance (torch's
    default `var`, as the official code does) plus eps."""

    def __init__(self, z_channels: int, channels: int):
        super().__init__()
        self.gn = group_norm(channels, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = style.flatten(2)
        scale = self.gamma((s.var(dim=-1) + EPS).sqrt())[:, :, None, None]
        bias = self.beta(s.mean(dim=-1))[:, :, None, None]
        return scale * self.gn(x) + bias


class Level(nn.Module):
    """One resolution level: residual blocks, then an optional resampling layer."""

    def __init__(self, blocks: list[ResBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class Encoder(nn.Module):
    def __init__(self, c: WeTokConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        c_in = c.ch
        for i, mult in enumerate(c.ch_mult):
            c_out = c.ch * mult
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(c_in, c_out))
                c_in = c_out
            level = Level(blocks)
            if i < len(c.ch_mult) - 1:
                level.downsample = nn.Conv2d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = nn.ModuleList(ResBlock(c_in, c_in) for _ in range(c.num_res_blocks))
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, c.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nn.Module):
    """Official `Decoder`, or `GANDecoder` when `gan_decoder` (conv_in takes [codes, noise])."""

    def __init__(self, c: WeTokConfig):
        super().__init__()
        self.gan_decoder = c.gan_decoder
        c_in = c.ch * c.ch_mult[-1]
        z_in = c.z_channels * (2 if c.gan_decoder else 1)
        self.conv_in = nn.Conv2d(z_in, c_in, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(c_in, c_in) for _ in range(c.num_res_blocks))
        levels: list[Level] = []
        adaptive: list[AdaptiveGroupNorm] = []
        for i in reversed(range(len(c.ch_mult))):  # built deepest first, stored by level index
            adaptive.insert(0, AdaptiveGroupNorm(c.z_channels, c_in))
            c_out = c.ch * c.ch_mult[i]
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(c_in, c_out))
                c_in = c_out
            level = Level(blocks)
            if i > 0:
                level.upsample = Upsample(c_in)
            levels.insert(0, level)
        self.adaptive = nn.ModuleList(adaptive)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, c.out_channels, 3, padding=1)

    def forward(self, codes: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        style = codes
        if self.gan_decoder:
            if noise is None or noise.shape != codes.shape:
                raise ValueError("the generative decoder needs a noise map shaped like the codes")
            codes = torch.cat([codes, noise.to(codes.dtype)], dim=1)
        elif noise is not None:
            raise ValueError("this decoder takes no noise")
        z = self.conv_in(codes)
        for block in self.mid_block:
            z = block(z)
        for i in reversed(range(len(self.up))):
            z = self.adaptive[i](z, style)
            for block in self.up[i].block:
                z = block(z)
            if hasattr(self.up[i], "upsample"):
                z = self.up[i].upsample(z)
        return self.conv_out(swish(self.norm_out(z)))


class WeTok(nn.Module):
    """The WeTok family behind the `wintok.tokenizer.Tokenizer` interface."""

    family = "wetok"

    def __init__(self, config: WeTokConfig):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self._identity: str | None = None
        self.eval()

    # ---------------------------------------------------------------- interface
    @property
    def layout(self) -> TokenLayout:
        c = self.config
        return TokenLayout(family=self.family, num_streams=c.num_groups, grid=c.grid,
                           vocab_per_stream=c.vocab_per_group)

    @property
    def semantic_shape(self) -> None:
        return None

    @property
    def identity(self) -> str:
        """'wetok-' + 12 hex of sha256 over the config JSON and every state-dict tensor (sorted
        names, dtype, shape, bytes); computed once. `load_state_dict` resets it; call
        `forget_identity()` after changing weights in place."""
        if self._identity is None:
            digest = state_dict_hash(self.state_dict(), self.config.to_json())
            self._identity = f"{self.family}-{digest[:12]}"
        return self._identity

    def forget_identity(self) -> None:
        self._identity = None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._identity = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, precision: str = "fp32") -> TokenizerOutput:
        """Float images (B,3,S,S) in [-1,1] -> ids (B, G, positions) int64. The encoder runs
        under `precision`; the sign quantizer always reads a float32 latent."""
        self.check_images(images)
        check_precision(precision)
        with autocast_for(images.device, precision):
            latent = self.encoder(images)
        return TokenizerOutput(ids=gq.latent_to_ids(latent.float(), self.config.num_groups))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, *, precision: str = "fp32",
               seed: int | None = None) -> torch.Tensor:
        """ids (B, G, positions) -> float32 images (B,3,S,S), about [-1,1] (not clamped).

        The generative decoder draws its noise from `torch.Generator().manual_seed(seed)` on
        the CPU, so a seed gives the same noise on every device, and the same noise as the
        official reconstruction (`torch.manual_seed(seed)` then `decode(quant)`) run on CPU;
        `seed=None` draws from torch's global RNG on the codes' device. The plain decoder is
        deterministic and ignores `seed`.
        """
        check_precision(precision)
        return self.decode_codes(self.ids_to_codes(ids), precision=precision, seed=seed)

    # ---------------------------------------------------------------- codes
    def check_ids(self, ids: torch.Tensor) -> None:
        c = self.config
        want = (c.num_groups, c.grid[0] * c.grid[1])
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() \
                or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor (B, {want[0]}, {want[1]})")
        if ids.dim() != 3 or tuple(ids.shape[1:]) != want:
            raise ValueError(f"ids must be (B, {want[0]}, {want[1]}) (groups, positions), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_per_group):
            raise ValueError(f"ids must lie in [0, {c.vocab_per_group}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, G, positions) -> float32 codes (B, z_channels, h, w) in {-1, +1}."""
        self.check_ids(ids)
        return gq.ids_to_codes(ids, self.config.bits_per_group, self.config.grid)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, z_channels, h, w) -> ids (B, G, positions); inverse of `ids_to_codes`."""
        c = self.config
        if codes.dim() != 4 or tuple(codes.shape[1:]) != (c.z_channels, *c.grid):
            raise ValueError(f"codes must be (B, {c.z_channels}, {c.grid[0]}, {c.grid[1]}), "
                             f"got {tuple(codes.shape)}")
        return gq.codes_to_ids(codes, c.num_groups)

    def decode_codes(self, codes: torch.Tensor, *, precision: str = "fp32",
                     seed: int | None = None) -> torch.Tensor:
        """Codes (B, z, h, w) -> float32 images; see `decode` for the noise."""
        noise = self.make_noise(codes, seed) if self.config.gan_decoder else None
        with autocast_for(codes.device, precision):
            out = self.decoder(codes.float(), noise)
        return out.float()

    @staticmethod
    def make_noise(codes: torch.Tensor, seed: int | None) -> torch.Tensor:
        """Standard-normal noise shaped like `codes`, drawn into (B, h, w, C) memory like the
        official `randn_like(quant)` (its quantizer output is a channels-last view, and torch's
        CPU sampler fills such a tensor in a different order than a contiguous one)."""
        b, c, h, w = codes.shape
        if seed is None:
            buf = torch.empty((b, h, w, c), device=codes.device, dtype=torch.float32)
            return buf.permute(0, 3, 1, 2).normal_().contiguous()
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        buf = torch.empty((b, h, w, c), dtype=torch.float32).permute(0, 3, 1, 2)
        return buf.normal_(generator=gen).contiguous().to(codes.device)

    def check_images(self, images: torch.Tensor) -> None:
        s, c = self.image_size, self.config.in_channels
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B,{c},{s},{s}) in [-1,1], got "
                             f"{type(images).__name__} {getattr(images, 'dtype', '')}")
        if images.dim() != 4 or images.shape[1] != c or tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"images must be (B,{c},{s},{s}) (this tokenizer's image_size), got "
                             f"{tuple(images.shape)}; resize/crop first")

    def extra_repr(self) -> str:
        c = self.config
        return (f"f{c.downsample}, {c.num_groups} groups x {c.bits_per_group} bits, "
                f"grid {c.grid}, gan_decoder={c.gan_decoder}")

