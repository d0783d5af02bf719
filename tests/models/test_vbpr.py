"""VBPR: the loss is MMRec's formula; features are concatenated text-first and stay fixed; scores follow
the current weights."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_multimodal

from mgrec.models.vbpr import VBPR

MMREC_ORDER = {1: ["text"], 2: ["text", "image"], 3: ["text", "image", "audio"]}


def _batch(n_users: int, n_items: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    users = torch.randint(0, n_users, (size,), generator=generator)
    pos = torch.randint(0, n_items, (size,), generator=generator)
    neg = torch.randint(0, n_items, (size,), generator=generator)
    pos[:5] = pos[5]  # repeated items
    return users, pos, neg


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_loss_matches_mmrec_formula(n_modalities: int) -> None:
    data = tiny_multimodal(n_modalities)
    torch.manual_seed(0)
    model = VBPR(data, embedding_size=8, reg_weight=0.5)
    with torch.no_grad():  # a non-zero bias, so that it is checked too
        model.item_linear.bias.normal_()
    users, pos, neg = _batch(data.n_users, data.n_items)

    # MMRec: project every item from torch.cat((t_feat, v_feat, ...)), concatenate, then gather the batch
    raw = torch.cat([data.modalities[name] for name in MMREC_ORDER[n_modalities]], dim=1)
    weight, bias = model.item_linear.weight.detach(), model.item_linear.bias.detach()
    items = torch.cat([model.item_embedding.detach(), raw @ weight.T + bias], dim=1)
    user_e, pos_e, neg_e = model.user_embedding.detach()[users], items[pos], items[neg]
    mf = -torch.log(torch.sigmoid((user_e * pos_e).sum(1) - (user_e * neg_e).sum(1))).mean()
    reg = (user_e.pow(2).sum().sqrt() + pos_e.pow(2).sum().sqrt() + neg_e.pow(2).sum().sqrt()) / len(users)
    expected = mf + 0.5 * reg

    torch.testing.assert_close(model.loss((users, pos, neg)), expected)
    assert model.user_embedding.shape == (data.n_users, 16)


def test_features_are_fixed_and_not_checkpointed() -> None:
    data = tiny_multimodal(3)
    model = VBPR(data, embedding_size=8)
    assert model.features.names == MMREC_ORDER[3]
    assert model.item_linear.in_features == sum(data.modality_dims.values())
    parameters = dict(model.named_parameters())
    assert set(parameters) == {"user_embedding", "item_embedding", "item_linear.weight", "item_linear.bias"}
    assert not any(key.startswith("features") for key in model.state_dict())
    torch.testing.assert_close(model.item_linear.bias.detach(), torch.zeros(8))


def test_scores_use_current_weights_and_cache_within_an_evaluation_pass() -> None:
    data = tiny_multimodal(2)
    model = VBPR(data, embedding_size=8)
    users = torch.arange(10)
    before = model.score(users)
    expected = model.user_embedding[users] @ model.item_embeddings().T
    torch.testing.assert_close(before, expected)
    with torch.no_grad():
        model.item_linear.weight.mul_(2.0)
    after = model.score(users)
    assert not torch.allclose(before, after)

    model._start_eval()
    first = model.score(users)
    with torch.no_grad():
        model.item_linear.weight.mul_(2.0)
    torch.testing.assert_close(model.score(users), first)  # one projection per evaluation pass
    model._cache = None  # the pass ends
    assert not torch.allclose(model.score(users), first)
