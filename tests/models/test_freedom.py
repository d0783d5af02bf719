"""FREEDOM: the loss and the scores equal a dense, independent re-computation of MMRec's formulas; the
per-epoch hook re-draws the pruned training graph; the frozen item graph mixes any set of modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_multimodal
from tests.models.test_models import InMemory, fit

from mgrec.data import InteractionData
from mgrec.models.freedom import FREEDOM


def dense_knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """MMRec's get_knn_adj_mat + compute_normalized_laplacian, densely: binary kNN, D^-1/2 K D^-1/2."""
    unit = features / features.norm(dim=1, keepdim=True)
    neighbours = (unit @ unit.T).topk(k, dim=1).indices
    knn = torch.zeros(len(features), len(features)).scatter_(1, neighbours, 1.0)
    inv_sqrt = knn.sum(1).rsqrt()
    return inv_sqrt[:, None] * knn * inv_sqrt[None, :]


def dense_bipartite(interactions: torch.Tensor) -> torch.Tensor:
    """D^-1/2 [[0, R], [R^T, 0]] D^-1/2 for a dense binary R; nodes without edges keep zero rows."""
    n_users, n_items = interactions.shape
    adjacency = torch.zeros(n_users + n_items, n_users + n_items)
    adjacency[:n_users, n_users:] = interactions
    adjacency[n_users:, :n_users] = interactions.T
    degree = adjacency.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


def dense_forward(model: FREEDOM, adjacency: torch.Tensor, item_graph: torch.Tensor) -> tuple:
    ego = torch.cat([model.user_embedding, model.item_embedding])
    layers = [ego]
    for _ in range(model.hparams.n_ui_layers):
        layers.append(adjacency @ layers[-1])
    users, items = torch.stack(layers).mean(0).split([model.n_users, model.n_items])
    h = model.item_embedding
    for _ in range(model.hparams.n_mm_layers):
        h = item_graph @ h
    return users, items + h


