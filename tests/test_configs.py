"""Every config option composes and instantiates (the bottom of the test pyramid)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from mgrec.train import CONFIG_DIR, build_model
from mgrec.utils import component_names, instantiate_callbacks, instantiate_loggers

CONFIGS = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_defaults_are_documented_ones(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(fast=False)
    assert component_names(cfg) == {"model": "bm3", "data": "ml100k", "optimizer": "adam"}
    assert cfg.optimized_metric == "val/recall@20"
    assert cfg.callbacks.early_stopping.patience == 20
    assert cfg.trainer.max_epochs == 1000
    assert cfg.data.batch_size == 2048


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_has_name_and_path(make_cfg: Callable[..., DictConfig], data: str) -> None:
    cfg = make_cfg(f"data={data}", fast=False)
    assert cfg.data.name and "path" in cfg.data
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == 2048


def test_data_path_is_overridable(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("data=tiktok", "data.path=/some/folder", fast=False)
    assert instantiate(cfg.data).path == "/some/folder"


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("model", options("model"))
def test_every_model_with_every_optimizer(
    make_cfg: Callable[..., DictConfig], model: str, optimizer: str, tiny_data: object
) -> None:
    cfg = make_cfg(f"model={model}", f"optimizer={optimizer}")

    class Holder:
        data = tiny_data

    recommender = build_model(cfg, Holder())
    built = recommender.configure_optimizers()
    if not recommender.requires_training:  # nothing to optimise (ItemKNNCBF): no optimizer, not an error
        assert built is None and not list(recommender.parameters())
        return
    assert built.param_groups[0]["lr"] == cfg.optimizer.lr


def test_mg_options_reach_the_optimizer(make_cfg: Callable[..., DictConfig], tiny_data: object) -> None:
    cfg = make_cfg("optimizer=mg", "optimizer.alpha2=0.3", "optimizer.beta=2")

    class Holder:
        data = tiny_data

    optimizer = build_model(cfg, Holder()).configure_optimizers()
    assert (optimizer.alpha1, optimizer.alpha2, optimizer.beta) == (1.0, 0.3, 2)
    assert component_names(cfg)["optimizer"] == "mg"


def test_scheduler_config(make_cfg: Callable[..., DictConfig], tiny_data: object) -> None:
    cfg = make_cfg("scheduler=exponential")

    class Holder:
        data = tiny_data

    built = build_model(cfg, Holder()).configure_optimizers()
    assert built["lr_scheduler"]["scheduler"].lr_lambdas[0](50) == pytest.approx(0.96)


@pytest.mark.parametrize("logger", options("logger"))
def test_loggers_instantiate_offline(
    make_cfg: Callable[..., DictConfig], logger: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = make_cfg(f"logger={logger}")
    if "wandb" in cfg.logger:
        assert cfg.logger.wandb.offline is True
        assert cfg.logger.wandb.name == "bm3-synthetic-adam-seed0"
    assert instantiate_loggers(cfg.logger)


def test_callbacks_and_trainer(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(fast=False)
    names = {type(c).__name__ for c in instantiate_callbacks(cfg.callbacks)}
    assert names == {"ModelCheckpoint", "EarlyStopping", "RichProgressBar"}
    for trainer in options("trainer"):
        assert (CONFIGS / "trainer" / f"{trainer}.yaml").read_text()


@pytest.mark.parametrize("debug", options("debug"))
def test_debug_configs_compose(make_cfg: Callable[..., DictConfig], debug: str) -> None:
    cfg = make_cfg(f"debug={debug}")
    assert cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("search", options("hparams_search"))
def test_hparams_search_grids(make_cfg: Callable[..., DictConfig], search: str) -> None:
    cfg = make_cfg(f"hparams_search={search}", fast=False)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(make_cfg: Callable[..., DictConfig], experiment: str) -> None:
    cfg = make_cfg(f"experiment={experiment}", fast=False)
    assert cfg.tags


def test_eval_config(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("ckpt_path=/x.ckpt", config_name="eval.yaml")
    assert cfg.ckpt_path == "/x.ckpt" and list(cfg.splits) == ["valid", "test"]
