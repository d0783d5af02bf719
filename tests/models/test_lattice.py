"""LATTICE: the loss and its gradients equal a dense, independent re-computation of MMRec's formulas (for
one, two and three modalities); the item graph is rebuilt with gradient by the first batch of an epoch
(both passes under Mirror Gradient) and reused detached afterwards; scores rebuild it from current weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_multimodal
from tests.models.test_models import InMemory, fit

from mgrec.data import InteractionData
from mgrec.models.lattice import LATTICE


def dense_knn(features: torch.Tensor, k: int) -> torch.Tensor:
    """MMRec's build_sim + build_knn_neighbourhood: cosine similarities, the k largest of each row kept."""
    unit = features / features.norm(dim=1, keepdim=True)
    similarity = unit @ unit.T
    values, neighbours = similarity.topk(k, dim=1)
    return torch.zeros_like(similarity).scatter(1, neighbours, values)


def laplacian(adjacency: torch.Tensor) -> torch.Tensor:
    """MMRec's compute_normalized_laplacian: D^-1/2 A D^-1/2 with D the row sums."""
    inv_sqrt = adjacency.sum(1).pow(-0.5)
    inv_sqrt = torch.where(torch.isinf(inv_sqrt), torch.zeros_like(inv_sqrt), inv_sqrt)
    return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


def dense_user_item_graph(data: InteractionData) -> torch.Tensor:
    """MMRec's LATTICE get_adj_mat: D^-1 (A + I) with A = [[0, R], [R^T, 0]]."""
    n_users, n_items = data.n_users, data.n_items
    interactions = torch.from_numpy(data.train.toarray()).float()
    adjacency = torch.eye(n_users + n_items)
    adjacency[:n_users, n_users:] += interactions
    adjacency[n_users:, :n_users] += interactions.T
    return adjacency / adjacency.sum(1, keepdim=True)


def dense_item_graph(model: LATTICE, data: InteractionData) -> torch.Tensor:
    k, names = model.hparams.knn_k, model.features.names
    learned = [dense_knn(model.projections[name](model.features[name]), k) for name in names]
    original = [laplacian(dense_knn(data.modalities[name], k)) for name in names]
    if len(names) == 1:  # MMRec's single-modality code has no modality weights
        learned_adj, original_adj = learned[0], original[0]
    else:
        weight = torch.softmax(model.modal_weight, dim=0)
        learned_adj = sum(w * adj for w, adj in zip(weight, learned, strict=True))
        original_adj = sum(w * adj for w, adj in zip(weight, original, strict=True))
    lam = model.hparams.lambda_coeff
    return (1 - lam) * laplacian(learned_adj) + lam * original_adj


def dense_forward(model: LATTICE, item_graph: torch.Tensor, user_item: torch.Tensor) -> tuple:
    h = model.item_embedding
    for _ in range(model.hparams.n_layers):
        h = item_graph @ h
    layers = [torch.cat([model.user_embedding, model.item_embedding])]
    for _ in range(model.hparams.n_ui_layers):
        layers.append(user_item @ layers[-1])
    users, items = torch.stack(layers).mean(0).split([model.n_users, model.n_items])
    return users, items + F.normalize(h, p=2, dim=1)


def dense_loss(
    model: LATTICE, batch: tuple, item_graph: torch.Tensor, user_item: torch.Tensor
) -> torch.Tensor:
    users, pos, neg = batch
    user_final, item_final = dense_forward(model, item_graph, user_item)
    u, i, j = user_final[users], item_final[pos], item_final[neg]
    regulariser = (0.5 * (u**2).sum() + 0.5 * (i**2).sum() + 0.5 * (j**2).sum()) / len(users)
    mf = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    return mf + model.hparams.reg_weight * regulariser


def batches(data: InteractionData, n: int = 2) -> list[tuple]:
    loader = iter(InMemory(data).train_dataloader())
    return [tuple(next(loader)) for _ in range(n)]


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_loss_and_gradients_equal_dense_mmrec_formula(n_modalities: int) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = LATTICE(data, reg_weight=0.1)
    with torch.no_grad():  # unequal modality weights, so that the softmax mixing matters
        model.modal_weight.copy_(torch.linspace(0.0, 1.0, n_modalities))
    batch = batches(data, 1)[0]
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = dense_loss(model, batch, dense_item_graph(model, data), dense_user_item_graph(data))
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    for name, parameter in model.named_parameters():
        if n_modalities == 1 and name == "modal_weight":  # softmax of one entry: constant 1
            assert parameter.grad is None or parameter.grad.abs().sum() == 0
            continue
        torch.testing.assert_close(got[name], parameter.grad, msg=name)
        assert got[name].abs().sum() > 0, name


