"""WeTok checkpoints: the official Lightning `.ckpt` dict, and our own directory format.

Official format (facts from src/WeTok/models/lfqgan.py, modules/ema.py, reconstruct_image.py):
- `obj["state_dict"]` holds the whole LightningModule: `encoder.*`, `decoder.*` (the
  generator), `loss.*` (discriminator, LPIPS perceptual net: training only) and, when the model
  was trained with `use_ema: True` (every released config), `model_ema.*`.
- `model_ema` is a `LitEma`: one buffer per trainable parameter at construction time, named by
  the parameter name with the dots removed (`encoder.conv_in.weight` ->
  `model_ema.encoderconv_inweight`), plus `model_ema.decay` and `model_ema.num_updates`. It
  covers the discriminator's parameters too (`model_ema.lossdiscriminator...`).
- The official inference (`reconstruct_image.py`) loads the dict with `strict=False` and, as
  `use_ema` is set, runs inside `ema_scope()`, i.e. with the EMA weights. So do we
  (`use_ema=True`); buffers are not EMA-tracked (the generator has none).
- The quantizer has no persistent state (its masks and codebook are non-persistent buffers), so
  `n_embed`/`num_codebooks` are not in the state dict: without a config we assume the released
  8 bits per group, i.e. `num_groups = z_channels / 8`.

Our format (a directory, written by `save_pretrained`, read by `load_pretrained`):
- `model.safetensors`: the generator's state dict (our key names = official key names).
- `config.json`, written last: {"family": "wetok", "format_version": 1, "config": {...},
  "identity": "wetok-..."}.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wintok.errors import CheckpointError
from wintok.wetok.config import WeTokConfig, config_from_official_yaml
from wintok.wetok.model import WeTok

log = logging.getLogger(__name__)

from wintok.checkpoint import CONFIG_NAME as CONFIG_FILE  # noqa: E402  (one format, one name)
from wintok.checkpoint import WEIGHTS_NAME as WEIGHTS_FILE  # noqa: E402

# Official state-dict keys that are not part of the tokenizer and are legitimately dropped.
IGNORED_PREFIXES = (
    "loss.",  # VQLPIPSWithDiscriminator: loss.discriminator.* (PatchGAN), loss.perceptual_loss.* (LPIPS/VGG)
)
EMA_PREFIX = "model_ema."
EMA_META = ("model_ema.decay", "model_ema.num_updates")  # LitEma bookkeeping buffers
EMA_IGNORED_PREFIXES = ("model_ema.loss",)  # EMA copies of the discriminator's parameters


@dataclass
class LoadReport:
    """What `load_wetok_official` did: where the weights came from and which keys it dropped."""

    source: str
    weights: str  # "ema" or "raw"
    config_from: str  # "state_dict", "yaml:<path>" or "WeTokConfig"
    ignored: list[str] = field(default_factory=list)  # keys dropped on purpose (loss, EMA extras)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        groups = sorted({"model_ema.loss*" if k.startswith(EMA_IGNORED_PREFIXES)
                         else ".".join(k.split(".")[:2]) for k in self.ignored})
        return (f"{self.source}: {self.weights} weights, config from {self.config_from}; "
                f"ignored {len(self.ignored)} keys ({', '.join(groups) or 'none'})"
                + "".join(f"; {n}" for n in self.notes))


# ---------------------------------------------------------------------- detection
def _state_dict_of(obj: object) -> dict | None:
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    return sd if isinstance(sd, dict) else None


def looks_like_wetok(obj: dict) -> bool:
    """True if `obj` is an official WeTok Lightning checkpoint dict (for `load_any` dispatch):
    a `state_dict` with the conv encoder's and the adaptive-norm decoder's keys."""
    sd = _state_dict_of(obj)
    if not sd:
        return False
    keys = [k for k in sd if isinstance(k, str)]
    return ("encoder.conv_in.weight" in sd
            and any(k.startswith("encoder.down.") for k in keys)
            and any(k.startswith("decoder.adaptive.") for k in keys)
            and "decoder.conv_out.weight" in sd)


# ---------------------------------------------------------------------- architecture
_LEVEL = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")


def infer_config(sd: dict, *, image_size: int = 256, bits_per_group: int = 8) -> WeTokConfig:
    """Read the architecture from an official (or our) generator state dict."""
    try:
        conv_in = sd["encoder.conv_in.weight"]
        ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
        z_channels = int(sd["encoder.conv_out.weight"].shape[0])
        out_channels = int(sd["decoder.conv_out.weight"].shape[0])
        dec_in = int(sd["decoder.conv_in.weight"].shape[1])
    except (KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(f"cannot infer the WeTok architecture: missing or odd key {e}") from e
    width: dict[int, int] = {}
    blocks: dict[int, int] = {}
    for k, v in sd.items():
        m = _LEVEL.match(k) if isinstance(k, str) else None
        if m:
            lvl, blk = int(m.group(1)), int(m.group(2))
            blocks[lvl] = max(blocks.get(lvl, 0), blk + 1)
            if blk == 0:
                width[lvl] = int(v.shape[0])
    if not width or sorted(width) != list(range(len(width))):
        raise CheckpointError(f"cannot infer ch_mult: encoder levels found {sorted(width)}")
    if len(set(blocks.values())) != 1:
        raise CheckpointError(f"encoder levels have different block counts {blocks}")
    if any(w % ch for w in width.values()):
        raise CheckpointError(f"level widths {width} are not multiples of ch={ch}")
    if dec_in not in (z_channels, 2 * z_channels):
        raise CheckpointError(f"decoder.conv_in takes {dec_in} channels; expected {z_channels} "
                              f"(plain decoder) or {2 * z_channels} (generative decoder)")
    if z_channels % bits_per_group:
        raise CheckpointError(f"z_channels={z_channels} is not a multiple of {bits_per_group} bits "
                              f"per group; pass config= with the right quantizer")
    try:
        return WeTokConfig(
            image_size=image_size, in_channels=in_channels, out_channels=out_channels, ch=ch,
            ch_mult=tuple(width[i] // ch for i in range(len(width))),
            num_res_blocks=next(iter(blocks.values())), z_channels=z_channels,
            num_groups=z_channels // bits_per_group, bits_per_group=bits_per_group,
            gan_decoder=dec_in == 2 * z_channels)
    except ValueError as e:
        raise CheckpointError(f"inferred WeTok architecture is invalid: {e}") from e


def _resolve_config(config: str | os.PathLike | WeTokConfig | None, sd: dict,
                    image_size: int | None) -> tuple[WeTokConfig, str]:
    if config is None:
        return infer_config(sd, image_size=image_size or 256), "state_dict"
    if isinstance(config, WeTokConfig):
        cfg, origin = config, "WeTokConfig"
    elif isinstance(config, (str, os.PathLike)):
        try:
            cfg = config_from_official_yaml(config, image_size=image_size)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        origin = f"yaml:{config}"
    else:
        raise ValueError(f"config must be None, a YAML path or a WeTokConfig, got {type(config).__name__}")
    if image_size is not None and cfg.image_size != image_size:
        cfg = cfg.replace(image_size=image_size)
    found = infer_config(sd, image_size=cfg.image_size, bits_per_group=cfg.bits_per_group)
    diff = {k: (v, found.to_dict()[k]) for k, v in cfg.to_dict().items() if found.to_dict()[k] != v}
    if diff:
        raise CheckpointError(
            "config does not match the checkpoint (field: config vs state dict): "
            + ", ".join(f"{k}: {a} vs {b}" for k, (a, b) in sorted(diff.items())))
    return cfg, origin


# ---------------------------------------------------------------------- official loader
def _fmt_keys(keys: list[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_tensors(expected: dict[str, torch.Tensor], given: dict[str, object], what: str) -> None:
    """Exact key set and shapes, else CheckpointError naming the keys."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {what} keys: {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {what} keys: {_fmt_keys(unexpected)}")
    for k, ref in expected.items():
        v = given.get(k)
        if v is None:
            continue
        if not isinstance(v, torch.Tensor):
            problems.append(f"{what} key {k} is a {type(v).__name__}, not a tensor")
        elif tuple(v.shape) != tuple(ref.shape):
            problems.append(f"{what} key {k} has shape {tuple(v.shape)}, the model expects "
                            f"{tuple(ref.shape)}")
        elif not v.is_floating_point():
            problems.append(f"{what} key {k} has dtype {v.dtype}, expected a float tensor")
    if problems:
        raise CheckpointError("; ".join(problems))


