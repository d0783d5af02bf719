"""GRCN: loss, gradients and scores equal a dense re-computation of MMRec's code (its PyG GATConv and
SAGEConv re-done with explicit edge lists); MMRec's routing is a no-op, the paper's one an option; any set
of modalities; the config mirrors the constructor."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tests.conftest import tiny_multimodal
from tests.models.test_models import InMemory
from torch import Tensor

from mgrec.data import InteractionData
from mgrec.models.grcn import GRCN

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "grcn.yaml"


def mmrec_edge_index(data: InteractionData) -> Tensor:
    """MMRec's pack_edge_index: [2, E] user -> item (items offset by n_users), not symmetrised."""
    coo = data.train.tocoo()
    return torch.from_numpy(np.stack([coo.row, coo.col + data.n_users]).astype(np.int64))


def gat_conv(x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """MMRec's GATConv: alpha = softmax over the edges into the same target of x_i . x_j, message alpha x_j,
    summed at the target edge_index[1]; the softmax via a dense [n, edges] membership matrix."""
    source, target = edge_index
    alpha = (x[target] * x[source]).sum(-1)
    membership = F.one_hot(target, len(x)).T.to(x.dtype)  # rows are nodes
    exp = alpha.exp()  # |alpha| <= 1 here (normalised rows): no max shift needed
    alpha = exp / (membership @ exp)[target]
    return membership @ (x[source] * alpha[:, None]), alpha


def mmrec_cgcn(model: GRCN, name: str, features: Tensor, edge_index: Tensor, route: Tensor) -> tuple:
    """MMRec's CGCN.forward (has_norm, no activation); the routing runs on `route` (MMRec: edge_index)."""
    n_users = model.n_users
    features = F.normalize(F.leaky_relu(model.mlp[name](features)))
    preference = F.normalize(model.preference[name])
    for _ in range(model.hparams.n_layers):
        x_hat, _ = gat_conv(torch.cat((preference, features)), route)
        preference = F.normalize(preference + x_hat[:n_users])
    x = torch.cat((preference, features))
    x_hat, alpha = gat_conv(x, torch.cat((edge_index, edge_index[[1, 0]]), dim=1))
    return x + x_hat, alpha.view(-1, 1)


def mmrec_forward(model: GRCN, data: InteractionData, paper_routing: bool = False) -> Tensor:
    edge_index = mmrec_edge_index(data)
    route = edge_index[[1, 0]] if paper_routing else edge_index
    reps, weights = [], []
    for name, features in data.modalities.items():
        rep, weight = mmrec_cgcn(model, name, features.to(model.id_embedding.dtype), edge_index, route)
        reps.append(rep)
        weights.append(weight)
    weight = torch.cat(weights, dim=1)
    confidence = torch.cat((model.confidence[edge_index[0]], model.confidence[edge_index[1]]), dim=0)
    weight = torch.relu(torch.max(weight * confidence, dim=1).values.view(-1, 1))  # confid + pruning
    # EGCN: SAGEConv with aggr 'add', message x_j * weight, on the symmetrised edges
    sym = torch.cat((edge_index, edge_index[[1, 0]]), dim=1)
    x = F.normalize(model.id_embedding)

    def sage(h: Tensor) -> Tensor:
        return torch.zeros_like(h).index_add(0, sym[1], h[sym[0]] * weight)

    x_hat_1 = sage(x)
    x_hat_2 = sage(x_hat_1)
    return torch.cat([x + x_hat_1 + x_hat_2, *reps], dim=1)


def mmrec_loss(model: GRCN, data: InteractionData, batch: tuple, paper_routing: bool = False) -> Tensor:
    users, pos, neg = batch
    n_users = data.n_users
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((pos + n_users, neg + n_users)).t().contiguous().view(-1)
    out = mmrec_forward(model, data, paper_routing)
    score = torch.sum(out[user_tensor] * out[item_tensor], dim=1).view(-1, 2)
    sign = torch.tensor([[1.0], [-1.0]], dtype=score.dtype)
    loss = -torch.mean(F.logsigmoid(torch.matmul(score, sign)))  # MMRec's -mean(log(sigmoid(.)))
    id_embedding = model.id_embedding
    reg_embedding = (id_embedding[user_tensor] ** 2 + id_embedding[item_tensor] ** 2).mean()
    if "image" in data.modalities:
        reg_embedding = reg_embedding + (model.preference["image"] ** 2).mean()
    reg_content = sum((model.preference[name][user_tensor] ** 2).mean() for name in data.modalities)
    return loss + model.hparams.reg_weight * (reg_embedding + reg_content)


def batch_of(data: InteractionData) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(next(iter(InMemory(data).train_dataloader())))


@pytest.mark.parametrize(("n_modalities", "user_routing"), [(1, False), (2, False), (3, False), (2, True)])
def test_loss_gradients_and_scores_equal_dense_mmrec(n_modalities: int, user_routing: bool) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = GRCN(data, reg_weight=0.1, user_routing=user_routing).double()
    batch = batch_of(data)
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = mmrec_loss(model, data, batch, paper_routing=user_routing)
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, msg=name)
    users = torch.arange(17)
    with torch.no_grad():
        out = mmrec_forward(model, data, paper_routing=user_routing)
        torch.testing.assert_close(model.score(users), out[users] @ out[data.n_users :].T)
    expected_dim = model.hparams.embedding_size + n_modalities * model.hparams.latent_embedding
    assert out.shape[1] == expected_dim


