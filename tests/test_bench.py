"""Smoke tests of scripts/bench.py's functions at tiny sizes (the benchmarks themselves run by hand)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from mgrec.data import InteractionData, make_synthetic

from .conftest import ROOT

BENCH = ROOT / "scripts" / "bench.py"
GPU_CHECK = ROOT / "scripts" / "gpu_check.sh"
TINY_FRACTION = 0.001  # 192 users, 63 items, 1,689 interactions, Elec's 4,096-d + 384-d features


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mgrec_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return make_synthetic(n_users=300, n_items=150, n_interactions=4000, modalities={"image": 16}, seed=0)


def fake_clock(monkeypatch: pytest.MonkeyPatch, bench: ModuleType) -> None:
    """Every reading of the bench's clock is one second after the previous one."""
    ticks = itertools.count()
    monkeypatch.setattr(bench, "clock", lambda device: float(next(ticks)))


def columns(line: str) -> int:
    return line.count("|")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_scaled_shape_keeps_elec_proportions(bench: ModuleType) -> None:
    assert bench.scaled_shape(1.0) == bench.ELEC_SHAPE
    eighth = bench.scaled_shape(0.125)
    assert eighth == {"n_users": 24_050, "n_items": 7_875, "n_interactions": 211_148}


def test_growth_exponent_recovers_a_power_law(bench: ModuleType) -> None:
    sizes = [1e3, 2e3, 4e3, 8e3]
    assert bench.growth_exponent(sizes, [3.0 * x**1.7 for x in sizes]) == pytest.approx(1.7)
    assert bench.growth_exponent(sizes, [0.5 * x for x in sizes]) == pytest.approx(1.0)
    assert bench.growth_exponent([1e3], [1.0]) is None
    assert bench.growth_exponent([1e3, 1e3], [1.0, 2.0]) is None


def test_score_product_finds_the_width_of_the_dense_score_products(
    bench: ModuleType, data: InteractionData
) -> None:
    class TwoProducts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.randn(data.n_users, 5), torch.randn(data.n_items, 5)
            self.c, self.d = torch.randn(data.n_users, 7), torch.randn(7, data.n_items)
            self.bias = torch.randn(data.n_items, data.n_items)  # a [.., n_items] product of other rows

        def score(self, users: torch.Tensor) -> torch.Tensor:
            self.bias @ self.bias
            return self.a[users] @ self.b.T + torch.mm(self.c[users], self.d)

    assert bench.score_product(TwoProducts(), data, torch.device("cpu")) == (12, torch.float32)
    lightgcn = bench.build_model("lightgcn", data, "adam")
    assert bench.score_product(lightgcn, data, torch.device("cpu"))[0] == 64