def load_wetok_official(obj: dict, *, source: str, config: str | os.PathLike | WeTokConfig | None = None,
                        use_ema: bool = True, image_size: int | None = None) -> WeTok:
    """Build a WeTok from an already-loaded official Lightning checkpoint dict.

    `config`: None (architecture read from the state dict), a path to an official Inference
    YAML, or a WeTokConfig; either is checked against the state dict. `use_ema`: take the EMA
    weights as the official inference does (falls back to the raw weights, with a warning, if
    the checkpoint has no EMA). `image_size`: the input size to accept (default: the YAML's,
    else 256). Every key is accounted for: the generator's keys must match exactly, `loss.*`
    and the EMA's discriminator copies are dropped and listed in `model.load_report.ignored`;
    anything else is refused with the key named.
    """
    sd = _state_dict_of(obj)
    if sd is None:
        raise CheckpointError(f"{source}: not a Lightning checkpoint (no 'state_dict' dict)")
    cfg, origin = _resolve_config(config, sd, image_size)
    model = WeTok(cfg)
    expected = model.state_dict()

    raw: dict[str, object] = {}
    ema: dict[str, object] = {}
    ignored: list[str] = []
    other: list[str] = []
    for k, v in sd.items():
        if not isinstance(k, str):
            other.append(repr(k))
        elif k.startswith(EMA_PREFIX):
            if k in EMA_META or k.startswith(EMA_IGNORED_PREFIXES):
                ignored.append(k)
            else:
                ema[k] = v
        elif k.startswith(IGNORED_PREFIXES):
            ignored.append(k)
        elif k.startswith(("encoder.", "decoder.")):
            raw[k] = v
        else:
            other.append(k)
    if other:
        raise CheckpointError(f"{source}: unexpected keys (neither generator, EMA nor training-only "
                              f"loss keys): {_fmt_keys(other)}")
    try:
        _check_tensors(expected, raw, "generator")
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None

    report = LoadReport(source=source, weights="raw", config_from=origin)
    weights = raw
    if use_ema and ema:
        # LitEma names: parameter name without dots. Map ours -> theirs, refusing collisions.
        ema_name = {k: EMA_PREFIX + k.replace(".", "") for k, _ in model.named_parameters()}
        if len(set(ema_name.values())) != len(ema_name):
            raise CheckpointError(f"{source}: EMA names (parameter names without dots) are "
                                  f"ambiguous for this architecture; load with use_ema=False")
        buffers = {k for k, _ in model.named_buffers()}
        expected_ema = {ema_name[k]: expected[k] for k in ema_name}
        try:
            _check_tensors(expected_ema, ema, "EMA")
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        weights = {k: ema[ema_name[k]] if k in ema_name else raw[k] for k in expected}
        report.weights = "ema"
        if buffers:
            report.notes.append(f"{len(buffers)} buffers taken from the raw weights (EMA tracks parameters only)")
    else:
        ignored.extend(ema)
        if use_ema:
            report.notes.append("no EMA weights in the checkpoint: using the raw weights")
            log.warning("%s: use_ema=True but the checkpoint has no model_ema.* weights; "
                        "loading the raw (non-EMA) weights", source)
    report.ignored = sorted(ignored)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=True)
    model.load_report = report
    log.info("%s", report.summary())
    return model.eval()


