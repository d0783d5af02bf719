"""Glue between Hydra and Lightning's DDP.

Lightning's DDP launcher starts ranks 1..n-1 by re-running the script with `sys.argv` plus
`hydra.run.dir=<HydraConfig.run.dir>` (`_hydra_subprocess_cmd`). In a Hydra multirun that command replays
the whole sweep (`-m` and the sweep values are in `sys.argv`), and `run.dir` is not the job's folder (that
is `sweep.dir/subdir`). :func:`relaunch_as_single_run` makes the relaunch command the current job alone, in
the job's folder, before the trainer launches anything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import Callback, LightningModule, Trainer
from omegaconf import DictConfig, open_dict, read_write
from typing_extensions import override

# strategies whose ranks are started in-process (forked or spawned), not as fresh copies of the script
IN_PROCESS = ("spawn", "fork", "notebook")


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 as far as the launcher's environment tells (True before any
    launch): RANK or SLURM_PROCID where set, else node rank and local rank both 0."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name]) == 0
    return not int(os.environ.get("NODE_RANK", 0) or 0) and not int(os.environ.get("LOCAL_RANK", 0) or 0)


def rank_suffix() -> str:
    """ "" on rank 0; "_node<n>_rank<r>" on the others, which log into files of their own."""
    if is_rank_zero():
        return ""
    return f"_node{os.environ.get('NODE_RANK', 0)}_rank{os.environ.get('LOCAL_RANK', 0)}"


def _launches_script_copies(trainer_cfg: DictConfig) -> bool:
    """Whether Lightning will start further ranks by re-running the script (its DDP subprocess launcher)."""
    strategy = trainer_cfg.get("strategy", "auto")
    name = str(strategy.get("_target_", "") if isinstance(strategy, DictConfig) else strategy).lower()
    start_method = str(strategy.get("start_method", "")) if isinstance(strategy, DictConfig) else ""
    if any(kind in name or kind in start_method for kind in IN_PROCESS):
        return False
    several = trainer_cfg.get("devices", 1) not in (1, "1", [0]) or int(trainer_cfg.get("num_nodes", 1)) > 1
    return "ddp" in name or (name == "auto" and several)


def relaunch_as_single_run(cfg: DictConfig) -> None:
    """In a multirun job with a script-launched DDP strategy, make Lightning relaunch this job only.

    `sys.argv` becomes the script, this job's overrides and `hydra.mode=RUN` (a search config may set
    MULTIRUN), and Hydra's `run.dir` becomes the job's folder, which Lightning passes to the ranks, so
    all ranks write into the same run folder. Does nothing outside a multirun or on ranks > 0.
    """
    if not HydraConfig.initialized() or int(os.environ.get("LOCAL_RANK", 0) or 0) != 0:
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or not _launches_script_copies(cfg.trainer):
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


class ReplicaConsistency(Callback):
    """Fails the run when the replicas' parameters drift apart (checked at each training epoch end).

    Every rank computes a float64 fingerprint of its parameters; they must agree to `rtol`. Use it to check
    a data-parallel setup (`+callbacks=replica_check`); on one process it only records the fingerprint.
    """

    def __init__(self, rtol: float = 1e-6) -> None:
        self.rtol = rtol
        self.fingerprints: list[float] = []

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weighted = [(p.detach().double() * (i + 1)).sum() for i, p in enumerate(pl_module.parameters())]
        absolute = [p.detach().double().abs().sum() for p in pl_module.parameters()]
        fingerprint = torch.stack([torch.stack(weighted).sum(), torch.stack(absolute).sum()])
        gathered = trainer.strategy.all_gather(fingerprint.to(pl_module.device)).reshape(-1, 2).cpu()
        spread = (gathered - gathered[0]).abs().max(dim=0).values
        if bool((spread > self.rtol * gathered[0].abs().clamp(min=1.0)).any()):
            raise RuntimeError(
                f"replica parameters differ after epoch {trainer.current_epoch}: fingerprints "
                f"{gathered.tolist()} (gradient synchronisation is broken)"
            )
        self.fingerprints.append(float(gathered[0, 0]))


# what Lightning's DDP launcher writes into the launching process's environment
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")


@contextmanager
def distributed_job() -> Iterator[None]:
    """One task of a (multi)run: afterwards the process group it created is destroyed and the launcher's
    environment variables are restored, so the next job of a sweep in this process launches its own ranks
    (Lightning treats a set LOCAL_RANK as "ranks were started externally" and would wait for them)."""
    saved = {name: os.environ.get(name) for name in LAUNCH_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
