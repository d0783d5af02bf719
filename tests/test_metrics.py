"""Tests for mgrec.metrics: hand-computed values, a brute-force reference, accumulation and merging."""

from __future__ import annotations

import math

import pytest
import torch

from mgrec.metrics import TopKMetrics, topk_hits

KS = (1, 2, 3, 5)

# Four users, top-5 hit rows and ground-truth sizes:
#   A: n=2, hits at ranks 1 and 3  (fewer truths than K=3, 5)
#   B: n=1, no hits
#   C: n=4, hits at ranks 1, 2, 3  (all hits at the top)
#   D: n=1, hit at rank 2
HITS = torch.tensor(
    [
        [1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 0, 0, 0],
    ],
    dtype=torch.bool,
)
N_TRUTH = torch.tensor([2, 1, 4, 1])

# Per-user expected values at K = 1, 2, 3, 5, worked out by hand:
#   1/log2(2) = 1, 1/log2(3) = 0.6309297535714575, 1/log2(4) = 0.5, 1/log2(5) = 0.43067655807339306
EXPECTED = {
    "recall": [
        [0.5, 0.5, 1.0, 1.0],  # A: 1/2, 1/2, 2/2, 2/2
        [0.0, 0.0, 0.0, 0.0],  # B
        [0.25, 0.5, 0.75, 0.75],  # C: 1/4, 2/4, 3/4, 3/4
        [0.0, 1.0, 1.0, 1.0],  # D
    ],
    "precision": [
        [1.0, 0.5, 0.6666666666666666, 0.4],  # A: 1/1, 1/2, 2/3, 2/5
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 0.6],  # C: 3/5 at K=5
        [0.0, 0.5, 0.3333333333333333, 0.2],
    ],
    "ndcg": [
        # A: DCG 1, 1, 1.5, 1.5; IDCG 1, 1.6309297535714575 (two ideal hits) from K=2 on
        [1.0, 0.6131471927654584, 0.9197207891481876, 0.9197207891481876],
        [0.0, 0.0, 0.0, 0.0],
        # C: ideal up to K=3; at K=5 DCG 2.1309297535714575 / IDCG(4 hits) 2.5616063116448506
        [1.0, 1.0, 1.0, 0.8318724637288826],
        # D: DCG 0.6309297535714575 from K=2, IDCG 1 (one truth)
        [0.0, 0.6309297535714575, 0.6309297535714575, 0.6309297535714575],
    ],
    "map": [
        # A: precisions at hit ranks 1 and 3 are 1 and 2/3; normaliser min(2, K) = 1, 2, 2, 2
        [1.0, 0.5, 0.8333333333333334, 0.8333333333333334],
        [0.0, 0.0, 0.0, 0.0],
        # C: (1 + 1 + 1) / min(4, K) = 1/1, 2/2, 3/3, 3/4
        [1.0, 1.0, 1.0, 0.75],
        # D: precision 1/2 at rank 2, normaliser 1
        [0.0, 0.5, 0.5, 0.5],
    ],
}


def _expected_means(users: list[int]) -> dict[str, float]:
    return {
        f"{name}@{k}": sum(EXPECTED[name][u][j] for u in users) / len(users)
        for name in EXPECTED
        for j, k in enumerate(KS)
    }


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, float], prefix: str = "", tol: float = 1e-9):
    assert set(got) == {prefix + key for key in want}
    for key, value in want.items():
        assert got[prefix + key].item() == pytest.approx(value, abs=tol), key


@pytest.mark.parametrize("user", [0, 1, 2, 3])
def test_hand_computed_single_user(user: int) -> None:
    metric = TopKMetrics(ks=KS)
    metric.update(HITS[user : user + 1], N_TRUTH[user : user + 1])
    _assert_close(metric.compute(), _expected_means([user]))


