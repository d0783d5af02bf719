"""The evaluation task and `load_run`: rebuild a trained model and its data from a run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import get_class
from lightning.pytorch import LightningDataModule, seed_everything
from omegaconf import DictConfig, OmegaConf

from mgrec.data.interactions import InteractionData
from mgrec.flatness import run_flatness_task
from mgrec.models.base import Recommender
from mgrec.perturb import Perturbation, apply_to_model, non_null, perturb_data
from mgrec.train import CONFIG_DIR, build_data, build_trainer, output_dir
from mgrec.utils import apply_extras, component_names, instantiate_loggers, task_wrapper, write_json_atomic
from mgrec.utils.distributed import distributed_job

log = logging.getLogger("mgrec")


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder holding `checkpoint` (`<run>/checkpoints/<file>.ckpt`)."""
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
    return checkpoint.parent.parent


def saved_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a training run saved (`.hydra/resolved.yaml`)."""
    path = Path(run_dir) / ".hydra" / "resolved.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run folder written by train.py?")
    return OmegaConf.load(path)


def load_model(checkpoint: str | Path, cfg: DictConfig, data: InteractionData) -> Recommender:
    model_class = get_class(cfg.model._target_)
    model = model_class.load_from_checkpoint(checkpoint, data=data, map_location="cpu", weights_only=False)
    return model.eval()


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[Recommender, InteractionData]:
    """`model, data = load_run(run_dir)`: the trained model (best checkpoint, eval mode) and its data."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    data = build_data(cfg.data).data
    return load_model(path, cfg, data), data


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path` on the requested splits with the data and model of its run."""
    apply_extras(cfg)
    seed_everything(cfg.seed, workers=True)
    run_cfg = saved_config(run_dir_of(cfg.ckpt_path))
    overrides = non_null(cfg.get("data") or {})
    data_cfg = OmegaConf.merge(run_cfg.data, overrides)
    datamodule: LightningDataModule = build_data(data_cfg)
    perturbation = Perturbation.from_config(cfg.get("perturb"))
    datamodule.data = perturb_data(datamodule.data, perturbation)  # before the model builds feature graphs
    model = load_model(cfg.ckpt_path, run_cfg, datamodule.data)
    apply_to_model(model, perturbation)  # trainable feature tables restored from the checkpoint
    if cfg.get("task", "evaluate") != "evaluate":  # task=sharpness|landscape: mgrec.flatness
        return run_flatness_task(cfg, model, datamodule, output_dir(cfg))
    trainer = build_trainer(cfg, logger=instantiate_loggers(cfg.get("logger")) or False, callbacks=[])
    metrics: dict[str, Any] = {}
    for split in cfg.splits:
        run = trainer.validate if split == "valid" else trainer.test
        for result in run(model, datamodule=datamodule, verbose=False):
            metrics.update({k: float(v) for k, v in result.items() if not k.endswith("_best")})
    metrics.update(component_names(run_cfg))
    metrics.update({"seed": int(run_cfg.seed), "checkpoint": str(Path(cfg.ckpt_path).resolve())})
    metrics.update(
        {**perturbation.record(), **Perturbation.from_config(data_cfg.get("noise")).record("data/noise/")}
    )
    if trainer.is_global_zero:
        write_json_atomic(output_dir(cfg) / "metrics.json", metrics)
    log.info("metrics: %s", {k: v for k, v in metrics.items() if "@20" in k})
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    with distributed_job():
        evaluate(cfg)


if __name__ == "__main__":
    main()
