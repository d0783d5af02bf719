"""The training task: fit with early stopping on validation, then evaluate valid and test at the best
validation checkpoint and write `metrics.json` into the run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mgrec.models.base import Recommender
from mgrec.perturb import Perturbation
from mgrec.utils import (
    apply_extras,
    component_names,
    instantiate_callbacks,
    instantiate_loggers,
    save_resolved_config,
    task_wrapper,
    write_json_atomic,
)
from mgrec.utils.distributed import distributed_job, relaunch_as_single_run
from mgrec.utils.launch import pin_job_to_gpu

log = logging.getLogger("mgrec")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def build_data(data_cfg: DictConfig) -> LightningDataModule:
    """Instantiate the data module and read (building on first use) its data set."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: LightningDataModule) -> Recommender:
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    model_factory = instantiate(cfg.model, _partial_=True)
    return model_factory(data=datamodule.data, optimizer=optimizer, scheduler=scheduler)


def build_trainer(cfg: DictConfig, **kwargs: Any) -> Trainer:
    """The configured Trainer; under DDP in a multirun, ranks relaunch this job only (see
    `mgrec.utils.distributed`)."""
    relaunch_as_single_run(cfg)
    return instantiate(cfg.trainer, **kwargs)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(v) for result in results for k, v in result.items()}


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` with `cfg.optimizer`; return the metrics written to metrics.json."""
    apply_extras(cfg)
    pin_job_to_gpu(cfg)
    seed_everything(cfg.seed, workers=True)
    run_dir = output_dir(cfg)
    save_resolved_config(cfg, run_dir)

    datamodule = build_data(cfg.data)
    model = build_model(cfg, datamodule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), **component_names(cfg)})

    started = time.perf_counter()
    if model.requires_training:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
    else:
        log.info(
            "%s has nothing to train: skipping fit and evaluating at once (optimizer=%s is not used)",
            type(model).__name__,
            component_names(cfg).get("optimizer"),
        )
    train_seconds = time.perf_counter() - started

    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best_path is None and model.requires_training:
        log.warning("no best checkpoint (checkpointing off or no validation): evaluating the final weights")
    metrics: dict[str, Any] = {}
    metrics.update(
        _scalars(
            trainer.validate(
                model, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=False
            )
        )
    )
    if cfg.get("test"):
        metrics.update(
            _scalars(
                trainer.test(
                    model, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=False
                )
            )
        )
    metrics.pop(f"{model.monitor}_best", None)
    best_epoch = torch.load(best_path, map_location="cpu", weights_only=False)["epoch"] if best_path else None
    metrics.update(component_names(cfg))
    metrics.update(Perturbation.from_config(cfg.data.get("noise")).record("data/noise/"))
    metrics.update(
        {
            "best_epoch": best_epoch,
            "epochs_run": trainer.current_epoch,
            "seed": int(cfg.seed),
            "train_seconds": round(train_seconds, 3),
            "best_checkpoint": best_path,
        }
    )
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        log.info(
            "metrics.json: %s", {k: metrics[k] for k in sorted(metrics) if "@20" in k or k == "best_epoch"}
        )
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    """Entry point; returns the optimised metric for Hydra sweepers."""
    with distributed_job():
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