# ---------------------------------------------------------------------- our format
def save_pretrained(model: WeTok, directory: str | os.PathLike, **kwargs) -> Path:
    """Our format, shared with WinTok (`wintok.checkpoint.save_pretrained`): weights, then
    config.json, each through a temp file + rename. Returns the directory."""
    from wintok.checkpoint import save_pretrained as save_any

    return save_any(model, directory, **kwargs)


def read_config_json(directory: str | os.PathLike) -> WeTokConfig:
    """Parse and validate `config.json` of our format (shared reader), for the WeTok family."""
    from wintok.checkpoint import read_config_json as read_meta

    path = Path(directory) / CONFIG_FILE
    meta = read_meta(Path(directory))
    if meta.get("family") != "wetok":
        raise CheckpointError(f"{path}: family is {meta.get('family')!r}, expected 'wetok'")
    try:
        return WeTokConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config: {e}") from e


def load_pretrained(directory: str | os.PathLike) -> WeTok:
    """Load a directory written by `save_pretrained`; CheckpointError names any problem
    (missing/truncated file, missing or unexpected keys, shape mismatch)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    cfg = read_config_json(d)
    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{wpath} is missing")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{wpath} is truncated or corrupt: {e}") from e
    model = WeTok(cfg)
    expected = model.state_dict()
    try:
        _check_tensors(expected, tensors, "weight")
    except CheckpointError as e:
        raise CheckpointError(f"{wpath}: {e}") from None
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    return model.eval()