def projection_grad(model: LATTICE) -> float:
    return sum(float(p.grad.abs().sum()) for p in model.projections.parameters() if p.grad is not None)


def test_first_batch_builds_the_graph_with_gradient_later_batches_reuse_it(
    tiny_data: InteractionData,
) -> None:
    torch.manual_seed(0)
    model = LATTICE(tiny_data)
    first, second = batches(tiny_data)
    model.loss(first).backward()
    assert projection_grad(model) > 0
    model.zero_grad()
    model.loss(first).backward()  # the mirror pass of the same batch: built with gradient again
    assert projection_grad(model) > 0
    model.zero_grad()
    loss = model.loss(second)
    loss.backward()
    assert projection_grad(model) == 0  # detached graph
    user_item = dense_user_item_graph(tiny_data)
    built = dense_item_graph(model, tiny_data).detach()
    users = torch.arange(10)
    scores = model.score(users)
    with torch.no_grad():  # change the weights the graph is built from
        for projection in model.projections.values():
            projection.weight.mul_(-1.0).add_(0.3)
        model.modal_weight.add_(torch.tensor([1.0, -1.0]))
    # later batches of the epoch keep the graph built by its first batch ...
    torch.testing.assert_close(model.loss(second), dense_loss(model, second, built, user_item))
    # ... scores rebuild it from the current weights ...
    current = dense_item_graph(model, tiny_data).detach()
    assert not torch.allclose(current, built)
    user_final, item_final = dense_forward(model, current, user_item)
    torch.testing.assert_close(model.score(users), user_final[users] @ item_final.T)
    assert not torch.allclose(model.score(users), scores)
    # ... and so does the first batch of the next epoch
    model.refresh_item_graph()
    torch.testing.assert_close(model.loss(second), dense_loss(model, second, current, user_item))


@pytest.mark.parametrize(("optimizer", "builds_per_epoch"), [("adam", 1), ("mg", 2)])
def test_trainer_rebuilds_the_graph_at_every_epoch_start(
    monkeypatch: pytest.MonkeyPatch, tiny_data: InteractionData, optimizer: str, builds_per_epoch: int
) -> None:
    with_gradient: list[int] = []
    original = LATTICE.item_graph

    def counting(self: LATTICE):
        if torch.is_grad_enabled():
            with_gradient.append(self.trainer.current_epoch)
        return original(self)

    monkeypatch.setattr(LATTICE, "item_graph", counting)
    fit("lattice", optimizer, tiny_data, epochs=2)
    assert with_gradient == [0] * builds_per_epoch + [1] * builds_per_epoch


def test_learned_graph_is_an_edge_list_and_detached_reuse_is_the_same_operator(
    tiny_data: InteractionData,
) -> None:
    torch.manual_seed(0)
    model = LATTICE(tiny_data, knn_k=5)
    (rows, cols, values), weight = model.item_graph()
    n_edges = len(tiny_data.modalities) * tiny_data.n_items * 5
    assert rows.shape == cols.shape == values.shape == (n_edges,) and values.requires_grad
    torch.testing.assert_close(weight, torch.softmax(model.modal_weight, dim=0))
    x = torch.randn(tiny_data.n_items, 4)
    dense = (1 - model.hparams.lambda_coeff) * torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values.detach(), (tiny_data.n_items,) * 2
    ).to_dense()
    for m, w in enumerate(weight.detach()):
        dense += model.hparams.lambda_coeff * w * getattr(model, f"fixed_graph_{m}").to_dense()
    torch.testing.assert_close(model.item_spmm((rows, cols, values), weight)(x), dense @ x)
    torch.testing.assert_close(model.item_spmm((rows, cols, values), weight, detach=True)(x), dense @ x)


def test_data_features_stay_untouched_and_the_fixed_graph_is_cached(
    tiny_data: InteractionData, tmp_path
) -> None:
    before = {name: f.clone() for name, f in tiny_data.modalities.items()}
    model = LATTICE(tiny_data, graph_cache_dir=str(tmp_path))
    with torch.no_grad():
        model.features["image"].add_(1.0)
    for name, features in tiny_data.modalities.items():
        torch.testing.assert_close(features, before[name])
    assert len(list(tmp_path.glob("lattice-knn-*.npz"))) == len(tiny_data.modalities)
    reloaded = LATTICE(tiny_data, graph_cache_dir=str(tmp_path))
    for m in range(len(tiny_data.modalities)):
        torch.testing.assert_close(
            getattr(reloaded, f"fixed_graph_{m}").to_dense(), getattr(model, f"fixed_graph_{m}").to_dense()
        )
