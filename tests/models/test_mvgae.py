"""MVGAE: the loss, its gradients and the scores equal a dense, independent re-computation of MMRec's
formulas (PyG mean aggregation with self loops, two-stage product of experts, hardest in-batch negative,
KL); sampling follows torch's global RNG; any set of modalities; the KL weight is not MG's beta."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tests.conftest import tiny_multimodal
from tests.models.test_models import InMemory

from mgrec.data import InteractionData
from mgrec.models.mvgae import MVGAE, product_of_experts
from mgrec.optim import MirrorGradient
from mgrec.train import build_model


def batch_of(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(next(iter(InMemory(data, batch_size=64).train_dataloader())))


def pyg_mean_matrix(data: InteractionData) -> torch.Tensor:
    """MMRec's edge_index (user -> item + n_users and back), remove_self_loops, add_self_loops, then
    PyG's aggr='mean' at the target node, as a dense [N, N] matrix: out = M @ messages."""
    coo = data.train.tocoo()
    rows = torch.as_tensor(coo.row, dtype=torch.long)
    cols = torch.as_tensor(coo.col, dtype=torch.long) + data.n_users
    source, target = torch.cat([rows, cols]), torch.cat([cols, rows])
    keep = source != target
    n = data.n_users + data.n_items
    loops = torch.arange(n)
    source, target = torch.cat([source[keep], loops]), torch.cat([target[keep], loops])
    counts = torch.zeros(n, n, dtype=torch.float64).index_put_(
        (target, source), torch.ones(len(source), dtype=torch.float64), accumulate=True
    )
    return counts / counts.sum(1, keepdim=True)


def base_model(conv, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """MMRec's BaseModel.forward + update (dropout p = 0 here)."""
    return F.normalize(mean @ (x @ conv.weight) + conv.bias, p=2, dim=-1)


def mmrec_gcn(expert, item_input: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MMRec's GCN.forward with concate=False: conv_embed_1 / g_layer1 (and conv_embed_2 / g_layer2 with
    num_layer 2), then the heads conv_embed_4 / g_layer4 / linear_layer4 and 5."""
    x = F.normalize(torch.cat((expert.preference, expert.mlp(item_input)), dim=0))
    for conv, gate in zip(expert.convs, expert.gates, strict=True):
        h = F.leaky_relu(base_model(conv, x, mean))
        x = F.leaky_relu(gate(h))
    mu = F.leaky_relu(base_model(expert.head_convs[0], x, mean))
    mu = expert.head_outs[0](mu) + F.leaky_relu(expert.head_skips[0](x))
    logvar = F.leaky_relu(base_model(expert.head_convs[1], x, mean))
    logvar = expert.head_outs[1](logvar) + F.leaky_relu(expert.head_skips[1](x))
    return mu, logvar


def mmrec_poe(mu: torch.Tensor, logvar: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    var = torch.exp(logvar) + eps
    precision = 1.0 / var
    return torch.sum(mu * precision, dim=0) / torch.sum(precision, dim=0), torch.log(
        1.0 / torch.sum(precision, dim=0)
    )


def mmrec_loss(model: MVGAE, batch: tuple, noise: float) -> torch.Tensor:
    """MMRec's calculate_loss generalised to M modalities, every sample's N(0, 1) draw set to `noise`; item
    ids offset by n_users (MMRec's indexing defect fixed)."""
    mean = pyg_mean_matrix(model.data).to(model.collaborative.dtype)
    names = model.features.names
    experts = {name: mmrec_gcn(model.experts[name], model.features[name], mean) for name in names}
    c_mu, c_logvar = mmrec_gcn(model.experts["collaborative"], model.collaborative, mean)
    pd_mu, pd_logvar = mmrec_poe(
        torch.stack([experts[n][0] for n in names]), torch.stack([experts[n][1] for n in names])
    )
    pd_mu, pd_logvar = mmrec_poe(torch.stack([pd_mu, c_mu]), torch.stack([pd_logvar, c_logvar]))
    user, pos_items, neg_items = batch
    pos_edge_index = torch.stack([user, pos_items + model.n_users])
    neg_nodes = neg_items + model.n_users

    def reparametrize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        logvar = logvar.clamp(max=10)
        return mu + torch.full_like(logvar, noise) * 0.1 * torch.exp(logvar.mul(0.5))

    def recon_loss(z: torch.Tensor) -> torch.Tensor:
        if model.hparams.sigmoid_embeddings:  # MMRec's 'amazon' branch
            z = torch.sigmoid(z)
        pos_scores = torch.sigmoid(torch.sum(z[pos_edge_index[0]] * z[pos_edge_index[1]], dim=1))
        if model.hparams.hardest_negative:  # dot_product_decode_neg
            re_users = user.unsqueeze(1).repeat(1, neg_nodes.size(0))
            neg_scores = torch.sigmoid(torch.max(torch.sum(z[re_users] * z[neg_nodes], -1), dim=-1).values)
        else:  # dot_product_decode on (user, own negative)
            neg_scores = torch.sigmoid(torch.sum(z[user] * z[neg_nodes], dim=1))
        return -torch.sum(torch.log2(torch.sigmoid(pos_scores - neg_scores)))

    def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        logvar = logvar.clamp(max=10)
        return -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))

    beta = model.hparams.kl_weight
    pairs = [(pd_mu, pd_logvar), *experts.values(), (c_mu, c_logvar)]
    return sum(recon_loss(reparametrize(mu, lv)) + beta * kl_loss(mu, lv) for mu, lv in pairs)


