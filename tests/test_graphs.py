from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mgrec.graphs import normalized_adjacency, row_normalize, symmetric_normalize


def test_normalized_adjacency_values() -> None:
    # users 0,1,2 (user 2 cold); items 0,1
    train = sp.csr_matrix(np.array([[1, 1], [0, 1], [0, 0]], dtype=np.float32))
    adjacency = normalized_adjacency(train).to_dense().numpy()
    degree = np.array([2, 1, 0, 1, 2], dtype=float)  # users then items
    expected = np.zeros((5, 5))
    for u, i in [(0, 0), (0, 1), (1, 1)]:
        value = 1 / np.sqrt(degree[u] * degree[3 + i])
        expected[u, 3 + i] = expected[3 + i, u] = value
    np.testing.assert_allclose(adjacency, expected, rtol=1e-6)
    assert adjacency[2].sum() == 0


def test_symmetric_normalisation_spectrum_and_row_sums() -> None:
    rng = np.random.default_rng(0)
    matrix = sp.csr_matrix((rng.random((30, 30)) < 0.2).astype(np.float32))
    matrix = matrix + matrix.T
    normalised = symmetric_normalize(matrix).toarray()
    assert np.max(np.abs(np.linalg.eigvalsh(normalised))) <= 1 + 1e-5
    rows = row_normalize(matrix).toarray().sum(1)
    np.testing.assert_allclose(rows[np.asarray(matrix.sum(1)).ravel() > 0], 1.0, rtol=1e-6)
