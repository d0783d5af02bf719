"""Data-parallel training and evaluation with Lightning DDP, simulated by two CPU processes
(`trainer=ddp_sim`): exact metrics, replicas in sync under MG, Hydra multiruns without replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mgrec.utils.distributed import _launches_script_copies, distributed_job, rank_suffix

from .conftest import ROOT

# 4,112 training interactions (even, so two ranks split every batch exactly), 3 batches per epoch
DATA = [
    "data=synthetic",
    "data.n_users=300",
    "data.n_items=200",
    "data.n_interactions=5000",
    "data.batch_size=1024",
]
QUIET = ["extras.print_config=false", "trainer.enable_progress_bar=false", "~callbacks.rich_progress_bar"]
# MMRec's embedding L2 term is a norm (not a sum of squares) over the batch, which does not split across
# ranks: it is off here so that two ranks must reproduce one process exactly
TRAIN = [
    "model=lightgcn",
    "model.reg_weight=0.0",
    "optimizer=mg",
    "optimizer.beta=2",
    "trainer.max_epochs=3",
    *DATA,
    *QUIET,
]


def run_script(script: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MGREC_ROOT": str(ROOT)}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics_of(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same training run on one process and on two (with the replica check on)."""
    root = tmp_path_factory.mktemp("ddp")
    folders = {"single": root / "single", "ddp": root / "ddp"}
    run_script("train.py", *TRAIN, "trainer=cpu", f"hydra.run.dir={folders['single']}")
    run_script(
        "train.py",
        *TRAIN,
        "trainer=ddp_sim",
        "callbacks=[default,replica_check]",
        f"hydra.run.dir={folders['ddp']}",
    )
    return folders


@pytest.mark.slow
def test_ddp_training_with_mg_matches_one_process(runs: dict[str, Path]) -> None:
    """Each rank takes half of every global batch: averaged gradients equal one process's, so MG's two
    steps give the same weights (up to float summation order) and the replicas never drift (the
    replica-check callback would fail the run)."""
    weights = {
        name: torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for name, run in runs.items()
    }
    assert weights["single"].keys() == weights["ddp"].keys()
    for key, value in weights["single"].items():
        torch.testing.assert_close(weights["ddp"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    single, ddp = metrics_of(runs["single"]), metrics_of(runs["ddp"])
    assert ddp["best_epoch"] == single["best_epoch"]
    assert ddp["test/recall@20"] == pytest.approx(single["test/recall@20"], abs=5e-3)
    # it learns: 20 of 200 items drawn at random give recall@20 of about 0.1
    assert ddp["test/recall@20"] > 0.2
    assert (runs["ddp"] / "train_node0_rank1.log").is_file()
    assert not (runs["single"] / "train_node0_rank1.log").exists()


@pytest.mark.slow
def test_ddp_evaluation_of_a_checkpoint_equals_one_process(runs: dict[str, Path], tmp_path: Path) -> None:
    """Evaluation users are dealt to the ranks without padding and the metric states are summed: the
    metrics of a fixed checkpoint on two processes are those on one."""
    checkpoint = runs["single"] / "checkpoints" / "best.ckpt"
    results = {}
    for trainer in ("cpu", "ddp_sim"):
        out = tmp_path / trainer
        run_script(
            "eval.py", f"ckpt_path={checkpoint}", f"trainer={trainer}", *QUIET[:2], f"hydra.run.dir={out}"
        )
        results[trainer] = metrics_of(out)
    keys = [k for k in results["cpu"] if k.startswith(("val/", "test/"))]
    assert len(keys) == 32
    for key in keys:
        assert results["ddp_sim"][key] == pytest.approx(results["cpu"][key], rel=1e-6, abs=1e-9), key
    # and both equal what training reported at that checkpoint
    assert results["cpu"]["test/ndcg@20"] == pytest.approx(
        metrics_of(runs["single"])["test/ndcg@20"], rel=1e-6
    )


@pytest.mark.slow
def test_ddp_multirun_runs_each_job_once(tmp_path: Path) -> None:
    """`-m seed=0,1 trainer=ddp_sim`: two job folders, each written by both of its ranks, and no replayed
    sweep or stray run folder from the relaunched ranks."""
    sweep = tmp_path / "sweep"
    run_script(
        "train.py",
        "-m",
        "seed=0,1",
        *TRAIN,
        "trainer.max_epochs=1",
        "trainer=ddp_sim",
        f"hydra.sweep.dir={sweep}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert metrics_of(sweep / job)["seed"] == int(job)
        assert (sweep / job / "train_node0_rank1.log").is_file()
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"strategy": "auto", "devices": 1}, False),
        ({"strategy": "auto", "devices": 2}, True),
        ({"strategy": "ddp", "devices": 2}, True),
        ({"strategy": "ddp_spawn", "devices": 2}, False),
        ({"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"}, "devices": 2}, True),
        (
            {"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"}},
            False,
        ),
        ({"strategy": "auto", "devices": 1, "num_nodes": 2}, True),
    ],
)
def test_which_strategies_relaunch_the_script(trainer: dict, expected: bool) -> None:
    assert _launches_script_copies(OmegaConf.create(trainer)) is expected


def test_rank_suffix_and_launch_environment_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert rank_suffix() == ""
    with distributed_job():
        os.environ["LOCAL_RANK"], os.environ["MASTER_PORT"] = "0", "12910"  # as Lightning's launcher does
    assert "LOCAL_RANK" not in os.environ and "MASTER_PORT" not in os.environ
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_suffix() == "_node0_rank1"