def test_hand_computed_mean_and_prefix() -> None:
    metric = TopKMetrics(ks=KS, prefix="val/")
    metric.update(HITS, N_TRUTH)
    out = metric.compute()
    _assert_close(out, _expected_means([0, 1, 2, 3]), prefix="val/")
    # a few means spelled out
    assert out["val/recall@1"].item() == pytest.approx(0.1875)
    assert out["val/recall@3"].item() == pytest.approx(0.6875)
    assert out["val/map@5"].item() == pytest.approx(0.5208333333333333)
    assert out["val/ndcg@2"].item() == pytest.approx(0.561019236584229)
    assert list(out) == metric.names
    assert all(v.dtype == torch.float64 for v in out.values())


def test_extra_columns_beyond_max_k_are_ignored() -> None:
    metric = TopKMetrics(ks=KS)
    wide = torch.cat([HITS, torch.ones(4, 3, dtype=torch.bool)], dim=1)  # K_max = 8 > 5
    metric.update(wide, N_TRUTH)
    _assert_close(metric.compute(), _expected_means([0, 1, 2, 3]))


def test_subset_of_metrics_and_order() -> None:
    metric = TopKMetrics(ks=(3, 1), metrics=("map", "recall"), prefix="test/")
    metric.update(HITS, N_TRUTH)
    out = metric.compute()
    assert list(out) == ["test/map@3", "test/map@1", "test/recall@3", "test/recall@1"]
    assert out["test/map@1"].item() == pytest.approx(0.5)
    assert out["test/recall@3"].item() == pytest.approx(0.6875)


