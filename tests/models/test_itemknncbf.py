"""ItemKNNCBF: scores equal a dense re-computation of MMRec's formulas; nothing is trained, also not when
the training task is asked for Mirror Gradient."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from tests.conftest import tiny_multimodal

from mgrec.models.itemknncbf import ItemKNNCBF
from mgrec.train import train


def dense_scores(model_data: object, k: int, shrink: float) -> torch.Tensor:
    """MMRec's build_item_sim_matrix and scores_matrix, densely."""
    features = torch.cat([f.double() for f in model_data.modalities.values()], dim=1)
    norm = features.norm(dim=1, keepdim=True)
    similarity = (features @ features.T) / (norm * norm.T + shrink)
    values, indices = similarity.topk(k, dim=1)
    knn = torch.zeros_like(similarity).scatter_(1, indices, values)
    interactions = torch.from_numpy(model_data.train.toarray()).double()
    return interactions @ knn


def test_scores_equal_dense_mmrec_formula() -> None:
    for n_modalities in (1, 2, 3):
        data = tiny_multimodal(n_modalities)
        for k, shrink in ((10, 10.0), (5, 0.0), (3, 100.0)):
            model = ItemKNNCBF(data, knn_k=k, shrink=shrink)
            users = torch.arange(data.n_users)
            expected = dense_scores(data, k, shrink)
            torch.testing.assert_close(model.score(users).double(), expected, rtol=1e-5, atol=1e-5)


def test_has_no_parameters_and_requires_no_training() -> None:
    model = ItemKNNCBF(tiny_multimodal(2))
    assert not model.requires_training
    assert not list(model.parameters())


def test_training_task_skips_fit_with_mirror_gradient(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = make_cfg("model=itemknncbf", "optimizer=mg", "data.modalities={image: 16, text: 8}")
    metrics = train(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["epochs_run"] == 0 and written["optimizer"] == "mg"
    assert metrics["test/recall@20"] == written["test/recall@20"] > 0