def dense_loss(
    model: FREEDOM, batch: tuple, adjacency: torch.Tensor, item_graph: torch.Tensor
) -> torch.Tensor:
    users, pos, neg = batch
    user_final, item_final = dense_forward(model, adjacency, item_graph)
    u = user_final[users]

    def bpr(pos_e: torch.Tensor, neg_e: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid((u * pos_e).sum(1) - (u * neg_e).sum(1)).mean()

    modal = 0.0
    for name in model.features.names:
        projected = model.features[name] @ model.projections[name].weight.T  # MMRec's bias cancels here
        modal = modal + bpr(projected[pos], projected[neg])
    return bpr(item_final[pos], item_final[neg]) + model.hparams.reg_weight * modal


def dense_item_graph(data: InteractionData, weights: dict[str, float], k: int = 10) -> torch.Tensor:
    return sum(weight * dense_knn_graph(data.modalities[name], k) for name, weight in weights.items())


def batch_of(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(next(iter(InMemory(data).train_dataloader())))


def interactions(matrix) -> torch.Tensor:
    return torch.from_numpy(matrix.toarray()).float()


def test_loss_and_gradients_equal_dense_mmrec_formula(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = FREEDOM(tiny_data, reg_weight=0.1)
    batch = batch_of(tiny_data)
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    item_graph = dense_item_graph(tiny_data, {"image": 0.1, "text": 0.9})
    expected = dense_loss(model, batch, dense_bipartite(interactions(tiny_data.train)), item_graph)
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, msg=name)


def test_epoch_hook_prunes_degree_sensitively_and_scores_use_the_full_graph(
    tiny_data: InteractionData,
) -> None:
    torch.manual_seed(0)
    model = FREEDOM(tiny_data, dropout=0.8)
    full = (model.norm_r.to_dense().clone(), model.norm_rt.to_dense().clone())
    model.sample_training_graph()
    first = model.masked_r.to_dense()
    kept = (first > 0).float()
    assert int(kept.sum()) == int(0.2 * tiny_data.train.nnz)
    assert torch.all(interactions(tiny_data.train)[kept > 0] == 1)  # a subset of the training edges
    pruned = dense_bipartite(kept)  # re-normalised on the kept graph
    n_users = tiny_data.n_users
    torch.testing.assert_close(first, pruned[:n_users, n_users:])
    torch.testing.assert_close(model.masked_rt.to_dense(), pruned[n_users:, :n_users])
    # the training loss uses the pruned graph
    batch = batch_of(tiny_data)
    item_graph = dense_item_graph(tiny_data, {"image": 0.1, "text": 0.9})
    torch.testing.assert_close(model.loss(batch), dense_loss(model, batch, pruned, item_graph))
    # edges between popular nodes are dropped most: the kept edges' mean degree product is the lower
    degree_u = interactions(tiny_data.train).sum(1, keepdim=True)
    degree_i = interactions(tiny_data.train).sum(0, keepdim=True)
    products = degree_u * degree_i
    assert products[kept > 0].mean() < products[interactions(tiny_data.train) > 0].mean()
    # a fresh draw every epoch, the full graph untouched and used for scoring
    model.sample_training_graph()
    assert not torch.equal(model.masked_r.to_dense(), first)
    torch.testing.assert_close(model.norm_r.to_dense(), full[0])
    torch.testing.assert_close(model.norm_rt.to_dense(), full[1])
    users = torch.arange(10)
    user_final, item_final = dense_forward(model, dense_bipartite(interactions(tiny_data.train)), item_graph)
    torch.testing.assert_close(model.score(users), user_final[users] @ item_final.T)


def test_no_dropout_trains_on_the_full_graph(tiny_data: InteractionData) -> None:
    model = FREEDOM(tiny_data, dropout=0.0)
    model.sample_training_graph()
    assert model.masked_r is model.norm_r and model.masked_rt is model.norm_rt


def test_trainer_redraws_the_graph_every_epoch(
    monkeypatch: pytest.MonkeyPatch, tiny_data: InteractionData
) -> None:
    drawn: list[np.ndarray] = []
    original = FREEDOM.sample_training_graph

    def recording(self: FREEDOM) -> None:
        original(self)
        drawn.append(self.masked_r.col_indices().numpy().copy())

    monkeypatch.setattr(FREEDOM, "sample_training_graph", recording)
    fit("freedom", "mg", tiny_data, epochs=3)
    assert len(drawn) == 3
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[1], drawn[2])


@pytest.mark.parametrize(
    ("n_modalities", "modality_weights", "expected"),
    [
        (1, None, {"text": 1.0}),
        (2, None, {"image": 0.1, "text": 0.9}),  # MMRec's mm_image_weight = 0.1
        (2, {"image": 1.0, "text": 1.0}, {"image": 0.5, "text": 0.5}),
        (3, None, {"image": 1 / 3, "text": 1 / 3, "audio": 1 / 3}),  # no weight for audio: uniform
    ],
)
def test_item_graph_mixes_any_set_of_modalities(
    n_modalities: int, modality_weights: dict | None, expected: dict[str, float]
) -> None:
    data = tiny_multimodal(n_modalities)
    model = FREEDOM(data, modality_weights=modality_weights)
    assert set(model.projections) == set(data.modalities)
    torch.testing.assert_close(model.item_graph.to_dense(), dense_item_graph(data, expected))
    torch.testing.assert_close(model.item_graph_t.to_dense(), model.item_graph.to_dense().T)


def test_features_are_trainable_and_the_item_graph_stays_frozen(tiny_data: InteractionData) -> None:
    model = FREEDOM(tiny_data)
    assert all(p.requires_grad for _, p in model.features.named_parameters())
    before = model.item_graph.to_dense().clone()
    users = torch.arange(5)
    scores = model.score(users)
    with torch.no_grad():
        model.features["image"].mul_(-1.0)
    torch.testing.assert_close(model.item_graph.to_dense(), before)
    torch.testing.assert_close(model.score(users), scores)  # scores depend on the features only via training
    with torch.no_grad():
        model.item_embedding.add_(0.5)
    assert not torch.allclose(model.score(users), scores)


def test_graph_cache_is_reused(tiny_data: InteractionData, tmp_path) -> None:
    first = FREEDOM(tiny_data, graph_cache_dir=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(name.startswith("freedom-knn-") for name in files)
    second = FREEDOM(tiny_data, graph_cache_dir=str(tmp_path))
    torch.testing.assert_close(second.item_graph.to_dense(), first.item_graph.to_dense())
