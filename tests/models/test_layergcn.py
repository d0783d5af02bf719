"""LayerGCN: the loss and the scores equal a dense re-computation of MMRec's formulas; the per-epoch hook
re-draws the pruned training graph, alternating degree-sensitive and uniform draws; no modalities needed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.models.test_models import InMemory, fit, random_recall_at_20

from mgrec.data import InteractionData
from mgrec.models.layergcn import LayerGCN, cosine_refine


def dense(matrix) -> torch.Tensor:
    return torch.from_numpy(matrix.toarray()).double()


def mmrec_adjacency(interactions: torch.Tensor) -> torch.Tensor:
    """MMRec's get_norm_adj_mat / _normalize_adj_m densely: (D + 1e-7)^-1/2 [[0, R], [R^T, 0]] (D + 1e-7)^-1/2."""
    n_users, n_items = interactions.shape
    adjacency = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    adjacency[:n_users, n_users:] = interactions
    adjacency[n_users:, :n_users] = interactions.T
    inv_sqrt = (adjacency.sum(1) + 1e-7).pow(-0.5)
    return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


def mmrec_forward(model: LayerGCN, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ego = torch.cat([model.user_embedding, model.item_embedding])
    current, layers = ego, []
    for _ in range(model.hparams.n_layers):
        current = adjacency @ current
        current = torch.einsum("a,ab->ab", F.cosine_similarity(current, ego, dim=-1), current)
        layers.append(current)
    return torch.stack(layers).sum(0).split([model.n_users, model.n_items])


def mmrec_loss(model: LayerGCN, batch: tuple, adjacency: torch.Tensor) -> torch.Tensor:
    users, pos, neg = batch
    user_all, item_all = mmrec_forward(model, adjacency)
    u = user_all[users]
    bpr = torch.sum(-F.logsigmoid((u * item_all[pos]).sum(1) - (u * item_all[neg]).sum(1)))
    ego = (model.user_embedding[users], model.item_embedding[pos], model.item_embedding[neg])
    return bpr + model.hparams.reg_weight * sum(torch.sum(e**2) * 0.5 for e in ego)


def batch_of(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(next(iter(InMemory(data).train_dataloader())))


def kept_edges(model: LayerGCN) -> torch.Tensor:
    return (model.masked_r.to_dense() > 0).double()


@pytest.mark.parametrize("n_layers", [1, 4])
def test_loss_and_gradients_equal_dense_mmrec_formula(tiny_data: InteractionData, n_layers: int) -> None:
    torch.manual_seed(0)
    model = LayerGCN(tiny_data, n_layers=n_layers, reg_weight=0.1).double()
    batch = batch_of(tiny_data)
    loss = model.loss(batch)  # before any epoch: the full graph
    grads = torch.autograd.grad(loss, [model.user_embedding, model.item_embedding])
    expected = mmrec_loss(model, batch, mmrec_adjacency(dense(tiny_data.train)))
    expected_grads = torch.autograd.grad(expected, [model.user_embedding, model.item_embedding])
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_cosine_refine_equals_autograd_through_cosine_similarity() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, dtype=torch.float64, generator=generator)
    ego = torch.randn(30, 6, dtype=torch.float64, generator=generator)
    x[3], ego[5] = 0.0, 0.0  # a node without edges; a zero ego row
    x.requires_grad_(), ego.requires_grad_()
    grad = torch.randn(30, 6, dtype=torch.float64, generator=generator)
    expected = F.cosine_similarity(x, ego, dim=-1).unsqueeze(1) * x
    got = cosine_refine(x, ego)
    torch.testing.assert_close(got, expected)
    for a, b in zip(
        torch.autograd.grad(got, [x, ego], grad), torch.autograd.grad(expected, [x, ego], grad), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_pruned_graph_is_renormalised_and_used_for_training_scores_use_the_full_graph(
    tiny_data: InteractionData,
) -> None:
    torch.manual_seed(0)
    model = LayerGCN(tiny_data, dropout=0.2).double()
    train = dense(tiny_data.train)
    for epoch in (0, 1):
        model.sample_training_graph(epoch)
        kept = kept_edges(model)
        assert int(kept.sum()) == int(0.8 * tiny_data.train.nnz)
        assert torch.all(train[kept > 0] == 1)  # a subset of the training edges
        pruned = mmrec_adjacency(kept)  # re-normalised by the kept graph's degrees
        n_users = tiny_data.n_users
        torch.testing.assert_close(model.masked_r.to_dense(), pruned[:n_users, n_users:])
        torch.testing.assert_close(model.masked_rt.to_dense(), pruned[n_users:, :n_users])
        batch = batch_of(tiny_data)
        torch.testing.assert_close(model.loss(batch), mmrec_loss(model, batch, pruned))
    users = torch.arange(10)
    user_all, item_all = mmrec_forward(model, mmrec_adjacency(train))
    with torch.no_grad():
        torch.testing.assert_close(model.score(users), user_all[users] @ item_all.T)


def test_even_epochs_prune_by_degree_odd_epochs_uniformly(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = LayerGCN(tiny_data, dropout=0.8)
    train = dense(tiny_data.train)
    products = train.sum(1, keepdim=True) * train.sum(0, keepdim=True)
    overall = products[train > 0].mean()
    means = {0: [], 1: []}
    for epoch in range(20):
        model.sample_training_graph(epoch)
        means[epoch % 2].append(products[kept_edges(model) > 0].mean())
    degree_sensitive, uniform = torch.stack(means[0]).mean(), torch.stack(means[1]).mean()
    assert degree_sensitive < 0.9 * overall  # edges between popular nodes dropped most
    assert abs(uniform - overall) < 0.03 * overall  # no preference


def test_draws_follow_the_global_seed_and_change_every_epoch(tiny_data: InteractionData) -> None:
    model = LayerGCN(tiny_data, dropout=0.5)
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        model.sample_training_graph(0)
        draws.append(model.masked_r.to_dense())
    torch.testing.assert_close(draws[0], draws[1])
    model.sample_training_graph(0)
    assert not torch.equal(model.masked_r.to_dense(), draws[0])


def test_trainer_redraws_the_graph_every_epoch(
    monkeypatch: pytest.MonkeyPatch, tiny_data: InteractionData
) -> None:
    drawn: list[tuple[int, np.ndarray]] = []
    original = LayerGCN.sample_training_graph

    def recording(self: LayerGCN, epoch: int) -> None:
        original(self, epoch)
        drawn.append((epoch, self.masked_r.col_indices().numpy().copy()))

    monkeypatch.setattr(LayerGCN, "sample_training_graph", recording)
    fit("layergcn", "mg", tiny_data, epochs=3)
    assert [epoch for epoch, _ in drawn] == [0, 1, 2]
    assert not np.array_equal(drawn[0][1], drawn[1][1]) and not np.array_equal(drawn[1][1], drawn[2][1])


def test_no_dropout_trains_on_the_full_graph(tiny_data: InteractionData) -> None:
    model = LayerGCN(tiny_data, dropout=0.0)
    model.sample_training_graph(1)
    assert model.masked_r is model.norm_r and model.masked_rt is model.norm_rt


def test_trains_on_data_without_modalities(tiny_data: InteractionData) -> None:
    bare = dataclasses.replace(tiny_data, modalities={})
    _, _, result = fit("layergcn", "adam", bare)
    assert result["test/recall@20"] > 1.5 * random_recall_at_20(bare)
