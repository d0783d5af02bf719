"""MMGCN: loss, gradients and scores equal a dense re-computation of MMRec's code (PyG message passing
re-done with explicit edge lists); concat / aggregation variants; any set of modalities; the ID embeddings
and user preferences are trained; the config mirrors the constructor."""

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
from mgrec.models.mmgcn import MMGCN

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "mmgcn.yaml"


def mmrec_edge_index(data: InteractionData) -> Tensor:
    """MMRec's pack_edge_index + cat with the reversed edges: [2, 2E], items offset by n_users."""
    coo = data.train.tocoo()
    edges = torch.from_numpy(np.stack([coo.row, coo.col + data.n_users]).astype(np.int64))
    return torch.cat([edges, edges[[1, 0]]], dim=1)


def pyg_conv(x: Tensor, weight: Tensor, edge_index: Tensor, aggr: str) -> Tensor:
    """MMRec's BaseModel: x W, message x_j (source edge_index[0]), aggregated at edge_index[1]."""
    x = x @ weight
    out = torch.zeros_like(x).index_add(0, edge_index[1], x[edge_index[0]])
    if aggr == "mean":  # PyG scatter-mean: sum / count, zero where nothing arrives
        count = torch.bincount(edge_index[1], minlength=len(x)).clamp_min(1)
        out = out / count[:, None].to(x.dtype)
    return out


def mmrec_forward(model: MMGCN, data: InteractionData, concat: bool, aggr: str) -> Tensor:
    """MMRec's MMGCN.forward: the sum of the modality GCNs' outputs over their number."""
    edge_index = mmrec_edge_index(data)
    id_embedding = model.id_embedding
    outputs = []
    for name, features in data.modalities.items():
        features = features.to(id_embedding.dtype)
        temp = model.mlp[name](features) if name == "image" else features  # dim_latent for v_feat only
        x = F.normalize(torch.cat([model.preference[name], temp], dim=0))
        for layer in model.layers[name]:
            h = F.leaky_relu(pyg_conv(x, layer.conv, edge_index, aggr))
            x_hat = F.leaky_relu(layer.linear(x)) + id_embedding
            if concat:
                x = F.leaky_relu(layer.combine(torch.cat([h, x_hat], dim=1)))
            else:
                x = F.leaky_relu(layer.combine(h) + x_hat)
        outputs.append(x)
    return sum(outputs) / len(outputs)


def mmrec_loss(model: MMGCN, data: InteractionData, batch: tuple, concat: bool, aggr: str) -> Tensor:
    users, pos, neg = batch
    n_users = data.n_users
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((pos + n_users, neg + n_users)).t().contiguous().view(-1)
    out = mmrec_forward(model, data, concat, aggr)
    score = torch.sum(out[user_tensor] * out[item_tensor], dim=1).view(-1, 2)
    sign = torch.tensor([[1.0], [-1.0]], dtype=score.dtype)
    # MMRec's -mean(log(sigmoid(.))), as logsigmoid: 'add' aggregation gives scores where sigmoid underflows
    loss = -torch.mean(F.logsigmoid(torch.matmul(score, sign)))
    reg = (model.id_embedding[user_tensor] ** 2 + model.id_embedding[item_tensor] ** 2).mean()
    if "image" in data.modalities:
        reg = reg + (model.preference["image"] ** 2).mean()
    return loss + model.hparams.reg_weight * reg


def batch_of(data: InteractionData) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(next(iter(InMemory(data).train_dataloader())))


@pytest.mark.parametrize(
    ("n_modalities", "concat", "aggr", "n_layers"),
    [
        (1, True, "mean", 3),
        (2, True, "mean", 3),
        (3, True, "mean", 3),
        (2, False, "mean", 2),
        (2, True, "add", 2),
    ],
)
def test_loss_gradients_and_scores_equal_dense_mmrec(
    n_modalities: int, concat: bool, aggr: str, n_layers: int
) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = MMGCN(data, n_layers=n_layers, reg_weight=0.1, concat=concat, aggr=aggr).double()
    batch = batch_of(data)
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = mmrec_loss(model, data, batch, concat, aggr)
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, msg=name)
    users = torch.arange(17)
    with torch.no_grad():
        out = mmrec_forward(model, data, concat, aggr)
        torch.testing.assert_close(model.score(users), out[users] @ out[data.n_users :].T)


def test_defaults_are_mmrecs_network_and_the_config_mirrors_them(tiny_data: InteractionData) -> None:
    model = MMGCN(tiny_data)
    assert model.hparams.concat and model.hparams.aggr == "mean"  # MMRec's effective concate / aggr_mode
    assert all(len(layers) == 3 for layers in model.layers.values())  # MMRec's 3 hard-coded layers
    assert model.preference["image"].shape == (tiny_data.n_users, 256)  # dim_latent=256 for image
    assert model.preference["text"].shape == (tiny_data.n_users, tiny_data.modalities["text"].shape[1])
    assert set(model.mlp) == {"image"}
    config = OmegaConf.to_container(OmegaConf.load(CONFIG))
    for name, parameter in inspect.signature(MMGCN.__init__).parameters.items():
        if name in config:
            default = parameter.default
            expected = {"image": 256} if name == "latent_dims" else default
            assert config[name] == (list(expected) if isinstance(expected, tuple) else expected), name
    # mean aggregation: every row of the user-item graph with edges averages its neighbours
    dense = model.graph.to_dense()
    degree = (dense > 0).sum(1)
    torch.testing.assert_close(dense.sum(1)[degree > 0], torch.ones(int((degree > 0).sum())))


def test_any_set_of_modalities_gets_one_stack_each() -> None:
    data = tiny_multimodal(3)
    model = MMGCN(data, latent_dims={"audio": 5}, preference_reg_modalities=["audio"])
    assert set(model.layers) == set(model.preference) == {"image", "text", "audio"}
    assert set(model.mlp) == {"audio"} and model.preference["audio"].shape[1] == 5
    assert model.preference["image"].shape[1] == data.modalities["image"].shape[1]
    # only audio's preference table is in the L2 term: the rows are L2-normalised before use, so scaling a
    # preference table changes the loss by its L2 term alone
    model.hparams.reg_weight = 1.0
    batch = batch_of(data)
    before = model.loss(batch)
    with torch.no_grad():
        model.preference["image"].mul_(2.0)
    torch.testing.assert_close(model.loss(batch), before)
    with torch.no_grad():
        model.preference["audio"].mul_(2.0)
    expected = before + 3.0 * model.preference["audio"].square().mean() / 4.0
    torch.testing.assert_close(model.loss(batch), expected)
    with pytest.raises(ValueError, match="aggr"):
        MMGCN(data, aggr="max")


def test_id_embeddings_and_preferences_are_trained(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = MMGCN(tiny_data)
    trained = {name for name, _ in model.named_parameters()}
    assert {"id_embedding", "preference.image", "preference.text"} <= trained
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(batch_of(tiny_data)).backward()
    optimizer.step()
    for name in ("id_embedding", "preference.image", "preference.text"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name


def test_scores_follow_the_current_weights(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = MMGCN(tiny_data)
    users = torch.arange(5)
    scores = model.score(users)
    with torch.no_grad():
        model.preference["text"].add_(0.3)
    assert not torch.allclose(scores, model.score(users))
