"""rFID: the FID InceptionV3 against torch-fidelity, the Frechet distance, `wintok eval --fid-weights`.

Golden features (`data/fid_inception_golden.npz`) were made by torch-fidelity 0.4.0's
`FeatureExtractorInceptionV3` (the extractor the official WinTok evaluation uses; its module
files loaded directly, since its package imports torchvision, which does not import beside the
CPU torch here), feature layer "2048", with the weights of `fid_support.deterministic_weights`
(saved to a file and loaded by its own strict `load_state_dict`) on `fid_support.golden_images()`.
The real weights cannot be fetched offline; these deterministic ones exercise every layer, the
TF1-compatible resize and the normalisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import data

from fid_support import deterministic_weights, golden_images
from pipelines.evaluate import evaluate_folder
from pipelines.fid import (RFID, FeatureStats, InceptionFID, frechet_distance, load_fid_inception,
                           tf1_resize_matrix)
from wintok.errors import CheckpointError

GOLDEN = Path(__file__).parent / "data" / "fid_inception_golden.npz"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Deterministic weights in the legacy (pre-zip) pickle format the released files use."""
    shapes = {k: tuple(v.shape) for k, v in InceptionFID().state_dict().items()}
    state = {k: v for k, v in deterministic_weights(shapes).items()
             if not k.endswith("num_batches_tracked")}  # the released files have none
    path = tmp_path_factory.mktemp("fid") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def net(weights) -> InceptionFID:
    return load_fid_inception(weights)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def test_features_match_torch_fidelity(net):
    golden = np.load(GOLDEN)
    for name, images in golden_images().items():
        ours = net(_nchw(images)).numpy()
        assert ours.shape == (len(images), 2048) and ours.dtype == np.float32
        # float32 round-off of a different (separable matmul) resize; a half-pixel bilinear
        # resize instead of TensorFlow's differs by 0.03 to 0.13 here
        np.testing.assert_allclose(ours, golden[name], rtol=0, atol=5e-5, err_msg=name)
    ours = net(_nchw(golden_images()["exact299"])).numpy()
    np.testing.assert_array_equal(ours, golden["exact299"])  # no resampling at 299: bit-exact


def test_tf1_resize_weights():
    # 2 -> 4 samples at 0, 0.5, 1, 1.5 (no half-pixel shift; the last clamps to the edge)
    np.testing.assert_array_equal(tf1_resize_matrix(2, 4).numpy(),
                                  [[1, 0], [.5, .5], [0, 1], [0, 1]])
    assert torch.equal(tf1_resize_matrix(299, 299), torch.eye(299, dtype=torch.float64))
    m = tf1_resize_matrix(256, 299)
    torch.testing.assert_close(m.sum(1), torch.ones(299, dtype=torch.float64))


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    a, b = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    x, y = rng.standard_normal((50, 40)), rng.standard_normal((60, 40)) * 1.5 + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    m1, m2 = x.mean(0), y.mean(0)
    sqrtm = scipy.linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formulation
    want = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-8)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-9


def test_feature_stats_stream_equals_numpy():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((37, 16)).astype(np.float32) * 3 + 5
    st = FeatureStats(16)
    for chunk in (f[:1], f[1:20], torch.from_numpy(f[20:])):  # uneven batches, numpy and torch
        st.add(chunk)
    assert st.n == 37
    np.testing.assert_allclose(st.mean, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(16).cov
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        st.add(np.zeros((2, 8)))


def test_rfid_is_zero_for_identical_sets_and_grows_with_damage(net):
    images = np.concatenate(list(golden_images().values())[:1] * 2 + [
        np.stack([data.astronaut()[:256, :256], data.camera()[:256, :256, None].repeat(3, -1)])])
    same = RFID(net)
    same.add(images, images)
    assert same.real.n == same.fake.n == len(images) == 6
    # round-off only: ~2000 zero eigenvalues of a rank-3 covariance each add sqrt(eps)
    assert abs(same.value()) < 1e-5 * np.trace(same.real.cov)
    damaged = [np.clip(images.astype(int) + np.random.default_rng(2).integers(-s, s + 1, images.shape),
                       0, 255).astype(np.uint8) for s in (8, 64)]
    values = []
    for d in damaged:
        r = RFID(net, batch_size=4)  # batching must not matter
        r.add(images, d)
        values.append(r.value())
    assert 1e-3 * np.trace(same.real.cov) < values[0] < values[1]
    with pytest.raises(ValueError, match="uint8"):
        net(torch.zeros(1, 3, 8, 8))


def test_weight_files_are_checked(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": state}, nested)
    load_fid_inception(nested)  # {"state_dict": ...} wrappers are accepted
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["AuxLogits.fc.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"not the FID Inception.*Mixed_7c.branch_pool.conv.weight.*AuxLogits"):
        load_fid_inception(bad)
    state = torch.load(weights, weights_only=True)
    state["fc.weight"] = torch.zeros(1000, 2048)  # an ImageNet-1k classifier: another network
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"wrong shapes.*fc.weight: \(1000, 2048\) vs \(1008, 2048\)"):
        load_fid_inception(bad)


def test_eval_reports_rfid(weights, net, tmp_path):
    from flows.cli import cli
    from wintok import WinTok, preset, save_pretrained

    torch.manual_seed(0)
    ckpt = save_pretrained(WinTok(preset("tiny")), tmp_path / "tok")
    folder = tmp_path / "val"
    folder.mkdir()
    for name, img in (("a", data.astronaut()), ("b", data.chelsea()), ("c", data.coffee())):
        Image.fromarray(img).save(folder / f"{name}.png")
    s = evaluate_folder(folder, ckpt, progress=False, fid=net)
    # by hand: the same originals and reconstructions through RFID
    from wintok import load_tokenizer
    from wintok.preprocess import Preprocess, load_for_tokenizer, to_uint8

    tok = load_tokenizer(ckpt).eval()
    x = torch.cat([load_for_tokenizer(folder / f"{n}.png", Preprocess(size=tok.image_size))[0]
                   for n in "abc"])
    by_hand = RFID(net)
    by_hand.add(to_uint8(x), to_uint8(tok.decode(tok.encode(x).ids)))
    assert s.rfid == pytest.approx(by_hand.value(), rel=1e-6) and s.rfid > 0
    r = CliRunner().invoke(cli, ["eval", str(folder), "-c", str(ckpt), "--fid-weights", str(weights)])
    assert r.exit_code == 0, r.output
    assert f"rFID {s.rfid:.3f}" in r.output and "biased upwards" in r.output
    assert "not measured (needs weights on disk): LPIPS: --lpips-weights" in r.output
