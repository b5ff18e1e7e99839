"""Encode throughput of WinTok on this machine: presets x precision x batch size.

    .venv/bin/python bench/model.py [--presets tiny,base-p16-256] [--batches 1,32] [--seconds 10]

Prints images/s per cell and the bf16/fp32 ratio measured side by side in the same process.
Random-initialised weights (speed does not depend on the values).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from wintok import WinTok, preset


def side_by_side(model: WinTok, batch: int, seconds: float) -> dict[str, float]:
    """Median images/s per precision, the two precisions alternating call by call so that
    machine noise hits both alike."""
    x = torch.rand(batch, 3, model.image_size, model.image_size) * 2 - 1
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for p in times:  # warm-up
        model.encode(x, precision=p)
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times["bf16"]) < 3:
        for p, ts in times.items():
            t0 = time.perf_counter()
            model.encode(x, precision=p)
            ts.append(time.perf_counter() - t0)
    return {p: batch / statistics.median(ts) for p, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,base-p16-256")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seconds", type=float, default=8.0, help="time per cell (at least 3 calls per precision)")
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"{'preset':<16}{'params':>9}{'batch':>7}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16/fp32':>11}")
    for name in a.presets.split(","):
        model = WinTok(preset(name)).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for b in (int(v) for v in a.batches.split(",")):
            r = side_by_side(model, b, a.seconds)
            fp32, bf16 = r["fp32"], r["bf16"]
            print(f"{name:<16}{params:>8.1f}M{b:>7}{fp32:>12.2f}{bf16:>12.2f}{bf16 / fp32:>10.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
