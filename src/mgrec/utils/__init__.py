"""Glue between Hydra configs and Lightning objects, shared by the task functions."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mgrec.data.interactions import DataError
from mgrec.utils.distributed import rank_suffix
from mgrec.utils.launch import default_n_jobs

log = logging.getLogger("mgrec")


def find_root(start: Path | None = None) -> str:
    """$MGREC_ROOT, else the nearest folder at or above `start` (the working directory) holding
    configs/train.yaml, else the working directory."""
    if os.environ.get("MGREC_ROOT"):
        return str(Path(os.environ["MGREC_ROOT"]).resolve())
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "configs" / "train.yaml").is_file():
            return str(folder)
    return str(here)


def wandb_offline() -> bool:
    """W&B runs offline unless the user is logged in (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_MODE") in {"online", "run"} or os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def wandb_group() -> str | None:
    """The W&B group of a job: the sweep folder's name in a multirun (one group per sweep), the run
    folder's name in a single run. None outside a Hydra job.

    Launchers that run jobs in other processes (joblib, submitit) rebuild each job's config from the
    sweep's with its resolver cache, so `${now:...}` in `hydra.sweep.dir` keeps the sweep's start time there.
    """
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    folder = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.runtime.output_dir
    return Path(str(folder)).name


def register_resolvers() -> None:
    for name, resolver in (
        ("mgrec_root", find_root),
        ("mgrec_wandb_offline", wandb_offline),
        ("mgrec_wandb_group", wandb_group),
        ("mgrec_default_n_jobs", default_n_jobs),
        ("mgrec_rank_suffix", rank_suffix),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()


def instantiate_dict(config: DictConfig | None, kind: type) -> list[Any]:
    """Instantiate every entry of a config group holding several objects (callbacks, loggers)."""
    objects = []
    for name, entry in (config or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            obj = instantiate(entry)
            if not isinstance(obj, kind):
                raise TypeError(f"{name}: expected a {kind.__name__}, got {type(obj).__name__}")
            objects.append(obj)
    return objects


def instantiate_callbacks(config: DictConfig | None) -> list[Callback]:
    return instantiate_dict(config, Callback)


def instantiate_loggers(config: DictConfig | None) -> list[Logger]:
    return instantiate_dict(config, Logger)


def component_names(cfg: DictConfig) -> dict[str, str]:
    """Short names of the model, data set and optimizer for metrics.json and tables."""
    optimizer = cfg.get("optimizer") or {}
    target = str(optimizer.get("_target_", ""))
    if target.endswith("MirrorGradient"):
        base = (
            str(optimizer.get("optimizer", {}).get("_target_", "torch.optim.Adam")).rsplit(".", 1)[-1].lower()
        )
        optimizer_name = "mg" if base == "adam" else f"mg_{base}"
    else:
        optimizer_name = target.rsplit(".", 1)[-1].lower()
    return {
        "model": str(cfg.model._target_).rsplit(".", 1)[-1].lower(),
        "data": str(cfg.data.name),
        "optimizer": optimizer_name,
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, 0o666 & ~umask)  # NamedTemporaryFile creates 0600: give it a normal file's mode
    os.replace(handle.name, path)


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    """Print the composed config as a rich tree."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key))
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


@rank_zero_only
def save_resolved_config(cfg: DictConfig, output_dir: Path) -> None:
    """`<run>/.hydra/resolved.yaml`: the config with every interpolation resolved, for `load_run`."""
    target = output_dir / ".hydra" / "resolved.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    resolvable = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(resolvable, target, resolve=True)


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")
    if extras.get("print_config"):
        print_config(cfg)


def task_wrapper(task: Callable[[DictConfig], dict[str, Any]]) -> Callable[[DictConfig], dict[str, Any]]:
    """Run a task: a data error ends it with a one-line message and exit code 2 (no traceback);
    W&B is closed in any case, so the next job of a multirun opens a run of its own."""

    @wraps(task)
    def wrapped(cfg: DictConfig) -> dict[str, Any]:
        failed = True
        try:
            result = task(cfg)
            failed = False
            return result
        except DataError as error:
            log.error("data error: %s", error)
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        finally:
            if "wandb" in sys.modules:
                import wandb

                if wandb.run is not None:
                    # a failed job's run is marked failed (exit code 1) rather than finished
                    wandb.finish(exit_code=1 if failed else 0)

    return wrapped
