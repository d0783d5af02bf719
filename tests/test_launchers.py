"""Many runs: the joblib and submitit launchers, GPU pinning of parallel jobs, one W&B run per job grouped
by sweep, and an Optuna study that survives a crashed trial (configs/hydra/launcher/, mgrec.utils.launch,
configs/logger/wandb.yaml, configs/hparams_search/optuna_lightgcn.yaml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mgrec.utils import task_wrapper
from mgrec.utils.launch import CPU_JOBS, default_n_jobs, pin_job_to_gpu

from .conftest import FAST, ROOT

# the launcher yamls share the plugins' names on purpose (see mgrec.utils.launch)
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema:UserWarning")

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


# ---------------------------------------------------------------- pin_job_to_gpu (monkeypatched CUDA)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, n_gpus: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n_gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)


def as_job(cfg: DictConfig, num: int, mode: str = "MULTIRUN", launcher: str = JOBLIB) -> DictConfig:
    """Make `cfg` look like job `num` of a Hydra multirun under `launcher` (HydraConfig included)."""
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.job.num = num
        cfg.hydra.launcher = {"_target_": launcher}
    HydraConfig().set_config(cfg)
    return cfg


def test_pin_job_to_gpu_deals_joblib_jobs_over_the_gpus(
    make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cuda(monkeypatch, 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for num, accelerator in ((0, "gpu"), (1, "cuda"), (6, "auto"), (7, "gpu")):
        cfg = as_job(make_cfg(f"trainer.accelerator={accelerator}", "trainer.devices=1"), num)
        pin_job_to_gpu(cfg)
        assert list(cfg.trainer.devices) == [num % 4]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # devices given as a string ("1" on the command line reads as an int, "'1'" as a string)
    cfg = as_job(make_cfg("trainer.accelerator=gpu", "trainer.devices='1'"), 5)
    pin_job_to_gpu(cfg)
    assert list(cfg.trainer.devices) == [1]


@pytest.mark.parametrize(
    ("overrides", "n_gpus", "mode", "launcher"),
    [
        (("trainer.accelerator=gpu",), 1, "MULTIRUN", JOBLIB),  # one GPU: nothing to deal out
        (("trainer.accelerator=cpu",), 4, "MULTIRUN", JOBLIB),  # CPU jobs
        (("trainer.accelerator=auto",), 0, "MULTIRUN", JOBLIB),  # auto without CUDA
        (("trainer.accelerator=gpu",), 4, "RUN", JOBLIB),  # a single run
        (("trainer.accelerator=gpu",), 4, "MULTIRUN", BASIC),  # sequential jobs
        (("trainer.accelerator=gpu", "trainer.devices=2"), 4, "MULTIRUN", JOBLIB),  # DDP over 2 GPUs
        (("trainer.accelerator=gpu", "trainer.devices=-1"), 4, "MULTIRUN", JOBLIB),  # every GPU
        (("trainer.accelerator=gpu", "trainer.devices=[2]"), 4, "MULTIRUN", JOBLIB),  # the user's pick
    ],
)
def test_pin_job_to_gpu_leaves_other_jobs_alone(
    make_cfg: Callable[..., DictConfig],
    monkeypatch: pytest.MonkeyPatch,
    overrides: tuple[str, ...],
    n_gpus: int,
    mode: str,
    launcher: str,
) -> None:
    fake_cuda(monkeypatch, n_gpus)
    cfg = as_job(make_cfg(*overrides), 3, mode, launcher)
    before = OmegaConf.to_container(cfg.trainer)
    pin_job_to_gpu(cfg)
    assert OmegaConf.to_container(cfg.trainer) == before


def test_pin_job_to_gpu_outside_hydra_does_nothing(
    make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cuda(monkeypatch, 4)
    cfg = as_job(make_cfg("trainer.accelerator=gpu"), 3)
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))
    pin_job_to_gpu(cfg)
    assert cfg.trainer.devices == 1


def test_joblib_config_defaults_to_one_job_per_gpu(
    make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cuda(monkeypatch, 3)
    assert default_n_jobs() == 3
    cfg = make_cfg("hydra/launcher=joblib")
    assert cfg.hydra.launcher._target_ == JOBLIB and cfg.hydra.launcher.n_jobs == 3
    fake_cuda(monkeypatch, 0)
    assert make_cfg("hydra/launcher=joblib").hydra.launcher.n_jobs == CPU_JOBS
    assert make_cfg("hydra/launcher=joblib", "hydra.launcher.n_jobs=5").hydra.launcher.n_jobs == 5


# ---------------------------------------------------------------- W&B group and closing


def test_wandb_group_is_the_run_or_sweep_folder(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("logger=wandb")
    assert cfg.logger.wandb.group == "run"  # the single run's folder (tmp_path/run in these tests)
    cfg = as_job(make_cfg("logger=wandb"), 1, launcher=BASIC)
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.sweep.dir = "/somewhere/multiruns/2030-01-02_03-04-05"
    HydraConfig().set_config(cfg)
    assert cfg.logger.wandb.group == "2030-01-02_03-04-05"


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """A stand-in `wandb` module recording `finish` calls."""
    module = types.SimpleNamespace(run=None, finished=[])

    def finish(exit_code: int | None = None) -> None:
        module.finished.append(exit_code)
        module.run = None

    module.finish = finish
    monkeypatch.setitem(sys.modules, "wandb", module)
    yield module


def test_task_wrapper_closes_the_wandb_run_of_each_job(fake_wandb: types.SimpleNamespace) -> None:
    def ok(cfg: DictConfig) -> dict[str, float]:
        fake_wandb.run = object()
        return {"x": 1.0}

    def crash(cfg: DictConfig) -> dict[str, float]:
        fake_wandb.run = object()
        raise ValueError("alpha2 must be >= 0")

    assert task_wrapper(ok)(OmegaConf.create()) == {"x": 1.0}
    with pytest.raises(ValueError, match="alpha2"):
        task_wrapper(crash)(OmegaConf.create())
    assert fake_wandb.finished == [0, 1] and fake_wandb.run is None


# ---------------------------------------------------------------- SLURM config (no cluster needed)


def test_submitit_slurm_config_makes_a_valid_ddp_batch_script(
    make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from submitit.slurm.slurm import SlurmExecutor

    cfg = make_cfg(
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.partition=gpu",
    )
    # tasks per node follow the GPUs, nodes follow trainer.num_nodes
    assert (cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.nodes) == (4, 2)
    assert make_cfg("hydra/launcher=submitit_slurm").hydra.launcher.nodes == 1

    # run the launcher up to the submission: submitit validates every key and writes the sbatch script
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    captured = {}

    def capture(executor: object, *args: object) -> None:
        captured["executor"] = executor
        raise RuntimeError("submission captured")

    monkeypatch.setattr(SlurmExecutor, "affinity", staticmethod(lambda: 1))  # pretend srun exists
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    with pytest.raises(RuntimeError, match="submission captured"):
        launcher.launch([["seed=0"]], initial_job_idx=0)
    script = captured["executor"]._executor._make_submission_file_text("python -u job.py", "uid")
    for line in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--cpus-per-task=4",
        "--mem=32GB",
        "--time=240",
    ):
        assert f"#SBATCH {line}\n" in script
    assert "\nsrun " in script


# ---------------------------------------------------------------- multiruns on the command line (slow)


def run_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`train.py -m` (a multirun) in a subprocess writing under tmp_path; W&B offline, its folders in tmp_path."""
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "NETRC": str(tmp_path / "no-netrc"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("WANDB_API_KEY", None)
    fast = [a for a in FAST if not a.startswith("trainer.max_epochs")]
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *fast,
            "trainer.max_epochs=1",
            f"paths.log_dir={tmp_path}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def sweep_folder(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    return sweep


def job_seeds(sweep: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/metrics.json"))


def wandb_records(path: Path) -> Iterator[object]:
    """The records of an offline W&B run file (`run-<id>.wandb`): a 7-byte W&B header, then LevelDB's log
    format (32 KiB blocks of chunks: crc32, 2-byte length, type 1 full / 2 first / 3 middle / 4 last)
    holding `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        kind = data[position + 6] if left >= 7 else 0
        if kind == 0:  # block trailer or padding
            position += left
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def check_one_wandb_run_per_job(sweep: Path, n_jobs: int) -> None:
    """Each job: its own offline run (distinct ids), closed (an exit record), in the sweep's group."""
    groups, ids = set(), set()
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        resolved = OmegaConf.load(job / ".hydra" / "resolved.yaml")
        (run_file,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
        records = list(wandb_records(run_file))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
        assert exits == [0], f"{run_file}: the run was not closed"
        assert run.run_group == resolved.logger.wandb.group
        groups.add(run.run_group)
        ids.add(run.run_id)
    assert len(ids) == n_jobs
    assert groups == {sweep.name}


@pytest.mark.slow
def test_wandb_multirun_one_run_per_job_grouped_by_sweep(tmp_path: Path) -> None:
    result = run_train(tmp_path, "model=bpr", "seed=0,1", "logger=wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    assert job_seeds(sweep) == [0, 1]
    check_one_wandb_run_per_job(sweep, 2)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = run_train(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=bpr",
        "seed=0,1",
        "logger=wandb",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2," in result.stdout + result.stderr
    sweep = sweep_folder(tmp_path)
    assert job_seeds(sweep) == [0, 1]
    # the workers started seconds after the sweep folder was named; the group is still the sweep's
    check_one_wandb_run_per_job(sweep, 2)


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = run_train(tmp_path, "hydra/launcher=submitit_local", "model=bpr", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    assert job_seeds(sweep) == [0, 1]
    assert list((sweep / ".submitit").rglob("*_result.pkl"))


@pytest.mark.slow
def test_optuna_study_survives_a_crashed_trial(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # trial k runs MG with beta = k, so trial 0 raises (MG needs beta >= 1) and trials 1 and 2 train
    result = run_train(
        tmp_path,
        "hparams_search=optuna_lightgcn",
        "hydra.sweeper.n_trials=3",
        "optimizer.beta=${hydra:job.num}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Failed experiment: MirrorGradient: beta must be an integer >= 1, got 0" in output
    sweep = sweep_folder(tmp_path)
    assert not (sweep / "0" / "metrics.json").exists()
    completed = {
        job: json.loads((sweep / job / "metrics.json").read_text())["val/recall@20"] for job in ("1", "2")
    }
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(completed.values()))
    best_job = max(completed, key=completed.__getitem__)
    best_overrides = OmegaConf.load(sweep / best_job / ".hydra" / "overrides.yaml")
    assert f"optimizer.alpha2={results.best_params['optimizer.alpha2']}" in best_overrides
    assert 0.0 <= results.best_params["optimizer.alpha2"] <= 0.5
    assert 1e-4 <= results.best_params["optimizer.lr"] <= 1e-2
