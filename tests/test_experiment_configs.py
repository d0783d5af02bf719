"""configs/experiment/: every `<model>_<data>` experiment pins its model and data set, leaves the optimizer to
the command line, carries MMRec's per-model settings and tags for grouping."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from mgrec.train import CONFIG_DIR, build_model
from mgrec.utils import component_names

EXPERIMENTS = Path(CONFIG_DIR) / "experiment"
DATA = {p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml")}
MODELS = {p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")}
PAIRS = sorted(
    (m.group(1), m.group(2))
    for p in EXPERIMENTS.glob("*.yaml")
    if (m := re.fullmatch(r"(\w+?)_(\w+)", p.stem)) and m.group(1) in MODELS and m.group(2) in DATA
)
# MMRec's model configs with learning_rate_scheduler [0.96, 50]
DECAYED = {"lattice", "mgcn"}


def test_the_required_settings_exist() -> None:
    required = {
        (model, data)
        for model in ("vbpr", "bm3", "freedom", "lattice", "mgcn", "slmrec", "lightgcn")
        for data in ("tiktok", "ml100k", "baby")
    }
    assert required <= set(PAIRS)
    # every experiment file is a <model>_<data> setting or one of the two LightGCN aliases
    names = {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    assert names == {f"{m}_{d}" for m, d in PAIRS} | {"lightgcn_ml100k_adam", "lightgcn_ml100k_mg"}


@pytest.mark.parametrize(("model", "data"), PAIRS, ids=[f"{m}_{d}" for m, d in PAIRS])
def test_experiment_pins_model_and_data_not_optimizer(
    make_cfg: Callable[..., DictConfig], model: str, data: str
) -> None:
    cfg = make_cfg(f"experiment={model}_{data}", "optimizer=mg", fast=False)
    names = component_names(cfg)
    assert (cfg.data.name, cfg.model._target_.rsplit(".", 1)[-1].lower()) == (data, names["model"])
    assert names["optimizer"] == "mg"
    assert OmegaConf.to_container(cfg.tags, resolve=True) == ["paper", model, data, "mg"]
    assert (cfg.optimizer.alpha1, cfg.optimizer.alpha2, cfg.optimizer.beta) == (1.0, 0.2, 3)
    assert cfg.optimizer.lr == 1e-3 and cfg.data.batch_size == 2048 and cfg.trainer.max_epochs == 1000
    if model in DECAYED:
        assert cfg.scheduler.lr_lambda.factor == 0.96 and cfg.scheduler.lr_lambda.step == 50
    else:
        assert cfg.get("scheduler") is None


def test_default_optimizer_is_adam_and_aliases_pin_it(make_cfg: Callable[..., DictConfig]) -> None:
    assert component_names(make_cfg("experiment=vbpr_tiktok", fast=False))["optimizer"] == "adam"
    for optimizer in ("adam", "mg"):
        cfg = make_cfg(f"experiment=lightgcn_ml100k_{optimizer}", fast=False)
        assert component_names(cfg) == {"model": "lightgcn", "data": "ml100k", "optimizer": optimizer}
        assert OmegaConf.to_container(cfg.tags, resolve=True) == ["paper", "lightgcn", "ml100k", optimizer]


@pytest.mark.parametrize("model", sorted(DECAYED))
def test_decayed_models_build_with_mg_and_the_scheduler(
    make_cfg: Callable[..., DictConfig], tiny_data: object, model: str
) -> None:
    # the experiment's settings on the tiny data (data=synthetic after the experiment's own data set)
    cfg = make_cfg(f"experiment={model}_tiktok", "optimizer=mg", "data=synthetic")

    class Holder:
        data = tiny_data

    built = build_model(cfg, Holder()).configure_optimizers()
    scheduler = built["lr_scheduler"]["scheduler"]
    assert scheduler.lr_lambdas[0](50) == pytest.approx(0.96)
    assert type(built["optimizer"]).__name__ == "MirrorGradient"
