"""Real consumers of the loaders: WinTok distillation from stored targets, a tiny AR model."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from loader_support import built_store
from pipelines.loaders import DistillDataset, ResumableLoader, ZarrTokenDataset, distill_loss
from wintok import load_tokenizer
from wintok.teachers import build_teacher


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_store(tmp_path_factory)


def test_stored_target_loss_equals_live_teacher_loss(built):
    ds = DistillDataset(str(built.store), built.features, batch_size=8, seed=0)
    teacher = build_teacher("efficientnet-lite0")
    student = load_tokenizer(built.ckpt).eval()
    torch.manual_seed(0)
    proj = nn.Linear(student.semantic_shape[1], ds.dim)  # student pooled -> teacher width
    batches = list(ResumableLoader(ds, num_workers=2))
    assert sum(len(b["key"]) for b in batches) == 48 == len({k for b in batches for k in b["key"]})
    for batch in batches[:2]:
        assert batch["image"].shape == (8, 3, 256, 256) and batch["target"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        live = teacher.embed(batch["image"]).pooled
        torch.testing.assert_close(batch["target"], live, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            pred = proj(student.encode(batch["image"]).pooled)
        stored_loss, live_loss = distill_loss(pred, batch["target"]), distill_loss(pred, live)
        assert 0 < stored_loss < 2
        torch.testing.assert_close(stored_loss, live_loss, atol=1e-6, rtol=1e-5)


def test_distill_loss_validates_shapes():
    with pytest.raises(ValueError, match="student_pooled"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    assert float(distill_loss(torch.ones(2, 3), torch.ones(2, 3))) == pytest.approx(0.0, abs=1e-6)


class TinyAR(nn.Module):
    """A causal transformer predicting the 4 codebook ids of position p from positions < p."""

    def __init__(self, streams: int = 4, vocab: int = 4096, positions: int = 64, dim: int = 64):
        super().__init__()
        self.streams, self.vocab = streams, vocab
        self.embed = nn.ModuleList(nn.Embedding(vocab, dim) for _ in range(streams))
        self.bos = nn.Parameter(torch.zeros(dim))
        self.pos = nn.Parameter(torch.randn(positions, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(dim, streams * vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, streams, P) -> mean cross-entropy of predicting each position's ids."""
        B, S, P = ids.shape
        x = sum(e(ids[:, s]) for s, e in enumerate(self.embed))  # (B, P, dim)
        x = torch.cat([self.bos.expand(B, 1, -1), x[:, :-1]], dim=1) + self.pos[:P]
        mask = nn.Transformer.generate_square_subsequent_mask(P)
        h = self.blocks(x, mask=mask, is_causal=True)
        logits = self.head(h).view(B, P, S, self.vocab)
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab), ids.transpose(1, 2).reshape(-1))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core box OpenMP spinning makes small ops 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_ar_model_learns_from_stored_tokens(built, one_thread):
    torch.manual_seed(0)
    model = TinyAR(positions=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = ResumableLoader(ZarrTokenDataset(str(built.store), built.tokens, batch_size=8, seed=0,
                                              cache="memory", captions=False))
    losses, t0 = [], time.perf_counter()
    while len(losses) < 180:
        for batch in loader:  # a new epoch (new order) each pass
            loss = model(batch["ids"][:, :, :32])  # the first two grid rows: fast on CPU
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    first, last = sum(losses[:6]) / 6, sum(losses[-12:]) / 12
    assert losses[0] > math.log(4096) - 0.5  # starts near chance
    assert last < first - 2.0, (losses[:6], losses[-12:])
    assert loader.state_dict()["epoch"] == len(losses) // 6
    assert time.perf_counter() - t0 < 60
