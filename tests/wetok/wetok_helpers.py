"""Shared helpers for the WeTok tests: the golden fixture and official-format checkpoint dicts.

An official WeTok Lightning checkpoint (src/WeTok/models/lfqgan.py) stores the whole
LightningModule: generator keys `encoder.*` / `decoder.*`, training-only `loss.*` keys, and a
`LitEma` under `model_ema.*` (one buffer per trainable parameter, named by the parameter name
with the dots removed, plus `decay` and `num_updates`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

GOLDEN = Path(__file__).parent / "data" / "wetok_tiny_golden.safetensors"

# Training-only keys of a (small) official checkpoint: a PatchGAN discriminator with a
# BatchNorm (params + buffers) and the frozen LPIPS net. Used when no golden is involved.
DEFAULT_LOSS_SHAPES = {
    "loss.discriminator.main.0.weight": [8, 3, 4, 4],
    "loss.discriminator.main.0.bias": [8],
    "loss.discriminator.main.2.weight": [16, 8, 4, 4],
    "loss.discriminator.main.3.weight": [16],
    "loss.discriminator.main.3.bias": [16],
    "loss.discriminator.main.3.running_mean": [16],
    "loss.discriminator.main.3.running_var": [16],
    "loss.discriminator.main.3.num_batches_tracked": [],
    "loss.perceptual_loss.scaling_layer.shift": [1, 3, 1, 1],
    "loss.perceptual_loss.lin0.model.1.weight": [1, 4, 1, 1],
}
DEFAULT_LOSS_EMA = [  # the discriminator's trainable parameters (LPIPS is frozen: no EMA)
    "loss.discriminator.main.0.weight", "loss.discriminator.main.0.bias",
    "loss.discriminator.main.2.weight", "loss.discriminator.main.3.weight",
    "loss.discriminator.main.3.bias",
]


def load_golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(GOLDEN), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def golden_weights(tensors: dict[str, torch.Tensor], meta: dict[str, str],
                   gan: bool) -> dict[str, torch.Tensor]:
    """The fixture's generator weights (int8 * 2**-e, exact in float32)."""
    exps = json.loads(meta["exponents"])
    out = {}
    for name, e in exps.items():
        w = tensors[f"w.{name}"].to(torch.float32) * 2.0 ** -e
        if name.startswith("gan."):
            if gan:
                out[name[len("gan."):]] = w
        elif not (gan and name == "decoder.conv_in.weight"):
            out[name] = w
    return out


def official_checkpoint(ema_weights: dict[str, torch.Tensor], *, raw_weights=None, ema: bool = True,
                        loss_shapes: dict | None = None, loss_ema: list | None = None) -> dict:
    """An official-format checkpoint dict: generator keys hold `raw_weights` (default: zeros,
    so that using them instead of the EMA is visible), `model_ema.*` holds `ema_weights`."""
    loss_shapes = DEFAULT_LOSS_SHAPES if loss_shapes is None else loss_shapes
    loss_ema = DEFAULT_LOSS_EMA if loss_ema is None else loss_ema
    sd: dict[str, torch.Tensor] = {}
    for k, w in ema_weights.items():
        sd[k] = raw_weights[k].clone() if raw_weights is not None else torch.zeros_like(w)
    for k, shape in loss_shapes.items():
        dtype = torch.int64 if k.endswith("num_batches_tracked") else torch.float32
        sd[k] = torch.zeros(shape, dtype=dtype)
    if ema:
        sd["model_ema.decay"] = torch.tensor(0.999)
        sd["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int32)
        for k, w in ema_weights.items():
            sd["model_ema." + k.replace(".", "")] = w.clone()
        for k in loss_ema:
            sd["model_ema." + k.replace(".", "")] = torch.zeros(loss_shapes[k])
    return {"state_dict": sd, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.4.0"}


def golden_checkpoint(gan: bool) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """The official-format dict the golden was computed from, rebuilt from the fixture."""
    tensors, meta = load_golden()
    loss_shapes = json.loads(meta["loss_key_shapes"])
    official_keys = json.loads(meta["official_keys_gan" if gan else "official_keys_plain"])
    stripped = {k.replace(".", ""): k for k in loss_shapes}
    loss_ema = [stripped[k[len("model_ema."):]] for k in official_keys
                if k.startswith("model_ema.loss")]
    ckpt = official_checkpoint(golden_weights(tensors, meta, gan), loss_shapes=loss_shapes,
                               loss_ema=loss_ema)
    return ckpt, tensors, meta


def official_ids_to_ours(flat: torch.Tensor, batch: int, groups: int) -> torch.Tensor:
    """Official LFQ indices are flattened in (B, H, W, G) order; ours are (B, G, H*W)."""
    return flat.view(batch, -1, groups).transpose(1, 2).contiguous()
