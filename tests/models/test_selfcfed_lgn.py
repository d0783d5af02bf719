"""SELFCFED_LGN: the loss and the scores equal a dense re-computation of MMRec's formulas; the training
graph is a fresh edge-dropout view per loss call (random rate, independent masks per direction, rescaled);
targets are detached dropout views; negatives unused; no modalities needed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tests.models.test_models import InMemory, fit, random_recall_at_20

from mgrec.data import InteractionData
from mgrec.models.selfcfed_lgn import SELFCFED_LGN


def mmrec_adjacency(model: SELFCFED_LGN) -> torch.Tensor:
    """LightGCN_Encoder.get_norm_adj_mat densely: (D + 1e-7)^-1/2 [[0, R], [R^T, 0]] (D + 1e-7)^-1/2."""
    train = torch.from_numpy(model.data.train.toarray()).double()
    n_users = model.n_users
    adjacency = torch.zeros(n_users + model.n_items, n_users + model.n_items, dtype=torch.float64)
    adjacency[:n_users, n_users:], adjacency[n_users:, :n_users] = train, train.T
    inv_sqrt = (adjacency.sum(1) + 1e-7).pow(-0.5)
    return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


def block_adjacency(model: SELFCFED_LGN, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    n_users = model.n_users
    adjacency = torch.zeros(n_users + model.n_items, n_users + model.n_items, dtype=p.dtype)
    adjacency[:n_users, n_users:], adjacency[n_users:, :n_users] = p.to_dense(), q.to_dense()
    return adjacency


def mmrec_encoder(model: SELFCFED_LGN, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ego = torch.cat([model.user_embedding, model.item_embedding])
    layers = [ego]
    for _ in range(model.hparams.n_layers):
        layers.append(adjacency @ layers[-1])
    return torch.stack(layers, dim=1).mean(dim=1).split([model.n_users, model.n_items])


def mmrec_loss(model: SELFCFED_LGN, batch: tuple, adjacency: torch.Tensor) -> torch.Tensor:
    """calculate_loss with target dropout 0 (the targets are the detached online rows)."""
    user_all, item_all = mmrec_encoder(model, adjacency)
    u_online, i_online = user_all[batch[0]], item_all[batch[1]]
    u_target, i_target = u_online.detach(), i_online.detach()
    reg = torch.sum(u_online**2) * 0.5 + torch.sum(i_online**2) * 0.5
    u_online, i_online = model.predictor(u_online), model.predictor(i_online)
    loss_ui = -F.cosine_similarity(u_online, i_target, dim=-1).mean() / 2
    loss_iu = -F.cosine_similarity(i_online, u_target, dim=-1).mean() / 2
    return loss_ui + loss_iu + model.hparams.reg_weight * reg


def batch_of(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(next(iter(InMemory(data).train_dataloader())))


def assert_grads_equal(model: SELFCFED_LGN, loss: torch.Tensor, expected: torch.Tensor) -> None:
    parameters = list(model.parameters())
    grads = torch.autograd.grad(loss, parameters, retain_graph=True)
    expected_grads = torch.autograd.grad(expected, parameters, retain_graph=True)
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_loss_and_gradients_equal_dense_mmrec_formula(tiny_data: InteractionData, n_layers: int) -> None:
    torch.manual_seed(0)
    model = SELFCFED_LGN(tiny_data, n_layers=n_layers, dropout=0.0, reg_weight=0.1, edge_drop_ratio=0.0)
    model = model.double()
    batch = batch_of(tiny_data)
    assert_grads_equal(model, model.loss(batch), mmrec_loss(model, batch, mmrec_adjacency(model)))


def test_loss_on_the_edge_dropout_view_equals_dense_formula(tiny_data: InteractionData) -> None:
    model = SELFCFED_LGN(tiny_data, dropout=0.0, reg_weight=0.1).double()
    batch = batch_of(tiny_data)
    torch.manual_seed(5)
    p, _, q, _ = model.dropped_graph()
    torch.manual_seed(5)
    loss = model.loss(batch)  # draws the same view first
    assert_grads_equal(model, loss, mmrec_loss(model, batch, block_adjacency(model, p, q)))
    assert not torch.allclose(loss, mmrec_loss(model, batch, mmrec_adjacency(model)))


def test_edge_dropout_view_masks_each_direction_and_rescales(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = SELFCFED_LGN(tiny_data, edge_drop_ratio=0.5)
    full_r, full_rt = model.norm_r.to_dense(), model.norm_rt.to_dense()
    scales = []
    for _ in range(10):
        p, p_t, q, q_t = (graph.to_dense() for graph in model.dropped_graph())
        torch.testing.assert_close(p_t, p.T)
        torch.testing.assert_close(q_t, q.T)
        kept_p, kept_q = p != 0, q != 0
        assert torch.all(full_r[kept_p] != 0) and torch.all(full_rt[kept_q] != 0)  # subsets of the graph
        ratios = torch.cat([p[kept_p] / full_r[kept_p], q[kept_q] / full_rt[kept_q]])
        scale = ratios[0]
        torch.testing.assert_close(ratios, scale.expand_as(ratios))  # one 1 / (1 - r) for the view
        kept_fraction = (kept_p.sum() + kept_q.sum()) / (2 * (full_r != 0).sum())
        assert abs(float(kept_fraction * scale) - 1.0) < 0.05  # kept with probability 1 - r
        assert 1.0 <= scale <= 2.0  # r < edge_drop_ratio
        assert not torch.equal(kept_p, kept_q.T) or scale == 1.0  # independent masks per direction
        scales.append(float(scale))
    assert len(set(scales)) == len(scales)  # a fresh rate every call


def test_edge_dropout_rate_is_uniform_up_to_the_ratio(tiny_data: InteractionData) -> None:
    torch.manual_seed(1)
    model = SELFCFED_LGN(tiny_data)  # MMRec: r ~ U[0, 1)
    rates = []
    for _ in range(200):
        p, _, q, _ = model.dropped_graph()
        values = torch.cat([p.values(), q.values()])
        kept = values != 0
        scale = values[kept][0] / torch.cat([model.norm_r.values(), model.norm_rt.values()])[kept][0]
        rates.append(1.0 - 1.0 / float(scale))
    rates = torch.tensor(rates)
    assert abs(float(rates.mean()) - 0.5) < 0.07 and float(rates.max()) > 0.9 and float(rates.min()) < 0.1
    model = SELFCFED_LGN(tiny_data, edge_drop_ratio=0.0)
    p, _, q, _ = model.dropped_graph()
    torch.testing.assert_close(p.to_dense(), model.norm_r.to_dense())
    torch.testing.assert_close(q.to_dense(), model.norm_rt.to_dense())


def test_targets_are_detached_dropout_views(tiny_data: InteractionData) -> None:
    model = SELFCFED_LGN(tiny_data, dropout=0.5)
    rows = torch.rand(400, 64, requires_grad=True) + 0.1
    target = model._target(rows)
    assert not target.requires_grad
    dropped = target == 0
    assert abs(float(dropped.float().mean()) - 0.5) < 0.02
    torch.testing.assert_close(target[~dropped], 2 * rows.detach()[~dropped])
    batch = batch_of(tiny_data)
    model = SELFCFED_LGN(tiny_data, dropout=0.5, edge_drop_ratio=0.0)
    torch.manual_seed(2)
    first = model.loss(batch)
    assert not torch.allclose(model.loss(batch), first)  # targets re-drawn


def test_negatives_are_ignored(tiny_data: InteractionData) -> None:
    model = SELFCFED_LGN(tiny_data)
    users, items, negatives = batch_of(tiny_data)
    torch.manual_seed(5)
    first = model.loss((users, items, negatives))
    torch.manual_seed(5)
    torch.testing.assert_close(model.loss((users, items, negatives.flip(0))), first)


def test_scores_pair_online_and_target_views_from_current_weights(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = SELFCFED_LGN(tiny_data).double()
    users = torch.arange(12)
    with torch.no_grad():
        user_all, item_all = mmrec_encoder(model, mmrec_adjacency(model))
        u_online, i_online = model.predictor(user_all), model.predictor(item_all)
        expected = u_online[users] @ item_all.T + user_all[users] @ i_online.T
        scores = model.score(users)
    torch.testing.assert_close(scores, expected)
    with torch.no_grad():
        model.predictor.bias.add_(1.0)
    assert not torch.allclose(model.score(users), scores)
    model._start_eval()
    first = model.score(users)
    with torch.no_grad():
        model.user_embedding.mul_(3.0)
    torch.testing.assert_close(model.score(users), first)  # computed once per evaluation pass
    model._cache = None
    assert not torch.allclose(model.score(users), first)


def test_trains_on_data_without_modalities(tiny_data: InteractionData) -> None:
    bare = dataclasses.replace(tiny_data, modalities={})
    _, _, result = fit("selfcfed_lgn", "adam", bare)
    assert result["test/recall@20"] > 1.5 * random_recall_at_20(bare)
