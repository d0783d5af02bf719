"""scripts/robustness_evidence.sh: the commands behind docs/robustness.md, end to end on a tiny budget."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "robustness_evidence.sh"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def test_unknown_stage_fails_with_the_list_of_stages(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "plot", "vbpr", "ml100k", "1", str(tmp_path)],
        capture_output=True, text=True, env=env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown stage: plot" in done.stderr and "landscape" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_every_stage_on_two_seeds_of_one_epoch(tmp_path: Path) -> None:
    out = tmp_path / "evidence"
    settings = {
        "SEEDS": "0,1",
        "GAUSSIAN_SNR_DB": "10",
        "REPLACE_SHARES": "0.5",
        "SHARPNESS_ARGS": "sharpness.draws=2 sharpness.ascent_steps=1 sharpness.power_iters=3 sharpness.batches=1",
        "LANDSCAPE_ARGS": "--points-1d 3 --points-2d 0 --batches 1 --draws 2 --ascent-steps 1 --power-iters 2",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "all", "vbpr", "ml100k", "1", str(out)],
        capture_output=True, text=True, env=env(**settings), timeout=1200, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "experiment=vbpr_ml100k ->" in done.stdout and "robustness gaussian" in done.stdout
    runs = out / "runs" / "vbpr_ml100k"
    assert sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob("metrics.json")) == [
        "adam/seed0", "adam/seed1", "mg/seed0", "mg/seed1",
    ]  # fmt: skip
    report = (out / "report" / "report.md").read_text()
    assert "| vbpr | ml100k | Adam | 2 |" in report and "| vbpr | ml100k | MG | 2 |" in report
    for kind, strength in (("gaussian", "10"), ("replace", "0.5")):
        with (out / "robustness" / f"vbpr_ml100k_{kind}" / "robustness_runs.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 2 * 2 * 2  # two groups x two seeds x (clean, one strength)
        assert {float(row["perturb/strength"]) for row in rows if row["perturb/strength"]} == {
            float(strength)
        }
    sharpness = (out / "sharpness" / "report.md").read_text()
    assert "hessian/top_eigenvalue" in sharpness and "| vbpr | ml100k | MG | 2 |" in sharpness
    assert (out / "landscape" / "vbpr_ml100k" / "flatness_table.md").is_file()
    # a second call finds every output and redoes nothing
    again = subprocess.run(
        ["bash", str(SCRIPT), "all", "vbpr", "ml100k", "1", str(out)],
        capture_output=True, text=True, env=env(**settings), timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert (
        again.returncode == 0
        and "experiment=vbpr_ml100k" not in again.stdout
        and "robustness gaussian" not in again.stdout
    )
    # training-time noise: a separate sweep and report; the test metrics differ from the clean runs'
    noisy = subprocess.run(
        ["bash", str(SCRIPT), "inherent", "vbpr", "ml100k", "1", str(out)],
        capture_output=True, text=True, env=env(**settings, NOISE_STRENGTH="-5"), timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert noisy.returncode == 0, noisy.stdout[-2000:] + noisy.stderr[-2000:]
    noisy_runs = sorted((out / "noisy_runs" / "gaussian_-5" / "vbpr_ml100k").rglob("metrics.json"))
    assert len(noisy_runs) == 4
    clean_run = json.loads((runs / "mg" / "seed1" / "metrics.json").read_text())
    noisy_run = json.loads(noisy_runs[-1].read_text())  # mg/seed1
    assert noisy_run["test/recall@20"] != clean_run["test/recall@20"]
    assert "| vbpr | ml100k | MG | 2 |" in (out / "noisy_report" / "report.md").read_text()


def test_summary_table_gives_each_groups_retained_share(tmp_path: Path) -> None:
    folder = tmp_path / "robustness" / "freedom_ml100k_replace"
    folder.mkdir(parents=True)
    columns = "group,strength,metric,mean,std,runs,clean_mean,clean_std,retained_mean,retained_std,p\n"
    rows = [
        "Adam,0.2,test/recall@20,0.25,0.01,5,0.31,0.01,0.80,0.02,0.03",
        "MG,0.2,test/recall@20,0.27,0.01,5,0.32,0.01,0.85,0.02,0.03",
        "Adam,0.2,test/ndcg@20,0.2,0.01,5,0.25,0.01,0.5,0.02,0.9",
        "MG,0.2,test/ndcg@20,0.2,0.01,5,0.25,0.01,0.5,0.02,0.9",
    ]
    (folder / "robustness.csv").write_text(columns + "\n".join(rows) + "\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evidence_summary.py"), str(tmp_path)],
        capture_output=True, text=True, env=env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| freedom | ml100k | 0.3100 / 0.3200 | 80% / 85% (p=0.03) |" in done.stdout
    assert "(no gaussian curves below" in done.stdout
    missing = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evidence_summary.py"), str(tmp_path / "nothing")],
        capture_output=True, text=True, env=env(), timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "run the robustness stage first" in missing.stderr
