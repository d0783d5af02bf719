"""DualGNN: the loss, its gradients and the scores equal a dense, independent re-computation of MMRec's
formulas; the user co-occurrence graph keeps each user's top k and is re-sampled every epoch; any set of
modalities and the optional per-modality edge drop reduce to MMRec's code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from tests.conftest import tiny_multimodal
from tests.models.test_models import InMemory

from mgrec.data import InteractionData
from mgrec.models.dualgnn import DualGNN


def dense_interactions(data: InteractionData) -> torch.Tensor:
    return torch.from_numpy(data.train.toarray()).float()


def dense_base_gcn(interactions: torch.Tensor, aggr: str = "add") -> torch.Tensor:
    """PyG Base_gcn on the symmetric edge list: 'add' scales x_j by deg_i^-1/2 deg_j^-1/2, 'mean' averages."""
    n_users, n_items = interactions.shape
    adjacency = torch.zeros(n_users + n_items, n_users + n_items)
    adjacency[:n_users, n_users:] = interactions
    adjacency[n_users:, :n_users] = interactions.T
    degree = adjacency.sum(1)
    if aggr == "mean":
        return adjacency / degree.clamp_min(1.0)[:, None]
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


def dense_gcn(model: DualGNN, name: str, adjacency: torch.Tensor) -> torch.Tensor:
    """MMRec's GCN.forward: x = normalize([preference; MLP_1(leaky_relu(MLP(features)))]), x + h + h_1."""
    mlp, mlp_1 = model.encoders[name][0], model.encoders[name][2]
    projected = F.linear(
        F.leaky_relu(F.linear(model.features[name], mlp.weight, mlp.bias)), mlp_1.weight, mlp_1.bias
    )
    x = F.normalize(torch.cat([model.preferences[name], projected]))
    h = adjacency @ x
    h_1 = adjacency @ h
    return h + x + h_1


def user_graph_sample(model: DualGNN, features: torch.Tensor) -> torch.Tensor:
    """MMRec's User_Graph_sample: matmul(weights.unsqueeze(1), features[index]).squeeze()."""
    gathered = features[model.user_sample]
    return torch.matmul(model.user_sample_weights.unsqueeze(1), gathered).squeeze(1)


def dense_forward(model: DualGNN, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    reps = [dense_gcn(model, name, adjacency) for name in model.features.names]
    n_users = model.n_users
    if len(reps) == 1:
        user_rep = reps[0][:n_users]
    else:  # the paper's weighted sum (MMRec's in-place alias makes it w0 (v + t) + w1 t)
        stacked = torch.stack([rep[:n_users] for rep in reps], dim=2)  # [U, d, M]
        user_rep = torch.matmul(stacked, model.weight_u).squeeze(2)
    item_rep = sum(rep[n_users:] for rep in reps)
    return user_rep + user_graph_sample(model, user_rep), item_rep


def dense_loss(model: DualGNN, batch: tuple, adjacency: torch.Tensor) -> torch.Tensor:
    users, pos, neg = batch
    user_rep, item_rep = dense_forward(model, adjacency)
    pos_scores = (user_rep[users] * item_rep[pos]).sum(1)
    neg_scores = (user_rep[users] * item_rep[neg]).sum(1)
    loss = -torch.mean(torch.log2(torch.sigmoid(pos_scores - neg_scores)))
    reg = sum((model.preferences[name][users] ** 2).mean() for name in model.features.names)
    if model.weight_u is not None:
        reg = reg + (model.weight_u**2).mean()
    return loss + model.hparams.reg_weight * reg


def batch_of(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(next(iter(InMemory(data).train_dataloader())))


@pytest.mark.parametrize(("n_modalities", "aggr"), [(2, "add"), (1, "add"), (3, "add"), (2, "mean")])
def test_loss_gradients_and_scores_equal_dense_mmrec_formula(n_modalities: int, aggr: str) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = DualGNN(data, reg_weight=0.1, user_knn_k=8, aggr_mode=aggr)
    assert (model.weight_u is None) == (n_modalities == 1)
    if model.weight_u is not None:
        assert model.weight_u.shape == (data.n_users, n_modalities, 1)
    batch = batch_of(data)
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    adjacency = dense_base_gcn(dense_interactions(data), aggr)
    expected = dense_loss(model, batch, adjacency)
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, msg=name)
    users = torch.arange(15)
    with torch.no_grad():
        user_rep, item_rep = dense_forward(model, adjacency)
        torch.testing.assert_close(model.score(users), user_rep[users] @ item_rep.T)


def test_user_graph_is_the_top_k_co_occurrence_neighbours(tiny_data: InteractionData) -> None:
    k = 6
    model = DualGNN(tiny_data, user_knn_k=k)
    interactions = dense_interactions(tiny_data)
    counts = interactions @ interactions.T
    counts.fill_diagonal_(0.0)
    order = torch.sort(-counts, dim=1, stable=True).indices[:, :k]  # strongest first, ties: smaller id
    top = counts.gather(1, order)
    lengths = (top > 0).sum(1)
    torch.testing.assert_close(model.user_lengths, lengths)
    real = torch.arange(k)[None, :] < lengths[:, None]
    assert torch.equal(model.user_neighbours[real], order[real])
    # every user here has k neighbours: the sample is the table, weights the softmax of the counts
    assert bool((lengths == k).all())
    assert torch.equal(model.user_sample, order)
    torch.testing.assert_close(model.user_sample_weights, torch.softmax(top, dim=1))


def test_short_rows_are_padded_and_re_sampled_every_epoch(tiny_data: InteractionData) -> None:
    k = tiny_data.n_users + 20  # more slots than users: every row is padded by random picks
    torch.manual_seed(5)
    model = DualGNN(tiny_data, user_knn_k=k)
    interactions = dense_interactions(tiny_data)
    counts = (interactions @ interactions.T).fill_diagonal_(0.0)
    first = model.user_sample.clone()
    lengths = model.user_lengths
    slots = torch.arange(k)[None, :]
    assert torch.equal(first[slots < lengths[:, None]], model.user_neighbours[slots < lengths[:, None]])
    for user in range(0, tiny_data.n_users, 37):
        padded = first[user, lengths[user] :]
        assert set(padded.tolist()) <= set(model.user_neighbours[user, : lengths[user]].tolist())
        torch.testing.assert_close(
            model.user_sample_weights[user], torch.softmax(counts[user, first[user]], dim=0)
        )
    model.sample_user_graph()
    assert not torch.equal(model.user_sample, first)
    torch.manual_seed(5)
    assert torch.equal(DualGNN(tiny_data, user_knn_k=k).user_sample, first)  # seeded by torch's RNG
    # the sparse user graph follows the new sample, and a state dict carries the sample
    batch = batch_of(tiny_data)
    adjacency = dense_base_gcn(interactions)
    torch.testing.assert_close(model.loss(batch), dense_loss(model, batch, adjacency))
    torch.manual_seed(6)
    other = DualGNN(tiny_data, user_knn_k=k)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.score(torch.arange(10)), model.score(torch.arange(10)))


