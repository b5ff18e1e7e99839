"""Quality of the shipped small checkpoint on held-out photos, with reference points.

    .venv/bin/python bench/quality.py [--checkpoint wintok/assets/small-64] [--images 64]
        [--fid-weights weights-inception-2015-12-05-6726825d.pth] [--lpips-weights lpips_with_vgg.pth]

Held-out photos: crops of scikit-image's `coffee` and `rocket`, which the shipped checkpoint
never saw (scripts/make_demo_checkpoint.py). Reports, side by side on the same images:
- PSNR / SSIM of the checkpoint's reconstructions (encode -> ids -> decode), and codebook usage;
- JPEG at (at most) the same bytes per image as the stored pixel ids (bit-packed);
- cosine between the pooled semantic vector and the teacher's (EfficientNet-Lite0) embedding
  of the same photo, for the trained checkpoint and for a random-initialised one;
- rFID and LPIPS of both methods when their networks' weights are given (nothing is downloaded;
  rFID over a few dozen photos is only comparable with itself, not with published numbers).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def held_out_photos(n: int, size: int) -> list[np.ndarray]:
    """n center-cropped held-out photos at 256 px (as ingest stores them)."""
    import tempfile

    from pipelines.democorpus import build_demo_corpus
    from wintok.preprocess import Preprocess, open_image, resize

    d = Path(tempfile.mkdtemp())
    build_demo_corpus(d, base_url="http://unused.invalid", n_images=n, seed=123, sources=("coffee", "rocket"))
    return [np.asarray(resize(open_image(p), Preprocess(size=size)))
            for p in sorted((d / "photos").iterdir())]


def jpeg_at_budget(img: np.ndarray, budget: int) -> tuple[np.ndarray, int]:
    """The best-quality JPEG of `img` that fits in `budget` bytes (quality 1 if none fits)."""
    best = None
    for q in range(95, 0, -1):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q, optimize=True)
        if buf.tell() <= budget or q == 1:
            best = (np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), buf.tell())
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[1] / "wintok/assets/small-64"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--fid-weights", default=None, help="FID InceptionV3 weights (pipelines/fid.py)")
    ap.add_argument("--lpips-weights", default=None, help="lpips_with_vgg.pth (pipelines/lpips.py)")
    a = ap.parse_args()

    from pipelines.evaluate import image_metrics
    from wintok import WinTok, load_tokenizer
    from wintok.packing import packed_size
    from wintok.preprocess import to_tensor, to_uint8
    from wintok.teachers import build_teacher

    tok = load_tokenizer(a.checkpoint).eval()
    torch.manual_seed(0)
    rand = WinTok(tok.config).eval()
    teacher = build_teacher("efficientnet-lite0")
    photos256 = held_out_photos(a.images, 256)
    x256 = to_tensor(photos256)
    x = torch.nn.functional.interpolate(x256, size=(tok.image_size,) * 2, mode="bicubic",
                                        antialias=True, align_corners=False).clamp(-1, 1)
    orig = to_uint8(x)
    budget = packed_size(tok.layout.num_streams * tok.layout.positions, tok.layout.bits_per_id)
    with torch.no_grad():
        out = tok.encode(x)
        rec = to_uint8(tok.decode(out.ids))
        target = teacher.embed(x256).pooled
        cos_trained = torch.nn.functional.cosine_similarity(out.pooled, target).mean().item()
        cos_random = torch.nn.functional.cosine_similarity(rand.encode(x).pooled, target).mean().item()
    ours = np.array([image_metrics(o, r) for o, r in zip(orig, rec)])
    jpg = [jpeg_at_budget(o, budget) for o in orig]
    jpeg = np.array([image_metrics(o, j[0]) for o, j in zip(orig, jpg)])
    jpeg_bytes = np.mean([j[1] for j in jpg])
    ids = out.ids.numpy()
    usage = [100.0 * len(np.unique(ids[:, k])) / tok.layout.vocab_per_stream for k in range(ids.shape[1])]
    print(f"{len(orig)} held-out photos (coffee, rocket crops), {tok.image_size}px, checkpoint {tok.identity}")
    print(f"ids per image: {tok.layout.num_streams}x{tok.layout.positions} x {tok.layout.bits_per_id} bits "
          f"= {budget} bytes bit-packed\n")
    extra = {"ours": "", "jpeg": ""}
    head = ""
    jpeg_imgs = np.stack([j[0] for j in jpg])
    if a.lpips_weights:
        from pipelines.lpips import load_lpips

        lp = load_lpips(a.lpips_weights)
        for k, r in (("ours", rec), ("jpeg", jpeg_imgs)):
            extra[k] += f" {lp(to_tensor(list(orig)), to_tensor(list(r))).mean().item():>6.4f} |"
        head += f" {'LPIPS':>6} |"
    if a.fid_weights:
        from pipelines.fid import RFID, load_fid_inception

        net = load_fid_inception(a.fid_weights)
        for k, r in (("ours", rec), ("jpeg", jpeg_imgs)):
            acc = RFID(net)
            acc.add(orig, r)
            extra[k] += f" {acc.value():>7.3f} |"
        head += f" {'rFID':>7} |"
    print(f"| {'method':<36} | {'bytes/img':>9} | {'PSNR dB':>7} | {'SSIM':>5} |{head}")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 9}|{'-' * 7}|" + "".join("-" * len(c) + "|" for c in head.split("|")[:-1]))
    print(f"| {'WinTok small-64 (shipped)':<36} | {budget:>9} | {ours[:, 0].mean():>7.2f} | {ours[:, 1].mean():>5.3f} |{extra['ours']}")
    print(f"| {'JPEG at <= the same bytes':<36} | {jpeg_bytes:>9.0f} | {jpeg[:, 0].mean():>7.2f} | {jpeg[:, 1].mean():>5.3f} |{extra['jpeg']}")
    print(f"\ncodebook usage on these images (% of {tok.layout.vocab_per_stream} ids per codebook): "
          + ", ".join(f"{u:.1f}" for u in usage))
    print(f"cosine(pooled, teacher embedding): trained {cos_trained:.3f} vs random-init {cos_random:.3f}")


if __name__ == "__main__":
    main()
