"""BM3: the loss is MMRec's formula (dense re-computation, any number of modalities); one dropout mask per
distinct user/item as MMRec's whole-table dropout; negatives unused; raw features trainable; scores
through the predictor from the current weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_multimodal

from mgrec.models.bm3 import BM3


def _batch(n_users: int, n_items: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    users = torch.randint(0, n_users, (size,), generator=generator)
    items = torch.randint(0, n_items, (size,), generator=generator)
    negatives = torch.randint(0, n_items, (size,), generator=generator)
    users[:4], items[:4] = users[4], items[4]  # repeated users and items
    return users, items, negatives


def _mmrec_loss(model: BM3, batch: tuple[torch.Tensor, ...], n_layers: int) -> torch.Tensor:
    """MMRec's calculate_loss with dropout 0: dense normalised adjacency, whole tables, then the gather."""
    data = model.data
    n_users = data.n_users
    train = torch.from_numpy(data.train.toarray()).float()
    adjacency = torch.zeros(n_users + data.n_items, n_users + data.n_items)
    adjacency[:n_users, n_users:], adjacency[n_users:, :n_users] = train, train.T
    inv_sqrt = (adjacency.sum(1) + 1e-7).pow(-0.5)
    norm_adj = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    ego = torch.cat([model.user_embedding, model.item_embedding])
    layers = [ego]
    for _ in range(n_layers):
        layers.append(norm_adj @ layers[-1])
    mean = torch.stack(layers, dim=1).mean(dim=1)
    u_ori, i_ori = mean[:n_users], mean[n_users:] + model.item_embedding
    u_target, i_target = u_ori.detach(), i_ori.detach()  # dropout 0
    users, items = batch[0], batch[1]
    u_online, i_online = model.predictor(u_ori)[users], model.predictor(i_ori)[items]

    def gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(a, b, dim=-1).mean()

    alignment = 0.0
    for name in data.modalities:
        projected = model.projections[name](model.features[name])  # every item, as MMRec
        online = model.predictor(projected)[items]
        alignment = alignment + gap(online, i_target[items]) + gap(online, projected.detach()[items])
    reg = (u_ori.norm() + i_ori.norm()) / data.n_items
    ranking = gap(u_online, i_target[items]) + gap(i_online, u_target[users])
    return ranking + model.hparams.reg_weight * reg + model.hparams.cl_weight * alignment


@pytest.mark.parametrize(("n_modalities", "n_layers"), [(1, 1), (2, 2), (3, 1)])
def test_loss_and_gradients_match_mmrec_formula(n_modalities: int, n_layers: int) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = BM3(data, embedding_size=8, n_layers=n_layers, dropout=0.0, reg_weight=0.3, cl_weight=1.5)
    batch = _batch(data.n_users, data.n_items)
    loss = model.loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = _mmrec_loss(model, batch, n_layers)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


def test_negatives_are_ignored() -> None:
    data = tiny_multimodal(2)
    model = BM3(data, embedding_size=8, dropout=0.3)
    users, items, negatives = _batch(data.n_users, data.n_items)
    torch.manual_seed(5)
    first = model.loss((users, items, negatives))
    torch.manual_seed(5)
    second = model.loss((users, items, torch.flip(negatives, [0])))
    torch.testing.assert_close(first, second)


def test_one_dropout_mask_per_distinct_row() -> None:
    """A batch repeated twice has the loss of the batch once (with the same draws): duplicate rows share
    their target, as with MMRec's dropout over whole tables; independent masks per occurrence would not."""
    data = tiny_multimodal(2)
    model = BM3(data, embedding_size=8, dropout=0.5)
    users, items, negatives = _batch(data.n_users, data.n_items)
    torch.manual_seed(7)
    once = model.loss((users, items, negatives))
    torch.manual_seed(7)
    twice = model.loss((users.repeat(2), items.repeat(2), negatives.repeat(2)))
    torch.testing.assert_close(once, twice)
    torch.manual_seed(8)
    assert not torch.allclose(model.loss((users, items, negatives)), once)  # dropout is random


def test_raw_features_trainable_and_projections_per_modality() -> None:
    data = tiny_multimodal(3)
    model = BM3(data, embedding_size=8)
    assert set(model.projections) == set(data.modalities)
    for name, features in data.modalities.items():
        assert isinstance(model.features[name], torch.nn.Parameter)
        assert model.projections[name].in_features == features.shape[1]
        torch.testing.assert_close(model.features[name].detach(), features)
    assert {key for key in model.state_dict() if key.startswith("features.")} == {
        f"features.{name}" for name in data.modalities
    }


def test_scores_go_through_the_predictor_with_current_weights() -> None:
    data = tiny_multimodal(2)
    model = BM3(data, embedding_size=8, n_layers=2)
    users = torch.arange(12)
    with torch.no_grad():
        user_final, item_final = model.propagate()
        expected = model.predictor(user_final[users]) @ model.predictor(item_final).T
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
    model._cache = None  # the pass ends
    assert not torch.allclose(model.score(users), first)


def test_graph_is_lightgcn_normalised_bipartite() -> None:
    data = tiny_multimodal(1)
    model = BM3(data, embedding_size=8)
    train = data.train.toarray().astype(np.float64)
    du, di = train.sum(1), train.sum(0)
    with np.errstate(divide="ignore"):
        expected = train * np.where(du > 0, du**-0.5, 0)[:, None] * np.where(di > 0, di**-0.5, 0)[None, :]
    np.testing.assert_allclose(model.norm_r.to_dense().numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(model.norm_rt.to_dense().numpy(), expected.T, rtol=1e-5)
