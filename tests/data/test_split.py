from __future__ import annotations

import time

import numpy as np
import pytest

from mgrec.data.split import mmrec_split

EXPECTED = {  # n rows -> (train, valid, test)
    1: (1, 0, 0),
    2: (2, 0, 0),
    3: (1, 1, 1),
    9: (7, 1, 1),
    10: (8, 1, 1),
    11: (9, 1, 1),
    14: (12, 1, 1),
    15: (12, 1, 2),
    25: (20, 2, 3),
    50: (40, 5, 5),
}


def expected_counts(n: np.ndarray) -> np.ndarray:
    held = np.where(n < 10, 2, n // 5)
    held[n < 3] = 0
    return np.stack([n - held, held // 2, held - held // 2], axis=1)


@pytest.fixture
def users() -> np.ndarray:
    raw_ids = np.array([907, 3, 42, 10_000_000, 5, 0, 77, 13, 600, 21])
    rows = np.repeat(raw_ids, list(EXPECTED))
    return np.random.default_rng(0).permutation(rows)


def counts_per_user(user_ids: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, int, int]]:
    return {
        int(u): tuple(int((labels[user_ids == u] == k).sum()) for k in range(3)) for u in np.unique(user_ids)
    }


def test_exact_counts_per_user(users: np.ndarray) -> None:
    labels = mmrec_split(users, seed=1)
    by_size = {int((users == u).sum()): c for u, c in counts_per_user(users, labels).items()}
    assert by_size == EXPECTED


def test_every_row_labelled(users: np.ndarray) -> None:
    labels = mmrec_split(users, seed=1)
    assert labels.dtype == np.int8
    assert labels.shape == users.shape
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}


def test_deterministic_and_seed_dependent(users: np.ndarray) -> None:
    first = mmrec_split(users, seed=7)
    np.testing.assert_array_equal(first, mmrec_split(users.copy(), seed=7))
    other = mmrec_split(users, seed=8)
    assert not np.array_equal(first, other)
    assert counts_per_user(users, first) == counts_per_user(users, other)


def test_empty_and_bad_input() -> None:
    assert mmrec_split(np.array([], dtype=np.int64), seed=0).shape == (0,)
    with pytest.raises(TypeError):
        mmrec_split(np.array([0.5, 1.5]), seed=0)
    with pytest.raises(ValueError):
        mmrec_split(np.zeros((2, 2), dtype=np.int64), seed=0)


def test_held_out_rows_are_uniform_within_user() -> None:
    n_users, n = 20_000, 10
    users = np.repeat(np.arange(n_users), n)
    labels = mmrec_split(users, seed=3).reshape(n_users, n)
    held_rate = (labels > 0).mean(axis=0)
    np.testing.assert_allclose(held_rate, 0.2, atol=0.02)


def test_million_rows_vectorised() -> None:
    rng = np.random.default_rng(0)
    users = rng.zipf(1.5, size=1_000_000) % 200_000
    start = time.perf_counter()
    labels = mmrec_split(users, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    ids, inverse, n = np.unique(users, return_inverse=True, return_counts=True)
    got = np.stack([np.bincount(inverse, weights=labels == k, minlength=ids.size) for k in range(3)], axis=1)
    np.testing.assert_array_equal(got, expected_counts(n))
