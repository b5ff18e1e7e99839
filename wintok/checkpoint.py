"""Loading and saving tokenizer checkpoints, safely.

Formats:
- ours: a directory with `config.json` ({"family", "format_version", "config", "identity"}) and
  `model.safetensors` (no pickle, nothing runs on load);
- the official WinTok `.pth`: `{'args': ..., 'trainer': {'unitok': state_dict, ...}}`, unpickled
  with `weights_only=True`, shapes inferred from `args` and the state dict (never from the
  cluster path in `args['model']`); encoder heads from a local SigLIP config or known shapes;
- official WeTok Lightning checkpoints (handled in `wintok.wetok.checkpoint`).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from wintok.config import KNOWN_SIGLIP_HEADS, WinTokConfig
from wintok.errors import CheckpointError
from wintok.model import WinTok

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# transformers registered these buffers as persistent in some versions; they hold arange()
# and carry no information, so they are dropped on load wherever they appear.
_IGNORABLE = re.compile(r"(^|\.)position_ids$")


# --------------------------------------------------------------------------- our format
def save_pretrained(model: torch.nn.Module, directory: str | Path, *,
                    dtype: str = "float32") -> Path:
    """Write `config.json` + `model.safetensors` (each to a temporary name, then renamed).

    `dtype` float16/bfloat16 halves the file: the model's floating weights are first rounded
    to that precision IN PLACE (they load back as the same float32 values, so the recorded
    identity is the identity of the rounded model).
    """
    from safetensors.torch import save_file

    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dtype != "float32":
        low = getattr(torch, dtype)
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.to(low).to(t.dtype))
        if hasattr(model, "forget_identity"):
            model.forget_identity()
    state = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"family": model.family, "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(), "identity": model.identity}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"family": model.family, "identity": model.identity})
    os.replace(tmp, directory / WEIGHTS_NAME)
    tmp = directory / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / CONFIG_NAME)
    return directory


def read_config_json(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}: not a checkpoint directory "
                              f"written by save_pretrained") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(meta, dict) or "family" not in meta:
        raise CheckpointError(f"{path} has no 'family' field; not a checkpoint config")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this version of wintok "
                              f"reads format_version {FORMAT_VERSION}. Upgrade wintok.")
    return meta


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint directory is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); it is truncated or corrupt. "
                              f"Copy it again from its source.") from None


def load_pretrained_wintok(directory: str | Path) -> WinTok:
    """Load a WinTok saved by `save_pretrained`; checks the recorded identity."""
    directory = Path(directory)
    meta = read_config_json(directory)
    if meta["family"] != "wintok":
        raise CheckpointError(f"{directory} holds a {meta['family']!r} checkpoint, not WinTok")
    try:
        config = WinTokConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: bad config ({e})") from None
    model = build_and_load(config, read_safetensors(directory / WEIGHTS_NAME), str(directory))
    recorded = meta.get("identity")
    if recorded and recorded != model.identity:
        raise CheckpointError(f"{directory}: weights hash to {model.identity} but config.json "
                              f"records {recorded}; the files do not belong together or one "
                              f"is corrupt")
    return model


# --------------------------------------------------------------------- strict loading
def shape_mismatches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     labels: tuple[str, str] = ("", "")) -> list[str]:
    """'key: <labels[0]>(shape) vs <labels[1]>(shape)' for each key present in both whose
    shapes differ, in key order."""
    return [f"{k}: {labels[0]}{tuple(state[k].shape)} vs {labels[1]}{tuple(expected[k].shape)}"
            for k in sorted(set(state) & set(expected))
            if tuple(state[k].shape) != tuple(expected[k].shape)]


def build_and_load(config: WinTokConfig, state: dict[str, torch.Tensor], source: str) -> WinTok:
    """Build a WinTok for `config` and load `state` strictly, naming every disagreement."""
    state = {k: v for k, v in state.items() if not _IGNORABLE.search(k)}
    with torch.device("meta"):
        model = WinTok(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = shape_mismatches(state, expected, ("checkpoint ", "config "))
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shapes disagree with the config: "
                         + "; ".join(mismatched[:8]))
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:8])}")
        raise CheckpointError(f"{source} does not match WinTok config {config.to_dict()}: "
                              + " | ".join(parts))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.decoder_rec_pos_embed.requires_grad_(False)
    return model.eval()


# ------------------------------------------------------------------- official format
def torch_load_safely(path: Path) -> Any:
    """`torch.load(weights_only=True)`: plain types only, so loading cannot run code.

    Zip checkpoints (torch >= 1.6) are memory-mapped; legacy pickles (older releases such as
    torchvision's VGG16, LPIPS and the FID Inception weights) load through the same
    restricted unpickler.
    """
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    legacy = not zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except Exception as e:  # noqa: BLE001 - every way a file can fail becomes a named error
        text = str(e).strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        globals_ = [ln for ln in lines if "unsupported global" in ln.lower()]
        if globals_:
            raise CheckpointError(
                f"{path} refused: it needs arbitrary Python objects to unpickle, and loading it "
                f"could run code ({globals_[0]}). Only checkpoints made of tensors and plain "
                f"types load here; re-save its state dict and args as plain types from a "
                f"trusted environment (or re-download it: a truncated file can look like "
                f"this).") from None
        last = lines[-1] if lines else type(e).__name__
        if legacy:
            raise CheckpointError(f"{path} is neither a torch zip checkpoint nor a legacy torch "
                                  f"pickle ({type(e).__name__}: {last}); it is truncated or "
                                  f"corrupt: re-download or re-save it") from None
        raise CheckpointError(f"{path} cannot be read ({last}); it is truncated or corrupt") from None


def _count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    if not found:
        return 0
    if found != set(range(max(found) + 1)):
        raise CheckpointError(f"layers under {prefix} are not contiguous: {sorted(found)}")
    return max(found) + 1


def _encoder_heads(hidden: int, depth: int, mlp: int, encoder_config: Any) -> tuple[int, float]:
    """Heads (and LayerNorm eps) of the encoder: from the user's local SigLIP config if given,
    else from the shapes of the released SigLIP towers."""
    if encoder_config is not None:
        if isinstance(encoder_config, int):
            return encoder_config, 1e-6
        p = Path(encoder_config)
        p = p / "config.json" if p.is_dir() else p
        try:
            cfg = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read SigLIP config {p}: {e}") from None
        cfg = cfg.get("vision_config", cfg)
        if int(cfg.get("hidden_size", hidden)) != hidden:
            raise CheckpointError(f"SigLIP config {p} has hidden_size {cfg.get('hidden_size')} "
                                  f"but the checkpoint's encoder is {hidden} wide")
        return int(cfg["num_attention_heads"]), float(cfg.get("layer_norm_eps", 1e-6))
    heads = KNOWN_SIGLIP_HEADS.get((hidden, depth, mlp))
    if heads is None:
        raise CheckpointError(
            f"the encoder (width {hidden}, depth {depth}, MLP {mlp}) is not a released SigLIP "
            f"shape, and attention heads cannot be read off the weights: pass "
            f"encoder_config=<local SigLIP dir or config.json> (CLI: --encoder-config)")
    return heads, 1e-6


def config_from_official(args: dict[str, Any], state: dict[str, torch.Tensor],
                         encoder_config: Any = None) -> WinTokConfig:
    """WinTokConfig from official `args` + state dict; shapes read from the weights are
    cross-checked against `args` and any disagreement is an error."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"state dict has no {key!r}: not a WinTok checkpoint")
        return state[key]

    emb = "encoder.vision_model.embeddings."
    hidden, _, patch, _ = need(emb + "patch_embedding.weight").shape
    num_pos = need(emb + "position_embedding.weight").shape[0]
    grid = int(round(num_pos**0.5))
    if grid * grid != num_pos:
        raise CheckpointError(f"position_embedding has {num_pos} rows, not a square grid")
    enc = "encoder.vision_model.encoder.layers."
    dec = "decoder.vision_model.encoder.layers."
    depth = _count_layers(state, enc)
    mlp = need(enc + "0.mlp.fc1.weight").shape[0]
    heads, eps = _encoder_heads(hidden, depth, mlp, encoder_config)
    n_cb = len({k.split(".")[2] for k in state if k.startswith("quantizer.codebooks.")})
    cb_rows, cb_dim = need("quantizer.codebooks.0.codebook.weight").shape
    from_weights = dict(
        img_size=grid * patch, patch_size=patch, hidden_size=hidden, num_layers=depth,
        num_heads=heads, intermediate_size=mlp, layer_norm_eps=eps,
        num_latent_tokens=need("query_tokens").shape[0],
        semantic_dim=(None if need("projection.weight").shape[0] == hidden
                      else need("projection.weight").shape[0]),
        vocab_size=cb_rows * n_cb, vocab_width=cb_dim * n_cb, num_codebooks=n_cb,
        decoder_hidden_size=need("decoder_rec_pos_embed").shape[1],
        decoder_depth=_count_layers(state, dec),
        decoder_intermediate_size=need(dec + "0.mlp.fc1.weight").shape[0],
    )
    arg_names = dict(img_size="img_size", num_latent_tokens="num_latent_tokens",
                     vocab_size="vocab_size", vocab_width="vocab_width",
                     num_codebooks="num_codebooks", decoder_hidden_size="decoder_rec_hidden_size",
                     decoder_depth="decoder_rec_depth",
                     decoder_intermediate_size="decoder_rec_intermediate_size")
    bad = [f"args[{a!r}]={args[a]!r} but the weights say {from_weights[f]}"
           for f, a in arg_names.items() if a in args and args[a] != from_weights[f]]
    if bad:
        raise CheckpointError("checkpoint shapes disagree with its args: " + "; ".join(bad))
    if "decoder_rec_num_heads" not in args:
        raise CheckpointError("args has no 'decoder_rec_num_heads'; the decoder's heads cannot "
                              "be read off the weights")
    try:
        return WinTokConfig(decoder_num_heads=int(args["decoder_rec_num_heads"]), **from_weights)
    except ValueError as e:
        raise CheckpointError(f"inferred config is invalid: {e}") from None


def load_official_wintok(obj: dict[str, Any], *, source: str,
                         encoder_config: Any = None) -> WinTok:
    """An official WinTok checkpoint dict (`{'args', 'trainer': {'unitok': sd}}`) -> WinTok."""
    try:
        args, state = obj["args"], obj["trainer"]["unitok"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{source}: expected {{'args', 'trainer': {{'unitok': ...}}}} "
                              f"(the official WinTok layout); found keys "
                              f"{sorted(obj) if isinstance(obj, dict) else type(obj)}") from None
    if not isinstance(args, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{source}: 'args' and 'trainer.unitok' must be dicts")
    config = config_from_official(dict(args), state, encoder_config)
    return build_and_load(config, state, source)


# ------------------------------------------------------------------------ dispatch
def load_any(path: str | Path, **kwargs: Any):
    """Any supported checkpoint -> a Tokenizer, the family recognised from the contents."""
    path = Path(path)
    if path.is_dir() or path.name == CONFIG_NAME or path.suffix == ".safetensors":
        directory = path if path.is_dir() else path.parent
        meta = read_config_json(directory)
        if meta["family"] == "wintok":
            return load_pretrained_wintok(directory)
        if meta["family"] == "wetok":
            from wintok.wetok.checkpoint import load_pretrained as load_wetok

            return load_wetok(directory)
        raise CheckpointError(f"{directory}: unknown tokenizer family {meta['family']!r}; "
                              f"supported: wintok, wetok")
    obj = torch_load_safely(path)
    if isinstance(obj, dict) and "trainer" in obj and "args" in obj:
        return load_official_wintok(obj, source=str(path),
                                    encoder_config=kwargs.get("encoder_config"))
    if isinstance(obj, dict) and "state_dict" in obj:
        from wintok.wetok.checkpoint import load_wetok_official, looks_like_wetok

        if looks_like_wetok(obj):
            return load_wetok_official(obj, source=str(path), config=kwargs.get("wetok_config"),
                                       image_size=kwargs.get("image_size"))
    raise CheckpointError(
        f"{path}: not a recognised tokenizer checkpoint (expected a save_pretrained directory, "
        f"an official WinTok .pth with 'args' and 'trainer', or an official WeTok Lightning "
        f"checkpoint); top-level keys: {sorted(obj)[:10] if isinstance(obj, dict) else type(obj)}")
