from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mgrec.graphs import (
    bipartite_adjacency,
    bipartite_mean_propagation,
    cached_graph,
    degree_sensitive_prune,
    edge_softmax,
    edge_spmm,
    knn_graph,
    knn_neighbours,
    neighbour_table,
    normalize_edges,
    normalized_adjacency,
    normalized_bipartite,
    row_normalize,
    sample_neighbours,
    symmetric_normalize,
    symmetric_spmm,
    user_cooccurrence_graph,
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


def brute_force_knn(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense cosine similarities, neighbours sorted by similarity (the reference for small data)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_knn_equals_brute_force_for_any_block_size(block_size: int) -> None:
    features = np.random.default_rng(1).normal(size=(90, 12)).astype(np.float64)
    indices, similarities = knn_neighbours(torch.from_numpy(features).float(), k=6, block_size=block_size)
    expected_indices, expected_similarities = brute_force_knn(features, 6)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_allclose(similarities.numpy(), expected_similarities, atol=1e-5)
    assert (indices[:, 0] == torch.arange(90)).all()  # every item is its own nearest neighbour


def test_knn_graph_is_block_size_independent_and_normalised() -> None:
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    small = knn_graph(features, k=5, block_size=3)
    large = knn_graph(features, k=5, block_size=512)
    # same neighbours; values equal up to the matrix product's rounding, which depends on the block shape
    np.testing.assert_array_equal(small.indices, large.indices)
    np.testing.assert_allclose(small.data, large.data, atol=1e-6)
    assert np.all(np.diff(small.indptr) == 5)
    binary = knn_graph(features, k=5, weighted=False, normalization="row")
    np.testing.assert_allclose(np.asarray(binary.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    # symmetric normalisation of a binary 5-NN graph by row sums: every value is 1 / sqrt(5 * 5)
    symmetric = knn_graph(features, k=5, weighted=False, normalization="sym")
    np.testing.assert_allclose(symmetric.data, 0.2, rtol=1e-6)


def test_knn_graph_weighted_values_follow_mmrec_laplacian() -> None:
    features = np.random.default_rng(3).random((40, 6))
    graph = knn_graph(torch.from_numpy(features).float(), k=4).toarray()
    order, similarity = brute_force_knn(features, 4)
    dense = np.zeros((40, 40))
    np.put_along_axis(dense, order, similarity, axis=1)
    inv_sqrt = dense.sum(1) ** -0.5  # MMRec's compute_normalized_laplacian: row sums on both sides
    np.testing.assert_allclose(graph, inv_sqrt[:, None] * dense * inv_sqrt[None, :], atol=1e-6)


def test_knn_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be"):
        knn_neighbours(torch.randn(5, 2), k=0)
    with pytest.raises(ValueError, match="normalization"):
        normalize_edges(
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.ones(1), 1, "l1"
        )


def test_edge_spmm_matches_dense_product_and_its_gradients() -> None:
    generator = torch.Generator().manual_seed(4)
    rows, cols = torch.tensor([0, 0, 2, 3, 3]), torch.tensor([1, 3, 2, 0, 1])
    values = torch.rand(5, generator=generator, requires_grad=True)
    x = torch.randn(4, 3, generator=generator, requires_grad=True)
    out = edge_spmm(rows, cols, values, x, n_rows=4)
    dense = torch.zeros(4, 4).index_put((rows, cols), values)
    torch.testing.assert_close(out, dense @ x)
    out.square().sum().backward()
    expected_values, expected_x = torch.autograd.grad((dense @ x).square().sum(), [values, x])
    torch.testing.assert_close(values.grad, expected_values)
    torch.testing.assert_close(x.grad, expected_x)


def test_degree_sensitive_prune_keeps_a_subset_and_drops_popular_edges_more() -> None:
    rng = np.random.default_rng(5)
    # user 0 and item 0 are hubs: their edges have the smallest weights 1 / sqrt(d_u d_i)
    dense = (rng.random((300, 80)) < 0.05).astype(np.float32)
    dense[0, :] = 1
    dense[:, 0] = 1
    train = sp.csr_matrix(dense)
    kept_counts = np.zeros_like(dense)
    for seed in range(40):
        kept = degree_sensitive_prune(train, 0.5, torch.Generator().manual_seed(seed))
        assert kept.nnz == int(train.nnz * 0.5)
        assert (kept - kept.multiply(train)).nnz == 0  # a subset of the training edges
        kept_counts += kept.toarray()
    hub_rate = kept_counts[0, 1:].mean() / 40
    other = dense.copy()
    other[0, :] = 0
    other[:, 0] = 0
    other_rate = kept_counts[other > 0].mean() / 40
    assert hub_rate < 0.5 * other_rate
    same = degree_sensitive_prune(train, 0.5, torch.Generator().manual_seed(0))
    again = degree_sensitive_prune(train, 0.5, torch.Generator().manual_seed(0))
    assert (same != again).nnz == 0
    assert degree_sensitive_prune(train, 1.0).nnz == train.nnz
    with pytest.raises(ValueError, match="keep_ratio"):
        degree_sensitive_prune(train, 0.0)


def test_graph_cache_is_keyed_by_content_and_parameters(tmp_path) -> None:
    calls: list[int] = []

    def build(value: float) -> sp.csr_matrix:
        calls.append(1)
        return sp.csr_matrix(np.full((2, 2), value, dtype=np.float32))

    first = cached_graph(tmp_path, "knn", {"data": "a", "k": 10}, lambda: build(1.0))
    again = cached_graph(tmp_path, "knn", {"data": "a", "k": 10}, lambda: build(9.0))
    assert len(calls) == 1 and (first != again).nnz == 0  # reused
    changed = cached_graph(tmp_path, "knn", {"data": "b", "k": 10}, lambda: build(2.0))
    other_k = cached_graph(tmp_path, "knn", {"data": "a", "k": 5}, lambda: build(3.0))
    assert len(calls) == 3 and changed[0, 0] == 2.0 and other_k[0, 0] == 3.0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npz"] * 3  # no temporary files left
    assert cached_graph(None, "knn", {}, lambda: build(4.0))[0, 0] == 4.0


def test_graph_cache_failed_build_leaves_nothing(tmp_path) -> None:
    def broken() -> sp.csr_matrix:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cached_graph(tmp_path, "knn", {"data": "a"}, broken)
    assert list(tmp_path.iterdir()) == []


def test_graph_key_follows_the_modality_values_only_and_is_lazy(tmp_path) -> None:
    import dataclasses

    from mgrec.models.multimodal import graph_key
    from tests.conftest import tiny_multimodal

    data = tiny_multimodal(2)
    base = graph_key(data, "image", k=10)()
    other_text = dataclasses.replace(
        data, modalities={**data.modalities, "text": data.modalities["text"] + 1}
    )
    other_image = dataclasses.replace(
        data, modalities={**data.modalities, "image": data.modalities["image"] + 1}
    )
    assert graph_key(other_text, "image", k=10)() == base
    assert graph_key(other_image, "image", k=10)() != base
    assert graph_key(data, "image", k=5)() != base

    def never() -> dict:
        raise AssertionError("the key must not be computed with the cache off")

    assert cached_graph(None, "knn", never, lambda: sp.eye(2, format="csr"))[0, 0] == 1.0


def test_knn_with_shrink_equals_brute_force() -> None:
    features = torch.randn(60, 7, generator=torch.Generator().manual_seed(0)) * torch.rand(60, 1) * 5
    features[3] = 0.0
    norm = features.double().norm(dim=1, keepdim=True)
    similarity = (features.double() @ features.double().T) / (norm * norm.T + 10.0)
    values, _ = similarity.topk(4, dim=1)
    indices, got = knn_neighbours(features, 4, block_size=7, shrink=10.0)
    torch.testing.assert_close(got.double(), values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(similarity.gather(1, indices), values, rtol=1e-5, atol=1e-6)


def random_interactions(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[5] = 0.0  # a user without interactions
    return sp.csr_matrix(dense)


def brute_force_user_graph(train: sp.csr_matrix, k: int) -> dict[int, list[tuple[int, float]]]:
    """Dense R R^T without its diagonal; per user its k largest counts, ties by the smaller user id."""
    binary = (train.toarray() > 0).astype(np.int64)
    counts = binary @ binary.T
    np.fill_diagonal(counts, 0)
    graph = {}
    for user, row in enumerate(counts):
        ranked = sorted(((-int(c), v) for v, c in enumerate(row) if c > 0))[:k]
        graph[user] = [(v, float(-c)) for c, v in ranked]
    return graph


@pytest.mark.parametrize("k", [1, 3, 20])
def test_user_cooccurrence_graph_equals_brute_force(k: int) -> None:
    train = random_interactions(70, 40, 0.08, seed=k)
    graph = user_cooccurrence_graph(train, k, block_size=16, max_pairs=200)
    expected = brute_force_user_graph(train, k)
    for user in range(train.shape[0]):
        row = graph[user]
        assert sorted(zip(row.indices.tolist(), row.data.tolist(), strict=True)) == sorted(expected[user])
    assert graph[5].nnz == 0 and graph.diagonal().sum() == 0


def test_user_cooccurrence_graph_is_block_size_independent() -> None:
    train = random_interactions(120, 50, 0.1, seed=1)
    reference = user_cooccurrence_graph(train, 5, block_size=10_000, max_pairs=1 << 30)
    for block_size, max_pairs in ((1, 1), (7, 10_000), (33, 50), (1000, 1)):
        graph = user_cooccurrence_graph(train, 5, block_size=block_size, max_pairs=max_pairs)
        assert (graph != reference).nnz == 0
        np.testing.assert_array_equal(graph.indptr, reference.indptr)
    with pytest.raises(ValueError, match="k must be"):
        user_cooccurrence_graph(train, 0)


def test_neighbour_table_orders_strongest_first_and_pads() -> None:
    graph = sp.csr_matrix(
        (np.array([1, 3, 3, 2], np.float32), (np.array([0, 0, 0, 2]), np.array([1, 4, 2, 0]))), shape=(3, 5)
    )
    neighbours, counts, lengths = neighbour_table(graph, 4)
    assert neighbours[0].tolist() == [2, 4, 1, 0] and counts[0].tolist() == [3, 3, 1, 0]
    assert lengths.tolist() == [3, 0, 1] and counts[1].sum() == 0
    with pytest.raises(ValueError, match="more than k"):
        neighbour_table(graph, 2)


def test_sample_neighbours_pads_from_a_users_own_neighbours() -> None:
    train = random_interactions(80, 30, 0.07, seed=3)
    k = 6
    neighbours, counts, lengths = neighbour_table(user_cooccurrence_graph(train, k), k)
    assert (lengths < k).any() and (lengths == k).any() and (lengths == 0).any()
    index, weights = sample_neighbours(neighbours, counts, lengths, torch.Generator().manual_seed(0))
    for user in range(len(lengths)):
        n = int(lengths[user])
        if n == 0:
            assert weights[user].abs().sum() == 0
            continue
        own = set(neighbours[user, :n].tolist())
        assert index[user, :n].tolist() == neighbours[user, :n].tolist()
        assert set(index[user].tolist()) <= own
        picked = counts[user, :n][[neighbours[user, :n].tolist().index(v) for v in index[user].tolist()]]
        torch.testing.assert_close(weights[user], torch.softmax(picked, dim=0))
    again, _ = sample_neighbours(neighbours, counts, lengths, torch.Generator().manual_seed(0))
    other, _ = sample_neighbours(neighbours, counts, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(index, again) and not torch.equal(index, other)


def test_edge_softmax_normalises_per_node_and_matches_dense() -> None:
    index = torch.tensor([0, 0, 2, 2, 2, 3])
    scores = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    got = edge_softmax(index, scores, 5)
    expected = torch.cat(
        [torch.softmax(scores[[0, 1]], 0), torch.softmax(scores[[2, 3, 4]], 0), torch.ones(1, 2)]
    )
    torch.testing.assert_close(got, expected.double())
    assert torch.autograd.gradcheck(lambda s: edge_softmax(index, s, 5), (scores,))
