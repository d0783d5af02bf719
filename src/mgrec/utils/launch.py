"""Glue between Hydra's launchers and the jobs they start (`configs/hydra/launcher/`).

The joblib launcher runs the jobs of a multirun in parallel worker processes on one machine. Each job asks
Lightning for one device (`trainer.devices=1`), which would put every job on GPU 0; :func:`pin_job_to_gpu`
deals the jobs out over the visible GPUs by job number instead. It sets `trainer.devices=[k]` and leaves
`CUDA_VISIBLE_DEVICES` alone: loky reuses its workers from job to job, so CUDA may already be initialised in
the worker (by the previous job) and would ignore a changed variable.
"""

from __future__ import annotations

import logging
import warnings

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, open_dict

log = logging.getLogger("mgrec")

# the launcher whose jobs run side by side on this machine (hydra-joblib-launcher)
JOBLIB_LAUNCHER = "JoblibLauncher"
# jobs at a time on a machine without GPUs (each job's torch threads are limited by joblib accordingly)
CPU_JOBS = 2

# configs/hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml carry the plugins' config names on
# purpose (`hydra/launcher=joblib` picks ours) and are complete configs; Hydra still merges the plugin's
# schema of the same name into them (type checking only) and warns that this matching is deprecated.
warnings.filterwarnings(
    "ignore", message=r"(?s)\s*'hydra/launcher/.*' is validated against ConfigStore schema"
)


def default_n_jobs() -> int:
    """The joblib launcher's default parallelism: one job per visible GPU, else `CPU_JOBS`.

    `torch.cuda.device_count` asks NVML where it can and does not initialise CUDA in the launching process.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpus if gpus > 0 else CPU_JOBS


def _uses_gpu(accelerator: object) -> bool:
    name = str(accelerator).lower()
    return name in {"gpu", "cuda"} or (name == "auto" and torch.cuda.is_available())


def _single_device(devices: object) -> bool:
    """`devices=1`: one device, Lightning's choice (GPU 0). An explicit list (`[2]`) is the user's pick."""
    if isinstance(devices, (list, ListConfig)):
        return False
    return str(devices).strip() == "1"


def pin_job_to_gpu(cfg: DictConfig) -> None:
    """In a joblib multirun on a machine with several GPUs, give each single-device job a GPU of its own.

    Sets `cfg.trainer.devices = [hydra.job.num % n_gpus]` when all of these hold: the job runs in a Hydra
    multirun under the joblib launcher; the trainer uses GPUs (`accelerator` gpu or cuda, or auto with CUDA
    available); more than one GPU is visible; the job asks for one device (`devices=1`). Otherwise `cfg` is
    left as it is (sequential jobs, DDP jobs, CPU jobs, a GPU the user picked, SLURM jobs which get GPUs of
    their own). Call it before the trainer is built. With `n_jobs` equal to the GPU count (the joblib
    config's default) jobs k, k + n, k + 2n, ... share GPU k, one after the other.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode != RunMode.MULTIRUN or not launcher.endswith(JOBLIB_LAUNCHER):
        return
    trainer = cfg.get("trainer")
    if trainer is None or not _uses_gpu(trainer.get("accelerator", "auto")):
        return
    if not _single_device(trainer.get("devices", "auto")):
        return
    n_gpus = torch.cuda.device_count()
    if n_gpus < 2:
        return
    gpu = int(hydra_cfg.job.num) % n_gpus
    with open_dict(trainer):
        trainer.devices = [gpu]
    log.info("job %d runs on GPU %d of %d (trainer.devices=[%d])", hydra_cfg.job.num, gpu, n_gpus, gpu)
