from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mgrec.graphs import (
    bipartite_adjacency,
    bipartite_mean_propagation,
    normalized_adjacency,
    normalized_bipartite,
    row_normalize,
    symmetric_normalize,
    symmetric_spmm,
)


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


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_bipartite_propagation_matches_dense_lightgcn(n_layers: int) -> None:
    """The fused propagation (forward and gradient) equals mean_l A_hat^l E computed densely with autograd."""
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((12, 9)) < 0.3).astype(np.float32))
    train[5] = 0  # a cold user
    train.eliminate_zeros()
    dense = torch.from_numpy(symmetric_normalize(bipartite_adjacency(train)).toarray())
    users = torch.randn(12, 4, dtype=torch.float32, requires_grad=True)
    items = torch.randn(9, 4, dtype=torch.float32, requires_grad=True)
    weights_u, weights_i = torch.randn(12, 4), torch.randn(9, 4)

    layer = torch.cat([users, items])
    total = layer
    for _ in range(n_layers):
        layer = dense @ layer
        total = total + layer
    expected = total / (n_layers + 1)
    (expected[:12] * weights_u).sum().add((expected[12:] * weights_i).sum()).backward()
    expected_grads = users.grad.clone(), items.grad.clone()
    users.grad, items.grad = None, None

    norm_r, norm_rt = normalized_bipartite(train)
    out_u, out_i = bipartite_mean_propagation(norm_r, norm_rt, users, items, n_layers)
    torch.testing.assert_close(out_u, expected[:12].detach())
    torch.testing.assert_close(out_i, expected[12:].detach())
    ((out_u * weights_u).sum() + (out_i * weights_i).sum()).backward()
    torch.testing.assert_close(users.grad, expected_grads[0])
    torch.testing.assert_close(items.grad, expected_grads[1])


def test_symmetric_spmm_gradient() -> None:
    rng = np.random.default_rng(1)
    train = sp.csr_matrix((rng.random((6, 5)) < 0.5).astype(np.float32))
    adjacency = normalized_adjacency(train)
    x = torch.randn(11, 3, requires_grad=True)
    symmetric_spmm(adjacency, x).pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_()
    (adjacency.to_dense() @ reference).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