def constant_noise(value: float) -> Callable[..., torch.Tensor]:
    return lambda tensor, **kwargs: torch.full_like(tensor, value)


@pytest.mark.parametrize(
    ("n_modalities", "options"),
    [
        (1, {}),
        (2, {}),
        (3, {}),
        (2, {"n_layers": 2}),
        (2, {"sigmoid_embeddings": True}),
        (2, {"hardest_negative": False, "sigmoid_embeddings": True}),
    ],
)
def test_loss_and_gradients_equal_dense_mmrec_formula(
    n_modalities: int, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = MVGAE(data, dropout=0.0, kl_weight=0.3, **options).double()
    batch = batch_of(data)
    monkeypatch.setattr(torch, "randn_like", constant_noise(0.7))
    model.loss(batch).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = mmrec_loss(model, batch, noise=0.7)
    expected.backward()
    torch.testing.assert_close(model.loss(batch), expected)
    # the sparse graph's values are float32 (1 / degree rounded), the dense reference's exact: rtol 1e-5
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, rtol=1e-5, atol=1e-7, msg=name)
    # evaluation mode: no sampling (MMRec's reparametrize returns mu)
    torch.testing.assert_close(model.eval().loss(batch), mmrec_loss(model, batch, noise=0.0))


def test_scores_are_the_fused_means_from_current_weights() -> None:
    data = tiny_multimodal(2)
    torch.manual_seed(0)
    model = MVGAE(data, sigmoid_embeddings=True).double()  # dropout on, training mode: scoring uses neither
    mean = pyg_mean_matrix(data)
    (v_mu, v_lv), (t_mu, t_lv), (c_mu, c_lv) = (
        mmrec_gcn(model.experts[name], item_input, mean)
        for name, item_input in [
            ("image", model.features["image"]),
            ("text", model.features["text"]),
            ("collaborative", model.collaborative),
        ]
    )
    pd_mu, pd_lv = mmrec_poe(torch.stack([v_mu, t_mu]), torch.stack([v_lv, t_lv]))
    pd_mu, _ = mmrec_poe(torch.stack([pd_mu, c_mu]), torch.stack([pd_lv, c_lv]))
    result_embed = torch.sigmoid(pd_mu)
    users = torch.arange(7)
    expected = result_embed[users] @ result_embed[data.n_users :].T
    torch.testing.assert_close(model.score(users), expected)
    with torch.no_grad():
        model.experts["text"].mlp.bias.add_(0.5)
    assert not torch.allclose(model.score(users), expected)