def _reference(hits: torch.Tensor, n_truth: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Per-user Python loops straight from the textbook definitions."""
    totals: dict[str, float] = {f"{m}@{k}": 0.0 for m in ("recall", "ndcg", "precision", "map") for k in ks}
    rows = hits.tolist()
    for row, n in zip(rows, n_truth.tolist(), strict=True):
        for k in ks:
            top = row[:k]
            n_hit = sum(top)
            dcg = sum(1.0 / math.log2(i + 2) for i, rel in enumerate(top) if rel)
            idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n, k)))
            ap, seen = 0.0, 0
            for i, rel in enumerate(top):
                if rel:
                    seen += 1
                    ap += seen / (i + 1)
            totals[f"recall@{k}"] += n_hit / n
            totals[f"precision@{k}"] += n_hit / k
            totals[f"ndcg@{k}"] += dcg / idcg
            totals[f"map@{k}"] += ap / min(n, k)
    return {key: value / len(rows) for key, value in totals.items()}


def _random_case(seed: int, n_users: int = 64, k_max: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n_truth = torch.randint(1, 80, (n_users,), generator=gen)
    hits = torch.rand(n_users, k_max, generator=gen) < torch.rand(n_users, 1, generator=gen) * 0.5
    # a user cannot have more hits than truths: keep only the first n_truth hits of each row
    hits &= hits.cumsum(1) <= n_truth.unsqueeze(1)
    return hits, n_truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_reference(seed: int) -> None:
    ks = (5, 10, 20, 50)
    hits, n_truth = _random_case(seed)
    metric = TopKMetrics(ks=ks)
    metric.update(hits, n_truth)
    got = metric.compute()
    want = _reference(hits, n_truth, ks)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key


def test_accumulation_equals_one_update_and_reset() -> None:
    hits, n_truth = _random_case(3, n_users=100)
    whole = TopKMetrics()
    whole.update(hits, n_truth)
    parts = TopKMetrics()
    for lo, hi in [(0, 7), (7, 8), (8, 60), (60, 100)]:
        parts.update(hits[lo:hi], n_truth[lo:hi])
    a, b = whole.compute(), parts.compute()
    for key in a:
        assert b[key].item() == pytest.approx(a[key].item(), abs=1e-12), key
    assert int(parts.n_users) == 100

    parts.reset()
    assert int(parts.n_users) == 0
    assert torch.count_nonzero(parts.sums) == 0
    parts.update(hits[:10], n_truth[:10])
    fresh = TopKMetrics()
    fresh.update(hits[:10], n_truth[:10])
    assert torch.equal(parts.sums, fresh.sums)
    assert int(parts.n_users) == 10


def test_merge_state_like_ddp() -> None:
    hits, n_truth = _random_case(4, n_users=90)
    full = TopKMetrics(prefix="val/")
    full.update(hits, n_truth)
    rank0, rank1 = TopKMetrics(prefix="val/"), TopKMetrics(prefix="val/")
    rank0.update(hits[:40], n_truth[:40])  # uneven shards, as with exact (unpadded) evaluation sharding
    rank1.update(hits[40:], n_truth[40:])
    summed = {name: rank0.metric_state[name] + rank1.metric_state[name] for name in rank0.metric_state}
    rank0.merge_state(rank1)
    want = full.compute()
    got = rank0.compute()
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), abs=1e-12), key
    for name, value in summed.items():
        assert torch.equal(rank0.metric_state[name], value)


def test_states_are_summed_float64() -> None:
    metric = TopKMetrics()
    assert metric.sums.dtype == torch.float64
    assert metric.full_state_update is False
    assert metric.higher_is_better is True
    assert set(metric.metric_state) == {"sums", "n_users"}
    # the discount tables are buffers that are not saved in checkpoints
    assert "_discount" not in metric.state_dict()


def test_input_validation() -> None:
    metric = TopKMetrics(ks=(5, 10))
    with pytest.raises(ValueError, match="max\\(ks\\)=10"):
        metric.update(torch.zeros(2, 5, dtype=torch.bool), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one entry per row"):
        metric.update(torch.zeros(2, 10, dtype=torch.bool), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="2-D"):
        metric.update(torch.zeros(10, dtype=torch.bool), torch.tensor([1]))
    with pytest.raises(ValueError, match="> 0"):
        metric.update(torch.zeros(2, 10, dtype=torch.bool), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="bool"):
        metric.update(torch.zeros(2, 10), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="unknown metric"):
        TopKMetrics(metrics=("recall", "mrr"))
    with pytest.raises(ValueError, match="positive int"):
        TopKMetrics(ks=(0, 5))
    with pytest.raises(ValueError, match="duplicates"):
        TopKMetrics(ks=(5, 5))


def test_topk_hits_small() -> None:
    topk = torch.tensor([[3, 1, 4], [0, 2, 5]])
    rows = torch.tensor([0, 0, 1, 1])
    items = torch.tensor([4, 9, 0, 3])
    hits = topk_hits(topk, rows, items, n_items=10)
    assert hits.dtype == torch.bool
    assert hits.tolist() == [[False, False, True], [True, False, False]]


def test_topk_hits_against_brute_force() -> None:
    gen = torch.Generator().manual_seed(5)
    n_users, n_items, k = 37, 200, 20
    topk = torch.stack([torch.randperm(n_items, generator=gen)[:k] for _ in range(n_users)])
    truth = torch.rand(n_users, n_items, generator=gen) < 0.1
    truth[3] = False  # a user with an empty truth row in this batch
    rows, items = truth.nonzero(as_tuple=True)
    got = topk_hits(topk, rows, items, n_items)
    want = [[bool(truth[u, topk[u, j]]) for j in range(k)] for u in range(n_users)]
    assert got.tolist() == want
    # no cross-talk between users: the same items in another user's row do not count
    assert not got[3].any()


def test_topk_hits_validation() -> None:
    topk = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="same length"):
        topk_hits(topk, torch.tensor([0, 0]), torch.tensor([1]), 5)
    with pytest.raises(ValueError, match="out of range"):
        topk_hits(topk, torch.tensor([0]), torch.tensor([5]), 5)
    with pytest.raises(ValueError, match="out of range"):
        topk_hits(topk, torch.tensor([1]), torch.tensor([0]), 5)
    empty = torch.tensor([], dtype=torch.long)
    assert not topk_hits(topk, empty, empty, 5).any()


def test_end_to_end_with_topk() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0], [0.5, 0.4, 0.3, 0.2, 0.1]])
    top = scores.topk(3, dim=1).indices  # [[1, 3, 2], [0, 1, 2]]
    hits = topk_hits(top, torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), n_items=5)
    metric = TopKMetrics(ks=(3,), metrics=("recall", "precision"))
    metric.update(hits, torch.tensor([1, 2]))
    out = metric.compute()
    assert out["recall@3"].item() == pytest.approx(0.5)  # user 0: 1/1, user 1: 0/2
    assert out["precision@3"].item() == pytest.approx(1 / 6)
