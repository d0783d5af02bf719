"""DRAGON: the loss, its gradients and the scores equal a dense, independent re-computation of MMRec's
formulas (its 'cat' construction); the frozen item graph mixes any set of modalities; the user graph is
re-sampled every epoch; graphs are cached."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from tests.conftest import tiny_multimodal
from tests.models.test_dualgnn import (
    batch_of,
    dense_base_gcn,
    dense_gcn,
    dense_interactions,
    user_graph_sample,
)
from tests.models.test_freedom import dense_knn_graph
from tests.models.test_models import InMemory

from mgrec.data import InteractionData
from mgrec.models.dragon import DRAGON


def dense_item_graph(data: InteractionData, weights: dict[str, float], k: int = 10) -> torch.Tensor:
    return sum(weight * dense_knn_graph(data.modalities[name], k) for name, weight in weights.items())


def dense_forward(
    model: DRAGON, adjacency: torch.Tensor, item_graph: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    reps = [dense_gcn(model, name, adjacency) for name in model.features.names]
    n_users = model.n_users
    representation = torch.cat(reps, dim=1)
    if len(reps) == 1:
        user_rep = reps[0][:n_users]
    else:  # MMRec's 'cat': cat(v, t) per user, scaled by weight_u^T, then the modality slices side by side
        user_rep = torch.stack([rep[:n_users] for rep in reps], dim=2)  # [U, d, M]
        user_rep = model.weight_u.transpose(1, 2) * user_rep
        user_rep = torch.cat([user_rep[:, :, m] for m in range(len(reps))], dim=1)
    item_rep = representation[n_users:]
    h = item_rep
    for _ in range(model.hparams.n_mm_layers):
        h = item_graph @ h
    return user_rep + user_graph_sample(model, user_rep), item_rep + h


def dense_loss(
    model: DRAGON, batch: tuple, adjacency: torch.Tensor, item_graph: torch.Tensor
) -> torch.Tensor:
    users, pos, neg = batch
    user_rep, item_rep = dense_forward(model, adjacency, item_graph)
    pos_scores = (user_rep[users] * item_rep[pos]).sum(1)
    neg_scores = (user_rep[users] * item_rep[neg]).sum(1)
    loss = -torch.mean(torch.log2(torch.sigmoid(pos_scores - neg_scores)))
    reg = sum((model.preferences[name][users] ** 2).mean() for name in model.features.names)
    if model.weight_u is not None:
        reg = reg + (model.weight_u**2).mean()
    return loss + model.hparams.reg_weight * reg


MIXES = {
    1: {"text": 1.0},
    2: {"image": 0.1, "text": 0.9},  # MMRec's mm_image_weight = 0.1
    3: {"image": 1 / 3, "text": 1 / 3, "audio": 1 / 3},  # no weight for audio: uniform
}


@pytest.mark.parametrize(
    ("n_modalities", "aggr", "n_mm_layers"), [(2, "add", 1), (1, "add", 1), (3, "add", 2), (2, "mean", 1)]
)
def test_loss_gradients_and_scores_equal_dense_mmrec_formula(
    n_modalities: int, aggr: str, n_mm_layers: int
) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = DRAGON(data, reg_weight=0.1, user_knn_k=8, aggr_mode=aggr, n_mm_layers=n_mm_layers)
    assert (model.weight_u is None) == (n_modalities == 1)
    batch = batch_of(data)
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    adjacency = dense_base_gcn(dense_interactions(data), aggr)
    item_graph = dense_item_graph(data, MIXES[n_modalities])
    torch.testing.assert_close(model.item_graph.to_dense(), item_graph)
    torch.testing.assert_close(model.item_graph_t.to_dense(), item_graph.T)
    expected = dense_loss(model, batch, adjacency, item_graph)
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, msg=name)
    users = torch.arange(15)
    with torch.no_grad():
        user_rep, item_rep = dense_forward(model, adjacency, item_graph)
        assert user_rep.shape[1] == n_modalities * model.hparams.embedding_size
        torch.testing.assert_close(model.score(users), user_rep[users] @ item_rep.T)


def test_modality_weights_mix_the_item_graph(tiny_data: InteractionData) -> None:
    model = DRAGON(tiny_data, modality_weights={"image": 1.0, "text": 1.0})
    expected = dense_item_graph(tiny_data, {"image": 0.5, "text": 0.5})
    torch.testing.assert_close(model.item_graph.to_dense(), expected)


def test_item_graph_is_frozen_and_scores_follow_the_current_weights(tiny_data: InteractionData) -> None:
    model = DRAGON(tiny_data)
    assert not list(model.features.parameters())  # MMRec trains on the fixed v_feat / t_feat
    before = model.item_graph.to_dense().clone()
    users = torch.arange(5)
    scores = model.score(users)
    with torch.no_grad():
        model.encoders["image"][2].bias.add_(0.5)
    torch.testing.assert_close(model.item_graph.to_dense(), before)
    assert not torch.allclose(model.score(users), scores)


def test_trainer_re_samples_the_user_graph_every_epoch(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = DRAGON(tiny_data, user_knn_k=tiny_data.n_users + 20)  # every row padded by random picks
    samples = [model.user_sample.clone()]

    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        limit_train_batches=1,
    )
    original = model.on_train_epoch_start

    def recording() -> None:
        original()
        samples.append(model.user_sample.clone())

    model.on_train_epoch_start = recording
    trainer.fit(model, train_dataloaders=InMemory(tiny_data).train_dataloader())
    assert len(samples) == 3
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])


def test_graphs_are_cached(tiny_data: InteractionData, tmp_path) -> None:
    first = DRAGON(tiny_data, graph_cache_dir=str(tmp_path))
    files = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir())
    assert files == ["freedom-knn", "freedom-knn", "user-cooccurrence"]  # FREEDOM's kNN graph, shared
    second = DRAGON(tiny_data, graph_cache_dir=str(tmp_path))
    torch.testing.assert_close(second.item_graph.to_dense(), first.item_graph.to_dense())
    assert torch.equal(second.user_neighbours, first.user_neighbours)