def test_mean_graph_is_pyg_mean_aggregation_with_self_loops(tiny_data: InteractionData) -> None:
    model = MVGAE(tiny_data)
    torch.testing.assert_close(model.mean_graph.to_dense().double(), pyg_mean_matrix(tiny_data))
    torch.testing.assert_close(model.mean_graph_t.to_dense(), model.mean_graph.to_dense().T)


def test_sampling_follows_the_global_rng_one_draw_per_distinct_node(
    tiny_data: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = MVGAE(tiny_data, dropout=0.0, sigmoid_embeddings=False)  # no saturation at init
    batch = batch_of(tiny_data)
    torch.manual_seed(1)
    first = model.loss(batch)
    torch.manual_seed(1)
    assert torch.equal(model.loss(batch), first)
    torch.manual_seed(2)
    assert not torch.equal(model.loss(batch), first)
    shapes = []
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: shapes.append(t.shape) or torch.zeros_like(t))
    model.loss(batch)
    users, pos, neg = batch
    n_nodes = len(torch.unique(torch.cat([users, pos + model.n_users, neg + model.n_users])))
    assert shapes == [torch.Size([len(tiny_data.modalities) + 2, n_nodes, model.hparams.embedding_size])]


def test_single_modality_product_reduces_to_its_expert() -> None:
    data = tiny_multimodal(1)
    torch.manual_seed(0)
    model = MVGAE(data).double()
    mu, logvar = model.encode(dropout=False)
    assert mu.shape[0] == 2  # text, collaborative
    fused_mu, fused_logvar = model.fuse(mu, logvar)
    text_logvar = torch.log(logvar[0].exp() + 1e-8)
    expected = mmrec_poe(torch.stack([mu[0], mu[1]]), torch.stack([text_logvar, logvar[1]]))
    torch.testing.assert_close((fused_mu, fused_logvar), expected)


def test_kl_weight_is_untouched_by_mirror_gradient_beta(
    tiny_data: InteractionData, make_cfg: Callable[..., DictConfig]
) -> None:
    mg = functools.partial(MirrorGradient, optimizer=torch.optim.Adam, lr=0.01, beta=5)
    model = MVGAE(tiny_data, optimizer=mg, kl_weight=0.03)
    assert model.hparams.kl_weight == 0.03
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, MirrorGradient) and optimizer._mirror.beta == 5
    # through the configs as a user runs it: optimizer.beta is MG's, model.kl_weight the KL's
    cfg = make_cfg("model=mvgae", "optimizer=mg", "optimizer.beta=7")
    built = build_model(cfg, InMemory(tiny_data))
    assert built.hparams.kl_weight == 0.1 and built.configure_optimizers()._mirror.beta == 7
    # and the loss weighs the KL terms by kl_weight alone
    batch = batch_of(tiny_data)
    built.eval()
    base = built.loss(batch)
    built.hparams.kl_weight = 1.1
    kl_terms = built.loss(batch) - base
    built.hparams.kl_weight = 2.1
    torch.testing.assert_close(built.loss(batch) - base, 2 * kl_terms)


def test_frozen_id_embeddings_are_persistent_buffers(tiny_data: InteractionData) -> None:
    model = MVGAE(tiny_data, learn_id_embeddings=False)
    names = {name for name, _ in model.named_parameters()}
    assert "collaborative" not in names and not any(name.endswith("preference") for name in names)
    state = model.state_dict()
    assert "collaborative" in state and "experts.text.preference" in state


def test_product_of_experts_matches_mmrec_with_tiny_variances() -> None:
    torch.manual_seed(0)
    mu = torch.randn(3, 5, 4, dtype=torch.float64)
    logvar = torch.linspace(-25.0, 3.0, 60, dtype=torch.float64).reshape(3, 5, 4)  # eps dominates at -25
    torch.testing.assert_close(product_of_experts(mu, logvar), mmrec_poe(mu, logvar))
