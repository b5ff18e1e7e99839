"""Token files and the single-image CLI: round trips, lineage checks, hostile files."""
import base64
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import data

from flows.cli import cli
from wintok import TokenFileError, WinTok, load_checkpoint, preset, save_pretrained
from wintok.packing import pack_ids, packed_size, unpack_ids
from wintok.preprocess import Preprocess, load_for_tokenizer
from wintok.tokenfile import read_token_file


@pytest.mark.parametrize("bits", [1, 8, 9, 12, 16])
@pytest.mark.parametrize("count", [0, 1, 5, 1024])
def test_packing_roundtrip_exact(bits, count):
    ids = np.random.default_rng(bits * 7 + count).integers(0, 1 << bits, count)
    blob = pack_ids(ids, bits)
    assert len(blob) == packed_size(count, bits) == -(-count * bits // 8) + (1 if bits == 12 and count % 2 else 0)
    assert np.array_equal(unpack_ids(blob, bits, count), ids)


def test_packing_golden_bytes():
    # 12-bit, least significant bit first: 0xABC, 0x123 -> word 0x123ABC -> bytes BC 3A 12
    assert pack_ids(np.array([0xABC, 0x123]), 12) == bytes([0xBC, 0x3A, 0x12])
    assert pack_ids(np.array([1, 0, 1]), 1) == bytes([0b101])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4096\)"):
        pack_ids(np.array([4096]), 12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    a = WinTok(preset("tiny"))
    torch.manual_seed(1)
    b = WinTok(preset("tiny"))
    img = d / "coffee.jpg"
    Image.fromarray(data.coffee()).save(img, quality=95)
    return d, save_pretrained(a, d / "a"), save_pretrained(b, d / "b"), img


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_encode_decode_roundtrip_matches_model(setup):
    d, ckpt, _, img = setup
    r = run("encode", img, "-c", ckpt, "-o", d / "t.json", "--semantic", "--resize", "squash")
    assert r.exit_code == 0, r.output
    tf = read_token_file(d / "t.json")
    model = load_checkpoint(ckpt)
    x, orig = load_for_tokenizer(img, Preprocess(resize="squash"))
    out = model.encode(x)
    assert np.array_equal(tf.ids, out.ids[0].numpy())
    assert tf.original_size == orig == (600, 400)
    assert tf.preprocess == Preprocess(resize="squash") and tf.identity == model.identity
    np.testing.assert_allclose(tf.semantic.astype(np.float32), out.semantic[0].numpy(), rtol=1e-3, atol=1e-3)
    # ids are stored at 12 bits each: 4*256*12/8 bytes before base64
    assert len(base64.b64decode(json.loads((d / "t.json").read_text())["ids"]["data"])) == 1536
    r = run("decode", d / "t.json", "-c", ckpt, "-o", d / "r.png")
    assert r.exit_code == 0, r.output
    got = np.asarray(Image.open(d / "r.png"))
    want = model.decode(out.ids).clamp(-1, 1).add(1).mul(127.5).round().byte()[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


def test_decode_with_another_checkpoint_is_refused_unless_forced(setup):
    d, a, b, img = setup
    assert run("encode", img, "-c", a, "-o", d / "ta.json").exit_code == 0
    r = run("decode", d / "ta.json", "-c", b, "-o", d / "x.png")
    assert r.exit_code == 1 and "was made by checkpoint" in r.output and "--force" in r.output
    r = run("decode", d / "ta.json", "-c", b, "-o", d / "x.png", "--force")
    assert r.exit_code == 0 and "decoding anyway" in r.output


@pytest.mark.parametrize("mutate, message", [
    (lambda doc: doc.update(format="other"), "not a token file"),
    (lambda doc: doc.update(format_version=99), "format_version 99"),
    (lambda doc: doc["ids"].update(data=doc["ids"]["data"][:-8]), "truncated or corrupt"),
    (lambda doc: doc["ids"].update(data="!!!notbase64"), "malformed"),
    (lambda doc: doc["ids"].update(shape=[4, 100]), "does not match its layout"),
    (lambda doc: doc["ids"].update(bits=16), "use 16 bits"),
    (lambda doc: doc.pop("preprocess"), "malformed"),
    (lambda doc: doc["preprocess"].update(resize="stretch"), "malformed"),
    (lambda doc: doc["layout"].update(num_streams="four"), "malformed"),
])
def test_corrupt_token_files_name_the_problem(setup, mutate, message):
    d, ckpt, _, img = setup
    assert run("encode", img, "-c", ckpt, "-o", d / "good.json").exit_code == 0
    doc = json.loads((d / "good.json").read_text())
    mutate(doc)
    (d / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(TokenFileError, match=message):
        read_token_file(d / "bad.json")
    r = run("decode", d / "bad.json", "-c", ckpt, "-o", d / "x.png")
    assert r.exit_code == 1 and message.split()[0] in r.output


def test_hostile_token_files(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(TokenFileError, match="not valid JSON|not a token file"):
        read_token_file(tmp_path / "deep.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenFileError, match="not valid JSON"):
        read_token_file(tmp_path / "bin.json")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(TokenFileError, match="refusing to parse"):
        read_token_file(big)


def test_encode_refuses_a_non_image(setup):
    d, ckpt, _, _ = setup
    (d / "fake.jpg").write_bytes(b"<html>not an image</html>")
    r = run("encode", d / "fake.jpg", "-c", ckpt, "-o", d / "t.json")
    assert r.exit_code == 1 and "cannot be decoded" in r.output
