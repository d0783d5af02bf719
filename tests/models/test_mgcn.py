"""MGCN: loss and scores equal a dense re-computation of MMRec's code; kNN graphs, graph cache, fuser for any
number of modalities, gradients through the non-symmetric graph, scores from current weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_multimodal
from torch import Tensor

import mgrec.models.mgcn as mgcn_module
from mgrec.data import InteractionData
from mgrec.graphs import transposed_spmm
from mgrec.models.mgcn import MGCN


def dense_knn(features: Tensor, k: int) -> Tensor:
    """MMRec's build_sim + build_knn_normalized_graph(is_sparse, 'sym'), densely (tiny n only)."""
    unit = features / features.norm(dim=1, keepdim=True)
    values, indices = (unit @ unit.T).topk(k, dim=1)
    weights = torch.zeros(len(features), len(features)).scatter(1, indices, values)
    inv_sqrt = weights.sum(1).pow(-0.5)
    return inv_sqrt[:, None] * weights * inv_sqrt[None, :]


def mmrec_forward(model: MGCN, data: InteractionData) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MMRec's MGCN.forward(norm_adj, train=True) for image + text, on dense matrices and the model's
    parameters: (users, items, side, content) with users and items concatenated for the last two."""
    n_users = data.n_users
    adjacency = torch.zeros(n_users + data.n_items, n_users + data.n_items)
    train = torch.from_numpy(data.train.toarray()).float()
    adjacency[:n_users, n_users:], adjacency[n_users:, :n_users] = train, train.T
    inv_sqrt = adjacency.sum(1).pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    norm_adj = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    norm_r = norm_adj[:n_users, n_users:]

    views = {}
    for name in ("image", "text"):
        feats = model.projection[name](model.features[name])
        item = model.item_embedding * model.purifier[name](feats)
        graph = dense_knn(data.modalities[name], model.hparams.knn_k)
        for _ in range(model.hparams.n_layers):
            item = graph @ item
        views[name] = torch.cat([norm_r @ item, item])

    ego = torch.cat([model.user_embedding, model.item_embedding])
    layers = [ego]
    for _ in range(model.hparams.n_ui_layers):
        layers.append(norm_adj @ layers[-1])
    content = torch.stack(layers, dim=1).mean(dim=1)

    image, text = views["image"], views["text"]
    weight = torch.softmax(torch.cat([model.query_common(image), model.query_common(text)], dim=-1), dim=-1)
    common = weight[:, 0:1] * image + weight[:, 1:2] * text
    sep_image = model.preference["image"](content) * (image - common)
    sep_text = model.preference["text"](content) * (text - common)
    side = (sep_image + sep_text + common) / 3
    final = content + side
    return final[:n_users], final[n_users:], side, content


def mmrec_info_nce(view1: Tensor, view2: Tensor, temperature: float) -> Tensor:
    view1, view2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    positive = torch.exp((view1 * view2).sum(dim=-1) / temperature)
    total = torch.exp(view1 @ view2.T / temperature).sum(dim=1)
    return torch.mean(-torch.log(positive / total))


def mmrec_loss(model: MGCN, data: InteractionData, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    users, pos, neg = batch
    user_e, item_e, side, content = mmrec_forward(model, data)
    u, p, n = user_e[users], item_e[pos], item_e[neg]
    mf = -torch.mean(F.logsigmoid((u * p).sum(1) - (u * n).sum(1)))
    regulariser = (0.5 * (u**2).sum() + 0.5 * (p**2).sum() + 0.5 * (n**2).sum()) / len(users)
    n_users = data.n_users
    cl = mmrec_info_nce(side[n_users:][pos], content[n_users:][pos], 0.2) + mmrec_info_nce(
        side[:n_users][users], content[:n_users][users], 0.2
    )
    return mf + model.hparams.reg_weight * regulariser + model.hparams.cl_loss * cl


def random_batch(data: InteractionData, size: int = 64, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randint(data.n_users, (size,), generator=generator),
        torch.randint(data.n_items, (size,), generator=generator),
        torch.randint(data.n_items, (size,), generator=generator),
    )


def trained_like(data: InteractionData, **kwargs: float) -> MGCN:
    """A model whose trainable features and embeddings moved away from their initial values."""
    torch.manual_seed(0)
    model = MGCN(data, **kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize(
    "kwargs", [{}, {"n_layers": 2, "n_ui_layers": 3, "knn_k": 4, "cl_loss": 0.1, "reg_weight": 1e-2}]
)
def test_loss_and_scores_equal_mmrec(kwargs: dict[str, float]) -> None:
    data = tiny_multimodal(2)
    model = trained_like(data, **kwargs)
    batch = random_batch(data)
    torch.testing.assert_close(model.loss(batch), mmrec_loss(model, data, batch), rtol=1e-5, atol=1e-6)
    users = torch.arange(30)
    user_e, item_e, _, _ = mmrec_forward(model, data)
    torch.testing.assert_close(model.score(users), user_e[users] @ item_e.T, rtol=1e-5, atol=1e-5)


def test_loss_gradients_equal_mmrec() -> None:
    data = tiny_multimodal(2)
    model = trained_like(data)
    batch = random_batch(data, seed=1)
    grads = torch.autograd.grad(model.loss(batch), list(model.parameters()))
    expected = torch.autograd.grad(mmrec_loss(model, data, batch), list(model.parameters()))
    for (name, _), got, want in zip(model.named_parameters(), grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=name)


def test_knn_graphs_are_mmrec_weighted_sym_from_raw_features() -> None:
    data = tiny_multimodal(3)
    model = MGCN(data, knn_k=5)
    for index, name in enumerate(model.modality_names):
        graph = getattr(model, f"knn_{index}").to_dense()
        torch.testing.assert_close(graph, dense_knn(data.modalities[name], 5))
        torch.testing.assert_close(getattr(model, f"knn_t_{index}").to_dense(), graph.T)
        assert ((graph > 0).sum(1) == 5).all()
        assert not torch.equal(graph, graph.T)  # a kNN graph is not symmetric: S^T is needed for gradients


def test_sparse_product_gradient_uses_the_transpose() -> None:
    data = tiny_multimodal(1)
    model = MGCN(data)
    x = torch.randn(data.n_items, 5, requires_grad=True)
    weight = torch.randn(data.n_items, 5)
    (transposed_spmm(model.knn_0, model.knn_t_0, x) * weight).sum().backward()
    torch.testing.assert_close(x.grad, model.knn_0.to_dense().T @ weight)


def test_fuser_for_one_and_three_modalities() -> None:
    torch.manual_seed(0)
    one = MGCN(tiny_multimodal(1))
    content, modal = torch.randn(7, 64), torch.randn(7, 1, 64)
    final, side = one.fuse(content, modal)
    torch.testing.assert_close(side, modal[:, 0] / 2)  # common = the one view, specific = 0
    torch.testing.assert_close(final, content + side)

    three = MGCN(tiny_multimodal(3))
    modal = torch.randn(7, 3, 64)
    scores = torch.stack([three.query_common(modal[:, m]).squeeze(1) for m in range(3)], dim=1)
    common = (scores.softmax(dim=1).unsqueeze(-1) * modal).sum(1)
    names = ["image", "text", "audio"]
    specific = sum(three.preference[n](content) * (modal[:, m] - common) for m, n in enumerate(names))
    final, side = three.fuse(content, modal)
    torch.testing.assert_close(side, (specific + common) / 4)
    torch.testing.assert_close(final, content + side)


def test_three_modality_views_propagate_each_modality_on_its_own_graph() -> None:
    data = tiny_multimodal(3)
    model = trained_like(data)
    _, _, modal_u, modal_i = model.views()
    norm_r = model.norm_r.to_dense()
    for index, name in enumerate(model.modality_names):
        item = model.item_embedding * model.purifier[name](model.projection[name](model.features[name]))
        expected = dense_knn(data.modalities[name], model.hparams.knn_k) @ item
        torch.testing.assert_close(modal_i[:, index], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(modal_u[:, index], norm_r @ expected, rtol=1e-5, atol=1e-6)


def test_loss_is_a_pure_function_of_weights_and_batch() -> None:
    data = tiny_multimodal(2)
    model = MGCN(data)
    batch = random_batch(data)
    assert torch.equal(model.loss(batch), model.loss(batch))


def test_scores_follow_current_weights() -> None:
    data = tiny_multimodal(2)
    model = MGCN(data)
    users = torch.arange(5)
    before = model.score(users)
    with torch.no_grad():
        model.features["image"].mul_(3.0)  # the raw features are trainable (MMRec's freeze=False)
    after_features = model.score(users)
    assert not torch.allclose(before, after_features)
    with torch.no_grad():
        model.item_embedding.add_(0.5)
    assert not torch.allclose(after_features, model.score(users))


def test_features_are_trainable_parameters_graph_from_raw_features() -> None:
    model = MGCN(tiny_multimodal(2))
    names = {name for name, _ in model.named_parameters()}
    assert {"features.image", "features.text"} <= names


def test_graph_cache_is_written_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_multimodal(2)
    first = MGCN(data, graph_cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("mgcn-knn-*.npz"))) == 2

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached graph should have been read")

    monkeypatch.setattr(mgcn_module, "knn_graph", fail)
    second = MGCN(data, graph_cache_dir=str(tmp_path))
    for index in range(2):
        assert torch.equal(
            getattr(first, f"knn_{index}").to_dense(), getattr(second, f"knn_{index}").to_dense()
        )
    with pytest.raises(AssertionError, match="cached graph"):
        MGCN(data, graph_cache_dir=str(tmp_path), knn_k=3)  # another k is another graph


def test_needs_data() -> None:
    with pytest.raises(ValueError, match="needs `data`"):
        MGCN(n_users=3, n_items=4)
