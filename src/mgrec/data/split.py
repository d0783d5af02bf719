"""MMRec's per-user random train / valid / test split, vectorised."""

from __future__ import annotations

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
_SMALL_USER = 10
_MIN_ROWS_TO_HOLD_OUT = 3


def mmrec_split(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """Label each interaction row 0 (train), 1 (valid) or 2 (test) with MMRec's rule.

    Per user with n rows, the rows are shuffled (seeded), then:

    - n < 3: all rows train;
    - 3 <= n < 10: 1 valid, 1 test, the rest train;
    - n >= 10: floor(0.2 * n) rows held out, of which valid = floor(half) and test = the rest;
      all other rows train.

    ``user_ids`` is an integer array, one entry per row, in any order. The result is an int8 array
    aligned with it. The same input and seed always give the same labels.
    """
    users = np.asarray(user_ids)
    if users.ndim != 1:
        raise ValueError(f"user_ids must be one-dimensional, got shape {users.shape}")
    if users.size and not np.issubdtype(users.dtype, np.integer):
        raise TypeError(f"user_ids must be integers, got dtype {users.dtype}")
    n_rows = users.size
    labels = np.zeros(n_rows, dtype=np.int8)
    if n_rows == 0:
        return labels

    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(n_rows), users))
    sorted_users = users[order]

    is_start = np.empty(n_rows, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_users[1:], sorted_users[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    counts = np.diff(np.append(starts, n_rows))

    held_out = np.where(counts < _SMALL_USER, 2, counts // 5)
    held_out[counts < _MIN_ROWS_TO_HOLD_OUT] = 0
    n_valid = held_out // 2
    n_train = counts - held_out

    rank = np.arange(n_rows) - np.repeat(starts, counts)
    rank_train = np.repeat(n_train, counts)
    rank_test = rank_train + np.repeat(n_valid, counts)
    sorted_labels = np.where(rank < rank_train, TRAIN, np.where(rank < rank_test, VALID, TEST))
    labels[order] = sorted_labels
    return labels
