"""Slow: LightGCN on the real data sets reaches a test Recall@20 clearly above the most-popular baseline
(tiktok 0.060, baby 0.052 by the READMEs in ../shared/data; measured by mgrec.baselines)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from omegaconf import DictConfig

from mgrec.baselines import most_popular
from mgrec.data import read_mmrec
from mgrec.train import train

from .conftest import shared_dataset

pytestmark = pytest.mark.slow

REAL = [
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "extras.print_config=false",
    "model=lightgcn",
]


@pytest.mark.parametrize(
    ("data", "folder", "name", "epochs", "margin"),
    [
        ("tiktok", "tiktok", "tiktok", 60, 1.2),
        ("baby_interactions", "amazon-baby-interactions", "baby", 60, 1.1),
    ],
)
def test_lightgcn_beats_most_popular_on_real_data(
    make_cfg: Callable[..., DictConfig], data: str, folder: str, name: str, epochs: int, margin: float
) -> None:
    path = shared_dataset(folder)
    popular = most_popular(read_mmrec(path, name), "test")["test/recall@20"]
    metrics = train(
        make_cfg(*REAL, f"data={data}", f"data.path={path}", f"trainer.max_epochs={epochs}", fast=False)
    )
    assert metrics["test/recall@20"] > margin * popular, (metrics["test/recall@20"], popular)


def test_lightgcn_beats_most_popular_on_ml100k(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(*REAL, "data=ml100k", "trainer.max_epochs=60", fast=False)
    metrics = train(cfg)
    popular = most_popular(read_mmrec(cfg.data.path, "ml100k"), "test")["test/recall@20"]
    assert metrics["test/recall@20"] > 1.2 * popular, (metrics["test/recall@20"], popular)


# The bar is most-popular's Recall@20 (0.060) times the model's margin, from docs/results.md with MMRec's
# defaults: VBPR stays below most-popular like BPR (0.045-0.049 at 40-60 epochs); MMGCN's validation
# recall wanders around it (0.055-0.073 over 30 epochs); GRCN reaches 0.03 on tiktok and ItemKNNCBF,
# content only and untrained, 0.018 (random ranking: about 0.003), so theirs are floors well above random.
MARGINS = {"vbpr": 0.75, "mmgcn": 0.75, "grcn": 0.3, "itemknncbf": 0.2}
# epochs within CI's time: the issue-3 models 40, the slower issue-4 models 20 or 10
EPOCHS = {"mmgcn": 10, "grcn": 10, "dualgnn": 20, "dragon": 20, "layergcn": 20}
TIKTOK_MODELS = [
    *("vbpr", "bm3", "freedom", "lattice", "mgcn", "slmrec", "mmgcn", "grcn", "dualgnn", "dragon"),
    *("itemknncbf", "layergcn", "selfcfed_lgn"),
]


@pytest.mark.parametrize("model", TIKTOK_MODELS)
def test_model_beats_most_popular_on_tiktok(make_cfg: Callable[..., DictConfig], model: str) -> None:
    """Each model with its MMRec defaults beats most-popular (Recall@20 0.060) times its margin."""
    path = shared_dataset("tiktok")
    popular = most_popular(read_mmrec(path, "tiktok"), "test")["test/recall@20"]
    epochs = EPOCHS.get(model, 40)
    overrides = [
        *REAL[:-1],
        f"model={model}",
        "data=tiktok",
        f"data.path={path}",
        f"trainer.max_epochs={epochs}",
    ]
    metrics = train(make_cfg(*overrides, fast=False))
    assert metrics["test/recall@20"] > MARGINS.get(model, 1.0) * popular, (metrics["test/recall@20"], popular)
