"""The training and evaluation tasks end to end: run folders, metrics.json, resume, eval.py, load_run, and
the command line as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, open_dict

import mgrec
from mgrec.eval import evaluate
from mgrec.train import train

from .conftest import FAST, ROOT

METRIC_KEYS = [
    f"{split}/{m}@{k}"
    for split in ("val", "test")
    for m in ("recall", "ndcg", "precision", "map")
    for k in (5, 10, 20, 50)
]
RUN_INFO = ["best_epoch", "seed", "model", "data", "optimizer", "train_seconds"]


def test_train_writes_run_folder_and_metrics(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    metrics = train(make_cfg("optimizer=mg", "optimizer.beta=2", "seed=7"))
    run = tmp_path / "run"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS + RUN_INFO) <= set(saved)
    assert saved == json.loads(json.dumps(metrics))
    assert (saved["seed"], saved["optimizer"], saved["model"], saved["data"]) == (
        7,
        "mg",
        "bm3",
        "synthetic",
    )
    assert 0 <= saved["best_epoch"] < 3
    assert 0 < saved["test/recall@20"] <= 1
    # the test metrics are those of the best validation checkpoint
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["epoch"] == saved["best_epoch"]
    assert (run / ".hydra" / "resolved.yaml").is_file()
    assert (run / "csv" / "metrics.csv").is_file()


def test_resume_from_last_checkpoint_matches_uninterrupted_run(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    common = ("optimizer=mg", "model=lightgcn", "callbacks.early_stopping.patience=100")
    full = train(make_cfg(*common, "trainer.max_epochs=4"))
    full_weights = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)[
        "state_dict"
    ]

    cfg = make_cfg(*common, "trainer.max_epochs=2")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "interrupted")
    train(cfg)
    cfg = make_cfg(
        *common, "trainer.max_epochs=4", f"ckpt_path={tmp_path / 'interrupted/checkpoints/last.ckpt'}"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "resumed")
    resumed = train(cfg)
    resumed_weights = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed_weights["epoch"] == 3
    # equal up to float32 rounding: MKL's sparse kernels round differently (~3e-8) depending on where the
    # allocator places intermediate buffers, which differs between a fresh and a resumed process
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights["state_dict"][name], value, rtol=0, atol=1e-6)
    assert {k: resumed[k] for k in METRIC_KEYS} == pytest.approx({k: full[k] for k in METRIC_KEYS}, abs=1e-6)


def test_same_seed_same_metrics_through_the_task(make_cfg: Callable[..., DictConfig]) -> None:
    first = train(make_cfg("model=bpr", "seed=1"))
    second = train(make_cfg("model=bpr", "seed=1"))
    assert {k: first[k] for k in METRIC_KEYS} == {k: second[k] for k in METRIC_KEYS}


def test_eval_task_and_load_run_reproduce_training_metrics(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    trained = train(make_cfg("model=bpr"))
    run = tmp_path / "run"
    cfg = make_cfg(f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", config_name="eval.yaml")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    evaluated = evaluate(cfg)
    assert {k: evaluated[k] for k in METRIC_KEYS} == pytest.approx({k: trained[k] for k in METRIC_KEYS})
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/recall@20"] == pytest.approx(
        trained["test/recall@20"]
    )

    model, data = mgrec.load_run(run)
    assert not model.training
    assert (data.n_users, data.n_items) == (model.n_users, model.n_items)
    assert data.train.nnz and data.valid.nnz and data.test.nnz and data.modalities
    users = torch.arange(10)
    with torch.no_grad():
        scores = model.score(users)
    assert scores.shape == (10, data.n_items) and scores.dtype == torch.float32
    top = model.recommend(users, 5)
    for user, items in enumerate(top.tolist()):
        assert not set(items) & set(data.train[user].indices.tolist())
        assert items[0] == int(
            np.argmax(
                np.where(
                    np.isin(np.arange(data.n_items), data.train[user].indices), -np.inf, scores[user].numpy()
                )
            )
        )


def cli(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def fast_cli_args(log_dir: Path) -> list[str]:
    return [*FAST, "trainer.max_epochs=2", f"paths.log_dir={log_dir}"]


def test_command_line_train_multirun_and_eval(tmp_path: Path) -> None:
    single = cli("train.py", *fast_cli_args(tmp_path), "model=bpr", "optimizer=mg", "logger=tensorboard")
    assert single.returncode == 0, single.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["optimizer"] == "mg"
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))

    multi = cli("train.py", "-m", *fast_cli_args(tmp_path), "optimizer=adam,mg")
    assert multi.returncode == 0, multi.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(json.loads(p.read_text())["optimizer"] for p in sweep.rglob("metrics.json"))
    assert jobs == ["adam", "mg"]

    evaluated = cli(
        "eval.py",
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        f"paths.log_dir={tmp_path}",
        "extras.print_config=false",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_run,) = (tmp_path / "eval" / "runs").iterdir()
    assert "test/ndcg@10" in json.loads((eval_run / "metrics.json").read_text())

    selected = subprocess.run(
        [sys.executable, "-m", "mgrec.select", str(sweep)], capture_output=True, text=True
    )
    assert selected.returncode == 0 and "selected by val/recall@20" in selected.stdout


def test_fast_dev_run_debug_config(tmp_path: Path) -> None:
    result = cli("train.py", "debug=fdr", *fast_cli_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]


def test_bad_data_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "broken.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t0\t1\n")
    result = cli(
        "train.py",
        "data=tiktok",
        f"data.path={folder}",
        "data.name=broken",
        "data.modalities={}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
    )
    assert result.returncode == 2
    assert f"{folder / 'broken.inter'}: duplicate (userID, itemID) pair on line 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "logs").rglob("*.ckpt")) and not list(
        (tmp_path / "logs").rglob("metrics.json")
    )