def test_bare_mm_rate_counts_scores_per_second(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_clock(monkeypatch, bench)
    # 10,000 users in batches of 4,096: 4,096 + 4,096 + 1,808, each pass one fake second
    assert bench.bare_mm_rate(10_000, 30, 8, torch.device("cpu")) == 10_000 * 30
    # more batches than REFERENCE_BATCHES: the rate of the first ones
    assert bench.bare_mm_rate(5 * 4096, 30, 8, torch.device("cpu")) == 4 * 4096 * 30
    monkeypatch.undo()
    assert bench.bare_mm_rate(500, 200, 16, torch.device("cpu")) > 0


def test_validation_stats_throughput_and_reference(
    bench: ModuleType, data: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid = data.valid.tolil()
    valid[:40] = 0  # 40 users without validation items: fewer validation users than users
    data = dataclasses.replace(data, valid=valid.tocsr(), fingerprint="")
    model = bench.build_model("lightgcn", data, "adam")
    fake_clock(monkeypatch, bench)
    stats = bench.validation_stats(model, data, warmup=1, repeats=2, device=torch.device("cpu"))
    n_eval = len(data.eval_users("valid"))
    assert n_eval <= data.n_users - 40
    assert stats["times"] == [1.0, 1.0] and stats["n_eval_users"] == n_eval and stats["score_dim"] == 64
    assert stats["scores_per_s"] == n_eval * data.n_items
    assert stats["mm_scores_per_s"] == n_eval * data.n_items  # one batch, one fake second
    assert stats["maxrss_mb"] > 100


def test_training_runners_train_on_cpu(bench: ModuleType, data: InteractionData) -> None:
    for optimizer, run in (("adam", bench.lightning_epochs), ("mg", bench.loop_epochs)):
        model = bench.build_model("lightgcn", data, optimizer)
        before = model.user_embedding.detach().clone()
        times = run(model, data, 2)
        assert len(times) == 2 and all(t > 0 for t in times)
        assert not torch.equal(before, model.user_embedding.detach().cpu())


def test_scaling_point_in_process(bench: ModuleType) -> None:
    row = bench.scaling_point("lightgcn", TINY_FRACTION, warmup=0, repeats=1, device=torch.device("cpu"))
    shape = bench.scaled_shape(TINY_FRACTION)
    assert {key: row[key] for key in shape} == shape
    assert 0 < row["n_train"] < shape["n_interactions"] and row["n_items"] == shape["n_items"]
    assert len(row["epoch_times"]) == 1 and len(row["valid_times"]) == 1
    assert row["score_dim"] == 64 and row["scores_per_s"] > 0 and row["mm_scores_per_s"] > 0
    assert row["maxrss_mb"] >= row["data_mb"] > 0
    json.dumps(row)  # goes back to the parent as JSON


def test_run_child_reports_timeouts_and_failures(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = SimpleNamespace(repeats=1, threads=1, device="cpu", warmup=0)
    folder = tmp_path / "tiktok"
    timed_out = bench.run_child(
        "scale-lightgcn", "tiktok", folder, args, fraction=TINY_FRACTION, timeout=0.2, tolerant=True
    )  # a real child, killed while it imports torch
    assert timed_out == {"status": "timeout", "limit_s": 0.2}
    crashed = subprocess.CompletedProcess([], 1, stdout="", stderr="Traceback ...\nKeyError: 'nosuchmodel'\n")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: crashed)
    failed = bench.run_child("scale-nosuchmodel", "tiktok", folder, args, fraction=0.5, tolerant=True)
    assert failed == {"status": "failed", "error": "KeyError: 'nosuchmodel'"}
    with pytest.raises(RuntimeError, match="scale-nosuchmodel on tiktok failed"):
        bench.run_child("scale-nosuchmodel", "tiktok", folder, args, fraction=0.5)
    finished = subprocess.CompletedProcess([], 0, stdout='log line\n{"times": [1.0]}\n', stderr="")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: finished)
    assert bench.run_child("sampling", "tiktok", folder, args) == {"status": "ok", "times": [1.0]}


def scaling_rows(bench: ModuleType) -> list[dict[str, Any]]:
    """Fake points: epoch time ~ interactions^2, validation time ~ (users x items)^1, then a timeout."""
    rows = []
    for fraction in (0.125, 0.25, 0.5):
        shape = bench.scaled_shape(fraction)
        n_train, scores = shape["n_interactions"], shape["n_users"] * shape["n_items"]
        rows.append(
            {
                "status": "ok", "model": "lightgcn", "fraction": fraction, "n_train": n_train,
                "n_eval_users": shape["n_users"], "n_items": shape["n_items"], "build_s": 0.1,
                "epoch_times": [1e-10 * n_train**2] * 2, "valid_times": [1e-9 * scores] * 2,
                "scores_per_s": 1e9, "mm_scores_per_s": 4e9, "score_dim": 64, "data_mb": 500.0,
                "maxrss_mb": 600.0 * fraction, "gpu_peak_mb": 10.0,
            }
        )  # fmt: skip
    rows.append({"status": "timeout", "limit_s": 5.0, "model": "lightgcn", "fraction": 1.0})
    rows.append({"status": "failed", "error": "MemoryError", "model": "bm3", "fraction": 0.125})
    return rows


@pytest.mark.parametrize("cuda", [False, True])
def test_scaling_table_and_exponents(bench: ModuleType, cuda: bool) -> None:
    lines = bench.scaling_table(scaling_rows(bench), cuda=cuda)
    points = lines[: lines.index("")]
    assert all(columns(line) == columns(points[0]) for line in points)
    assert len(points) == 2 + 5 and ("peak GPU MB" in points[0]) == cuda
    assert "| lightgcn | 1/8 | 24,050 | 7,875 | 211,148 |" in points[2] and "| 1/4 |" in points[3]
    assert "timeout (> 5 s)" in points[5] and "failed: MemoryError" in points[6]
    exponents = lines[lines.index("") + 1 :]
    assert "| lightgcn | a = 2.00 | b = 1.00 | 3 |" in exponents
    assert "| bm3 | n/a | n/a | 0 |" in exponents


def test_scaling_plot_writes_a_png(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "img" / "scaling.png"
    assert bench.scaling_plot(scaling_rows(bench), path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not bench.scaling_plot(scaling_rows(bench)[3:], tmp_path / "none.png", "no point measured")
    assert not (tmp_path / "none.png").exists()


def test_model_table(bench: ModuleType) -> None:
    valid = {"status": "ok", "times": [0.1, 0.3], "maxrss_mb": 700.0, "scores_per_s": 2e8, "score_dim": 64}
    rows = {
        "tiktok:vbpr-adam-lightning": {"status": "ok", "times": [1.0, 1.0], "maxrss_mb": 600.0},
        "tiktok:vbpr-mg-lightning": {"status": "ok", "times": [1.5, 1.5], "maxrss_mb": 650.0},
        "tiktok:vbpr-adam-valid": {**valid, "mm_scores_per_s": 8e8},
        "tiktok:lightgcn-adam-lightning": {"status": "timeout", "limit_s": 60.0},
        "tiktok:lightgcn-mg-lightning": {"status": "failed", "error": "boom"},
        "tiktok:lightgcn-adam-valid": {**valid, "mm_scores_per_s": 4e8},
        "tiktok:itemknncbf-adam-valid": {**valid, "mm_scores_per_s": None, "score_dim": None},
        "baby:vbpr-adam-valid": {"status": "n/a"},
    }
    lines = bench.model_table(rows)
    table = [line for line in lines if line.startswith("|")]
    assert all(columns(line) == columns(table[0]) for line in table) and len(table) == 2 + 4
    vbpr, itemknn, lightgcn, baby = table[2:]
    assert "| tiktok | vbpr | 1.000 (1.000-1.000) | 1.500 (1.500-1.500) | 1.50 | 0.200 (0.100-0.300) " in vbpr
    assert "| 200.0 | 800.0 (d=64) | 0.25 | 700 | 0.63 s | <= 0.32 s |" in vbpr
    assert "no training" in itemknn and "n/a (no dense product)" in itemknn
    assert "| timeout (> 60 s) | failed |  |" in lightgcn and "| 0.50 |" in lightgcn
    assert baby.startswith("| baby | vbpr | n/a (no item features) |")


def test_write_block_replaces_only_its_block(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\nprose before\n")
    bench.write_block(out, "scaling", "first")
    out.write_text(out.read_text() + "\nprose after\n")
    bench.write_block(out, "scaling", "second")
    bench.write_block(out, "scaling-cuda", "gpu")
    text = out.read_text()
    assert text.count("<!-- bench-scaling:begin -->") == 1 and "first" not in text
    assert text.index("prose before") < text.index("second") < text.index("prose after") < text.index("gpu")


def test_write_json_merges_suites(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "out" / "bench.json"
    bench.write_json(path, "models", {"rows": {"a": 1}})
    bench.write_json(path, "scaling", {"rows": [2]})
    assert json.loads(path.read_text()) == {"models": {"rows": {"a": 1}}, "scaling": {"rows": [2]}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_cuda_device_without_cuda_skips_cleanly(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.md"
    argv = ["bench.py", "--device", "cuda", "--suite", "scaling", "--fractions", "0.001", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench, "run_child", lambda *a, **k: pytest.fail("measured without CUDA"))
    bench.main()  # returns: exit status 0
    assert "CUDA is not available" in capsys.readouterr().out and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_check_without_cuda_skips_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = subprocess.run(
        ["bash", str(GPU_CHECK), str(out)], capture_output=True, text=True, env=env(), timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA GPU" in done.stdout and "skipping" in done.stdout
    assert "no CUDA GPU" in (out / "gpu_check.log").read_text()


@pytest.mark.slow
def test_scaling_suite_end_to_end(tmp_path: Path) -> None:
    out, plot, raw = tmp_path / "bench.md", tmp_path / "img" / "scaling.png", tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCH), "--suite", "scaling", "--scaling-models", "lightgcn,nosuchmodel",
            "--fractions", f"{TINY_FRACTION},{2 * TINY_FRACTION}", "--repeats", "1", "--threads", "1",
            "--out", str(out), "--plot", str(plot), "--json", str(raw),
        ],
        capture_output=True, text=True, env=env(), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "<!-- bench-scaling:begin -->" in text and "| lightgcn | 1/500 | 385 | 126 |" in text
    assert "Plot: `img/scaling.png`" in text and plot.is_file()
    rows = json.loads(raw.read_text())["scaling"]["rows"]
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "skipped (failure at a smaller size)"]
    assert "nosuchmodel" in rows[2]["error"] and "| nosuchmodel | 1/1000 |" in text
