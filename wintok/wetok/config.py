"""WeTok architecture config, presets named after the released Inference configs, and a reader
for the official YAML files.

Facts from the official repo (zhuangshaobin/WeTok, `configs/WeToK/Inference/*.yaml`): every
released config is `src.WeTok.models.lfqgan.VQModel` with `ch=256`, `num_res_blocks=4`,
`n_embed=256` (8 bits per group), `embed_dim == z_channels`; they differ in `ch_mult` (the
downsample factor is 2**(len(ch_mult)-1)), `z_channels`/`num_codebooks` and `gan_decoder`
(only compratio768 uses the generative, noise-fed decoder). The `_imagenet` / `_mscoco`
variants of a config differ only in their validation data set, not in the model.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

GROUPNORM_GROUPS = 32  # every GroupNorm in the official encoder/decoder uses 32 groups


@dataclass(frozen=True)
class WeTokConfig:
    """Everything that fixes a WeTok model's shapes (and the input size we accept)."""

    image_size: int = 256  # input resolution this tokenizer accepts (the conv net itself is size-agnostic)
    in_channels: int = 3  # image channels into the encoder (RGB)
    out_channels: int = 3  # image channels out of the decoder (official `out_ch`)
    ch: int = 256  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width multipliers; len-1 stride-2 downsamples
    num_res_blocks: int = 4  # residual blocks per level, and in the middle block
    z_channels: int = 32  # latent channels = num_groups * bits_per_group (official embed_dim)
    num_groups: int = 4  # lookup-free quantizer groups = ids per position (official num_codebooks)
    bits_per_group: int = 8  # latent channels (sign bits) per group = log2(official n_embed)
    gan_decoder: bool = False  # generative decoder: a Gaussian noise map is concatenated to the latent

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks",
                     "z_channels", "num_groups", "bits_per_group"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"WeTokConfig.{name} must be a positive int, got {v!r}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"WeTokConfig.ch_mult must be non-empty positive ints, got {self.ch_mult!r}")
        if self.z_channels != self.num_groups * self.bits_per_group:
            raise ValueError(
                f"WeTokConfig.z_channels ({self.z_channels}) must equal num_groups * bits_per_group "
                f"({self.num_groups} * {self.bits_per_group}); the quantizer has no projection")
        if self.bits_per_group > 16:
            raise ValueError(f"WeTokConfig.bits_per_group must be <= 16, got {self.bits_per_group}")
        for m in self.ch_mult:
            if (self.ch * m) % GROUPNORM_GROUPS:
                raise ValueError(f"WeTokConfig: every level width ch*ch_mult (got {self.ch}*{m}) must "
                                 f"be a multiple of {GROUPNORM_GROUPS} (GroupNorm groups)")
        if self.image_size % self.downsample:
            raise ValueError(f"WeTokConfig.image_size ({self.image_size}) must be a multiple of the "
                             f"downsample factor {self.downsample}")

    # ------------------------------------------------------------------ derived
    @property
    def downsample(self) -> int:
        """Spatial reduction factor (8, 16 or 32 for the released configs)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.downsample, self.image_size // self.downsample)

    @property
    def vocab_per_group(self) -> int:
        return 2 ** self.bits_per_group

    @property
    def compression_ratio(self) -> float:
        """Input bits (8 per RGB value) over token bits, as in the config names (192, 768...)."""
        h, w = self.grid
        return (self.image_size ** 2 * self.in_channels * 8) / (h * w * self.z_channels)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys); part of the tokenizer identity."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "WeTokConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WeTokConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "WeTokConfig":
        return WeTokConfig.from_dict({**self.to_dict(), **changes})


def _released(ch_mult: tuple[int, ...], z_channels: int, gan_decoder: bool = False) -> WeTokConfig:
    return WeTokConfig(ch=256, ch_mult=ch_mult, num_res_blocks=4, z_channels=z_channels,
                       num_groups=z_channels // 8, bits_per_group=8, gan_decoder=gan_decoder)


F8, F16, F32 = (1, 2, 2, 4), (1, 1, 2, 2, 4), (1, 1, 2, 2, 4, 8)

# Named after configs/WeToK/Inference/<name>_{imagenet,mscoco}.yaml (same model either way).
PRESETS: dict[str, WeTokConfig] = {
    "GeneralDomain_compratio24": _released(F8, 64),  # f8, 8 groups -> 32x32x8 ids at 256px
    "GeneralDomain_compratio48": _released(F8, 32),  # f8, 4 groups
    "GeneralDomain_compratio192": _released(F16, 32),  # f16, 4 groups -> 16x16x4 ids at 256px
    "GeneralDomain_compratio768": _released(F32, 32, gan_decoder=True),  # f32, generative decoder
    "ImageNet_downsample8": _released(F8, 32),  # f8, 4 groups, ImageNet-only training
    "ImageNet_downsample16": _released(F16, 32),  # f16, 4 groups, ImageNet-only training
    # Test-sized: f2, 4 groups of 8 bits, 16x16 input -> 8x8 grid. Not a released model.
    "tiny": WeTokConfig(image_size=16, ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=32,
                        num_groups=4, bits_per_group=8),
    "tiny_gan": WeTokConfig(image_size=16, ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=32,
                            num_groups=4, bits_per_group=8, gan_decoder=True),
}


def preset(name: str, **overrides) -> WeTokConfig:
    """A preset by name; the official YAML stem (with `_imagenet`/`_mscoco`) is accepted too."""
    key = name
    for suffix in ("_imagenet", "_mscoco"):
        if key.endswith(suffix) and key[: -len(suffix)] in PRESETS:
            key = key[: -len(suffix)]
    if key not in PRESETS:
        raise ValueError(f"unknown WeTok preset {name!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[key]
    return cfg.replace(**overrides) if overrides else cfg


def config_from_official_yaml(path: str | Path, *, image_size: int | None = None) -> WeTokConfig:
    """Read an official `configs/WeToK/Inference/*.yaml` (LightningCLI format) into a config.

    `ddconfig.resolution` (128 in every release) is unused by the official model and ignored;
    the input size comes from `image_size`, else the YAML's test-set `size`, else 256.
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read WeTok config YAML {path}: {e}") from e
    try:
        args = doc["model"]["init_args"]
        dd = args["ddconfig"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a WeTok model config (no model.init_args.ddconfig)") from e
    if args.get("token_factorization"):
        raise ValueError(f"{path}: token_factorization=True is not a released Inference setup "
                         f"and is not supported")
    if dd.get("double_z"):
        raise ValueError(f"{path}: double_z=True is not supported (the official encoder ignores it)")
    n_embed = int(args.get("n_embed", 256))
    bits = int(math.log2(n_embed))
    if 2 ** bits != n_embed:
        raise ValueError(f"{path}: n_embed must be a power of two, got {n_embed}")
    num_groups = int(args.get("num_codebooks", 1))
    embed_dim = int(args.get("embed_dim", dd["z_channels"]))
    if embed_dim != int(dd["z_channels"]):
        raise ValueError(f"{path}: embed_dim ({embed_dim}) != ddconfig.z_channels ({dd['z_channels']})")
    if image_size is None:
        try:
            image_size = int(doc["data"]["init_args"]["test"]["params"]["config"]["size"])
        except (KeyError, TypeError, ValueError):
            image_size = 256
    return WeTokConfig(
        image_size=image_size,
        in_channels=int(dd.get("in_channels", 3)),
        out_channels=int(dd.get("out_ch", 3)),
        ch=int(dd["ch"]),
        ch_mult=tuple(int(m) for m in dd["ch_mult"]),
        num_res_blocks=int(dd["num_res_blocks"]),
        z_channels=int(dd["z_channels"]),
        num_groups=num_groups,
        bits_per_group=bits,
        gan_decoder=bool(args.get("gan_decoder", False)),
    )
