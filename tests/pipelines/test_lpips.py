"""LPIPS from weight files on disk (random weights in the real file layouts)."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import data

from pipelines.lpips import LPIPS, load_lpips
from wintok import CheckpointError

CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
         14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
         26: (512, 512), 28: (512, 512)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """torchvision-layout VGG16 + lpips-layout linear weights, and the combined official file."""
    d = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    vgg = {}
    for i, (a, b) in CONVS.items():
        vgg[f"features.{i}.weight"] = torch.randn(b, a, 3, 3, generator=g) * (2 / (9 * a)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.zeros(b)
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
           for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, d / "vgg16.pth")
    torch.save(lin, d / "vgg.pth")
    starts = (0, 4, 9, 16, 23)
    combined = {}
    for i in CONVS:
        s = max(j for j, st in enumerate(starts) if st <= i)
        for p in ("weight", "bias"):
            combined[f"net.slice{s + 1}.{i - starts[s]}.{p}"] = vgg[f"features.{i}.{p}"]
    combined.update({f"lins.{k}.model.1.weight": v for k, v in
                     ((int(k[3]), v) for k, v in lin.items())})
    torch.save(combined, d / "lpips_with_vgg.pth")
    return d


def images(n, seed):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_metric_properties(files):
    m = load_lpips(files / "vgg16.pth", files / "vgg.pth")
    x, y = images(3, 1), images(3, 2)
    assert torch.equal(m(x, x), torch.zeros(3))
    d = m(x, y)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(m(y, x), d)
    torch.testing.assert_close(torch.cat([m(x[i:i + 1], y[i:i + 1]) for i in range(3)]), d,
                               rtol=1e-5, atol=1e-6)
    assert (m(x, x + 0.01 * (y - x)) < d).all()  # closer images, smaller distance


def test_matches_the_lpips_package(files):
    """`data/lpips_golden.json` was made by the lpips package 0.1.4 (`lpips.LPIPS(net="vgg")`,
    its modules loaded with a stand-in for torchvision's `vgg16()` that builds the same VGG16
    feature stack, since torchvision does not import beside the CPU torch here), its VGG and
    linear layers loaded from this fixture's `vgg16.pth` and `vgg.pth`."""
    golden = json.loads((Path(__file__).parent / "data" / "lpips_golden.json").read_text())
    m = load_lpips(files / "lpips_with_vgg.pth")
    x, y = images(3, 1), images(3, 2)
    torch.testing.assert_close(m(x, y), torch.tensor(golden["noise"]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m(x, x + 0.1 * (y - x)), torch.tensor(golden["near"]), rtol=1e-6, atol=1e-7)


def test_both_file_layouts_give_the_same_metric(files):
    a = load_lpips(files / "vgg16.pth", files / "vgg.pth")
    b = load_lpips(files / "lpips_with_vgg.pth")
    x, y = images(2, 3), images(2, 4)
    assert torch.equal(a(x, y), b(x, y))


def test_bad_files_are_named(files, tmp_path):
    with pytest.raises(CheckpointError, match="holds only VGG16"):
        load_lpips(files / "vgg16.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match="no 'features.0.bias'"):
        load_lpips(tmp_path / "v.pth", files / "vgg.pth")
    with pytest.raises(ValueError, match="one shape"):
        LPIPS()(images(1, 0), images(2, 0))


def test_wintok_eval_reports_lpips(files, tmp_path):
    from flows.cli import cli

    torch.manual_seed(0)
    from wintok import WinTok, preset, save_pretrained

    ckpt = save_pretrained(WinTok(preset("tiny")), tmp_path / "tok")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(data.astronaut()).save(tmp_path / "imgs" / "a.png")
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "imgs"), "-c", str(ckpt), "--lpips-weights",
                                 str(files / "lpips_with_vgg.pth")])
    assert r.exit_code == 0, r.output
    assert "LPIPS" in r.output and "images 1" in r.output