def test_trainer_re_samples_the_user_graph_every_epoch(
    monkeypatch: pytest.MonkeyPatch, tiny_data: InteractionData
) -> None:
    calls: list[int] = []
    original = DualGNN.sample_user_graph

    def recording(self: DualGNN) -> None:
        original(self)
        calls.append(1)

    monkeypatch.setattr(DualGNN, "sample_user_graph", recording)
    model = DualGNN(tiny_data)
    trainer = Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        limit_train_batches=1,
    )
    trainer.fit(model, train_dataloaders=InMemory(tiny_data).train_dataloader())
    assert len(calls) == 1 + 3  # at construction, then at the start of every epoch


def test_scores_follow_the_current_weights(tiny_data: InteractionData) -> None:
    model = DualGNN(tiny_data)
    users = torch.arange(5)
    before = model.score(users)
    with torch.no_grad():
        model.encoders["text"][2].bias.add_(0.5)
    assert not torch.allclose(before, model.score(users))


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_item_drop_splits_a_random_item_set_between_modalities(n_modalities: int) -> None:
    data = tiny_multimodal(n_modalities)
    shared = DualGNN(data)  # default: MMRec's effective behaviour, one full graph for every modality
    assert set(shared._graph_of.values()) == {"conv_graph"}
    rate = 0.3
    n_drawn, runs = int(data.n_items * rate), 2 * n_modalities - 1
    interactions = dense_interactions(data)
    has_edges = interactions.sum(0) > 0
    torch.manual_seed(2)
    model = DualGNN(data, item_drop_rate=rate)
    dropped_sets = []
    for m, name in enumerate(data.modalities):
        graph = getattr(model, model._graph_of[name]).to_dense()
        isolated = (graph[model.n_users :].abs().sum(1) == 0) & has_edges
        dropped = isolated.nonzero().squeeze(1)
        # image + text: MMRec's first third (image) and last third (text) of the drawn items
        assert len(dropped) == int(n_drawn * (2 * m + 1) / runs) - int(n_drawn * 2 * m / runs) > 0
        kept = interactions.clone()
        kept[:, dropped] = 0.0
        torch.testing.assert_close(graph, dense_base_gcn(kept))  # re-normalised without those items
        dropped_sets.append(set(dropped.tolist()))
    assert sum(map(len, dropped_sets)) == len(set().union(*dropped_sets))  # disjoint
    torch.manual_seed(2)
    again = DualGNN(data, item_drop_rate=rate)
    torch.manual_seed(3)
    other = DualGNN(data, item_drop_rate=rate)
    name = model._graph_of[next(iter(data.modalities))]
    assert torch.equal(getattr(again, name).to_dense(), getattr(model, name).to_dense())
    assert not torch.equal(getattr(other, name).to_dense(), getattr(model, name).to_dense())
    model.loss(batch_of(data)).backward()  # trains, with a graph per modality
    assert all(p.grad is not None for p in model.parameters())


def test_rejects_unknown_aggregation(tiny_data: InteractionData) -> None:
    with pytest.raises(ValueError, match="aggr_mode"):
        DualGNN(tiny_data, aggr_mode="max")


def test_user_graph_is_cached_per_split_and_k(tiny_data: InteractionData, tmp_path) -> None:
    first = DualGNN(tiny_data, user_knn_k=4, graph_cache_dir=str(tmp_path))
    assert [p.name.startswith("user-cooccurrence-") for p in tmp_path.iterdir()] == [True]
    assert torch.equal(
        DualGNN(tiny_data, user_knn_k=4, graph_cache_dir=str(tmp_path)).user_neighbours, first.user_neighbours
    )
    wider = DualGNN(tiny_data, user_knn_k=6, graph_cache_dir=str(tmp_path))
    assert wider.user_neighbours.shape[1] == 6 and len(list(tmp_path.iterdir())) == 2
