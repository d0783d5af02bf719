"""SLMRec: the loss and the scores equal a dense re-computation written with MMRec's hard-coded names
(kwai: video only; MMRec's image + text; the paper's video + audio + text), the FAC hierarchy for any
number of modalities, fixed normalised features, in-batch negatives only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import tiny_multimodal
from torch import Tensor, nn

from mgrec.data import InteractionData
from mgrec.models.losses import in_batch_infonce
from mgrec.models.slmrec import SLMRec, fac_hierarchy


def dense_adjacency(data: InteractionData) -> Tensor:
    """MMRec's 'pre' adjacency, dense: D^-1/2 A D^-1/2 with D = row sums + 1e-8."""
    r = torch.as_tensor(data.train.toarray(), dtype=torch.float64)
    a = torch.zeros(data.n_users + data.n_items, data.n_users + data.n_items, dtype=torch.float64)
    a[: data.n_users, data.n_users :] = r
    a[data.n_users :, : data.n_users] = r.T
    d_inv_sqrt = (a.sum(1) + 1e-8) ** -0.5
    return d_inv_sqrt[:, None] * a * d_inv_sqrt[None, :]


def affine(layer: nn.Linear, x: Tensor) -> Tensor:
    return x @ layer.weight.double().T + layer.bias.double()


def cross_entropy_diagonal(logits: Tensor) -> Tensor:
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def mmrec_reference(
    model: SLMRec, data: InteractionData, users: Tensor, pos: Tensor
) -> tuple[Tensor, Tensor]:
    """(loss, full score matrix) following MMRec's code step by step, in float64 with dense matrices."""
    adjacency = dense_adjacency(data)
    n_users = data.n_users

    def compute_graph(u_emb: Tensor, i_emb: Tensor) -> tuple[Tensor, Tensor]:
        all_emb = torch.cat([u_emb, i_emb])
        embs = [all_emb]
        for _ in range(model.hparams.n_layers):
            all_emb = adjacency @ all_emb
            embs.append(all_emb)
        out = torch.stack(embs, dim=1).mean(dim=1)
        return out[:n_users], out[n_users:]

    users_emb, items_emb = model.user_embedding.double(), model.item_embedding.double()
    channels = [compute_graph(users_emb, items_emb)]
    for name, raw in data.modalities.items():
        feat = raw.double() / raw.double().norm(dim=1, keepdim=True)
        channels.append(compute_graph(users_emb, affine(model.projections[name], feat)))
    user = affine(model.user_fusion, torch.cat([c[0] for c in channels], dim=1))
    item = affine(model.item_fusion, torch.cat([c[1] for c in channels], dim=1))

    u = user[users] / user[users].norm(dim=1, keepdim=True)
    p = item[pos] / item[pos].norm(dim=1, keepdim=True)
    main = cross_entropy_diagonal(u @ p.T / model.hparams.temp)

    names, tau = list(data.modalities), model.hparams.ssl_temp
    chain, heads = model.fac_chain, model.fac_heads
    i_emb_i = channels[0][1][pos]
    # MMRec's FAC, written out per data set shape
    g_i_iv, g_v_iv = chain[0], heads[names[0]]
    x_i_iv = affine(g_i_iv, i_emb_i)
    ssl = cross_entropy_diagonal(x_i_iv @ affine(g_v_iv, channels[1][1][pos]).T / tau)
    if len(names) >= 2:  # i -> iv -> iva -> ivat
        g_iv_iva, g_iva_ivat, g_t_ivat = chain[1], chain[2], heads[names[-1]]
        x_iv_iva = affine(g_iv_iva, x_i_iv)
        if len(names) == 3:  # the paper's audio alignment (commented out in MMRec's image + text)
            x_a_iva = affine(heads[names[1]], channels[2][1][pos])
            ssl = ssl + cross_entropy_diagonal(x_iv_iva @ x_a_iva.T / tau)
        x_iva_ivat = affine(g_iva_ivat, x_iv_iva)
        x_t_ivat = affine(g_t_ivat, channels[-1][1][pos])
        ssl = ssl + cross_entropy_diagonal(x_iva_ivat @ x_t_ivat.T / tau)
    # MMRec's Adam weight_decay on every parameter = (wd / 2) sum theta^2 in the loss
    l2 = 0.5 * model.hparams.l2_weight * sum(p.detach().double().square().sum() for p in model.parameters())
    return main + model.hparams.ssl_alpha * ssl + l2, user @ item.T