def test_mmrecs_routing_changes_nothing_and_the_papers_does(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = GRCN(tiny_data, user_routing=False).double()
    # MMRec's GATConv on the user -> item edges sends every message to an item
    x = torch.cat([F.normalize(model.preference["text"]), torch.randn(tiny_data.n_items, 64).double()])
    x_hat, _ = gat_conv(x, mmrec_edge_index(tiny_data))
    assert torch.all(x_hat[: tiny_data.n_users] == 0) and torch.any(x_hat[tiny_data.n_users :] != 0)
    users = torch.arange(10)
    scores = model.score(users)
    model.hparams.n_layers = 0
    torch.testing.assert_close(model.score(users), scores)  # n_layers has no effect without user routing
    model.hparams.user_routing = True
    torch.testing.assert_close(model.score(users), scores)  # zero iterations of the paper's routing
    model.hparams.n_layers = 3
    assert not torch.allclose(model.score(users), scores)


def test_refined_graph_weights_are_pruned(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = GRCN(tiny_data)
    n_users, n_edges = tiny_data.n_users, tiny_data.train.nnz
    source, target = model.source, model.target
    assert len(source) == 2 * n_edges
    assert torch.equal(source[:n_edges], target[n_edges:]) and torch.equal(target[:n_edges], source[n_edges:])
    assert torch.all(source[:n_edges] < n_users) and torch.all(target[:n_edges] >= n_users)
    dense = torch.zeros(n_users, tiny_data.n_items)
    dense[source[:n_edges], target[:n_edges] - n_users] = 1.0
    torch.testing.assert_close(dense, torch.from_numpy(tiny_data.train.toarray()).float())
    # an edge whose source's confidences are all negative gets weight 0: the ID rows fed only by such
    # edges keep their own normalised embedding
    with torch.no_grad():
        model.confidence.fill_(-1.0)
    out = model.propagate()
    ids = F.normalize(model.id_embedding)
    torch.testing.assert_close(out[:, : model.hparams.embedding_size], ids)


def test_defaults_and_config_mirror_mmrec(tiny_data: InteractionData) -> None:
    model = GRCN(tiny_data)
    assert model.confidence.shape == (tiny_data.n_users + tiny_data.n_items, 2)
    assert {name for name, _ in model.named_parameters()} >= {"id_embedding", "preference.image"}
    config = OmegaConf.to_container(OmegaConf.load(CONFIG))
    for name, parameter in inspect.signature(GRCN.__init__).parameters.items():
        if name in config:
            default = parameter.default
            assert config[name] == (list(default) if isinstance(default, tuple) else default), name


def test_scores_follow_the_current_weights(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = GRCN(tiny_data)
    users = torch.arange(5)
    scores = model.score(users)
    with torch.no_grad():
        model.confidence.add_(0.5)
    assert not torch.allclose(scores, model.score(users))