def random_batch(data: InteractionData, size: int = 48, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    coo = data.train.tocoo()
    pick = torch.randint(coo.nnz, (size,), generator=generator).numpy()
    negs = torch.randint(data.n_items, (size,), generator=generator)
    return torch.as_tensor(coo.row[pick]).long(), torch.as_tensor(coo.col[pick]).long(), negs


def perturbed(model: SLMRec, seed: int = 1) -> SLMRec:
    """Move every parameter off its initial value (zero biases etc. would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_loss_and_scores_match_dense_mmrec_recomputation(n_modalities: int) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = perturbed(SLMRec(data, embedding_size=16, n_layers=2, temp=0.3, ssl_alpha=0.7, ssl_temp=0.4))
    users, pos, negs = random_batch(data)
    expected_loss, expected_scores = mmrec_reference(model, data, users, pos)
    torch.testing.assert_close(model.loss((users, pos, negs)).double(), expected_loss, rtol=1e-5, atol=1e-5)
    all_users = torch.arange(data.n_users)
    torch.testing.assert_close(model.score(all_users).double(), expected_scores, rtol=1e-4, atol=1e-5)


def test_fac_hierarchy_reduces_to_mmrec_and_the_paper() -> None:
    assert fac_hierarchy(1, 64) == ([1], [64, 64])  # kwai: i -> iv
    assert fac_hierarchy(2, 64) == ([1, 3], [64, 64, 64, 32])  # MMRec image + text: iva unaligned
    assert fac_hierarchy(3, 64) == ([1, 2, 3], [64, 64, 64, 32])  # paper: i -> iv -> iva -> ivat
    assert fac_hierarchy(5, 64) == ([1, 2, 3, 4, 5], [64, 64, 64, 64, 64, 32])
    with pytest.raises(ValueError):
        fac_hierarchy(0, 64)
    model = SLMRec(tiny_multimodal(2))
    shapes = [tuple(layer.weight.shape) for layer in model.fac_chain]
    assert shapes == [(64, 64), (64, 64), (32, 64)]  # g_i_iv, g_iv_iva, g_iva_ivat
    assert {name: tuple(head.weight.shape) for name, head in model.fac_heads.items()} == {
        "image": (64, 64),  # g_v_iv
        "text": (32, 64),  # g_t_ivat
    }
    assert model.user_fusion.in_features == model.item_fusion.in_features == 3 * 64


def test_features_are_fixed_and_row_normalised_projections_learn() -> None:
    data = tiny_multimodal(3)
    model = SLMRec(data)
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith("features.") for name in names)
    assert not any(key.startswith("features.") for key in model.state_dict())
    for name, raw in data.modalities.items():
        torch.testing.assert_close(model.features[name], raw / raw.norm(dim=1, keepdim=True))
        assert f"projections.{name}.weight" in names


def test_loss_is_pure_and_ignores_sampled_negatives() -> None:
    data = tiny_multimodal(2)
    model = SLMRec(data)
    users, pos, negs = random_batch(data)
    first = model.loss((users, pos, negs))
    torch.testing.assert_close(model.loss((users, pos, negs)), first, rtol=0, atol=0)
    torch.testing.assert_close(model.loss((users, pos, negs.flip(0))), first, rtol=0, atol=0)
    # the positives of the other rows are the negatives: a different batch composition changes the loss
    assert not torch.allclose(model.loss((users[:24], pos[:24], negs[:24])), first)


@pytest.mark.parametrize("n_modalities", [1, 3])
def test_scores_follow_current_weights_of_every_modality(n_modalities: int) -> None:
    data = tiny_multimodal(n_modalities)
    model = SLMRec(data).eval()
    users = torch.arange(10)
    for name in data.modalities:
        before = model.score(users)
        with torch.no_grad():
            model.projections[name].weight.mul_(-2.0)
        assert not torch.allclose(before, model.score(users)), name
    # inside an evaluation pass the representations are computed once and reused
    model._start_eval()
    cached = model.score(users)
    with torch.no_grad():
        model.item_embedding.add_(1.0)
    torch.testing.assert_close(model.score(users), cached)
    model._cache = None  # the pass is over
    assert not torch.allclose(model.score(users), cached)


def test_modality_order_follows_the_data_set() -> None:
    data = tiny_multimodal(3)
    reordered = InteractionData(
        n_users=data.n_users,
        n_items=data.n_items,
        train=data.train,
        valid=data.valid,
        test=data.test,
        modalities={name: data.modalities[name] for name in ("audio", "image", "text")},
    )
    model = SLMRec(reordered)
    assert model.modality_names == ["audio", "image", "text"]
    assert model.fac_heads["text"].out_features == 32 and model.fac_heads["audio"].out_features == 64
    assert np.isfinite(model.loss(random_batch(reordered)).item())


def test_in_batch_infonce_matches_cross_entropy_and_its_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(37, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randn(37, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(anchors @ targets.T / 0.3, torch.arange(37))
    expected_grads = torch.autograd.grad(3.0 * expected, [anchors, targets])
    loss = in_batch_infonce(anchors, targets, 0.3)
    torch.testing.assert_close(loss, expected)
    for grad, reference in zip(
        torch.autograd.grad(3.0 * loss, [anchors, targets]), expected_grads, strict=True
    ):
        torch.testing.assert_close(grad, reference)
