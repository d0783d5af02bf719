"""`python -m mgrec.report`: on metrics.json trees written here (no training) the means, standard deviations,
gains, confidence intervals and p-values equal hand-computed ones; runs are grouped by config (not folder)
and paired by seed; unpaired seeds are left out with a warning; the files are written. One end-to-end test
with two real tiny training runs."""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import DictConfig, open_dict
from scipy import stats

from mgrec.report import (
    Report,
    ReportWarning,
    collect,
    label_settings,
    lower_is_better,
    main,
    make_report,
    paired_test,
    sign_flip_pvalue,
    verdict,
)

from .conftest import ROOT

R20, N20 = "test/recall@20", "test/ndcg@20"
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001, "weight_decay": 0.0}
MG = {
    "_target_": "mgrec.optim.MirrorGradient",
    "_partial_": True,
    "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
    "alpha1": 1.0,
    "alpha2": 0.2,
    "beta": 3,
    "lr": 0.001,
    "weight_decay": 0.0,
}
# hand-computed example: 5 seeds, MG ahead on every seed
ADAM_R20 = [0.10, 0.12, 0.11, 0.13, 0.09]
MG_R20 = [0.12, 0.13, 0.12, 0.15, 0.10]  # differences 0.02 0.01 0.01 0.02 0.01


def write_run(
    folder: Path,
    *,
    model: str = "vbpr",
    data: str = "tiktok",
    optimizer: str = "adam",
    seed: int = 0,
    metrics: dict[str, float] | None = None,
    model_cfg: dict[str, Any] | None = None,
    optimizer_cfg: dict[str, Any] | None = None,
    extra_cfg: dict[str, Any] | None = None,
    config: bool = True,
) -> Path:
    """A run folder as train.py leaves it: metrics.json and .hydra/resolved.yaml (with its own paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model": model, "data": data, "optimizer": optimizer, "seed": seed, "best_epoch": 3}
    payload |= {"train_seconds": 10.0, **(metrics or {})}
    (folder / "metrics.json").write_text(json.dumps(payload))
    if config:
        cfg = {
            "task_name": "train",
            "seed": seed,
            "tags": [model, data, optimizer],
            "data": {"_target_": "x.Data", "name": data, "path": f"/data/{data}", "sampling_seed": seed},
            "model": {"_target_": f"mgrec.models.{model.upper()}", "reg_weight": 2.0, **(model_cfg or {})},
            "optimizer": optimizer_cfg or (MG if optimizer == "mg" else ADAM),
            "scheduler": None,
            "trainer": {"max_epochs": 1000, "default_root_dir": str(folder)},
            "paths": {"output_dir": str(folder)},
            "callbacks": {"model_checkpoint": {"dirpath": str(folder / "checkpoints")}},
            **(extra_cfg or {}),
        }
        (folder / ".hydra").mkdir(exist_ok=True)
        (folder / ".hydra" / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def write_pair(
    root: Path, adam: list[float], mg: list[float], seeds: list[int] | None = None, **kw: Any
) -> None:
    """Adam and MG runs on the given seeds, in folders numbered like a multirun's jobs."""
    seeds = seeds if seeds is not None else list(range(len(adam)))
    jobs = [("adam", s, v) for s, v in zip(seeds, adam, strict=True)]
    jobs += [("mg", s, v) for s, v in zip(seeds, mg, strict=True)]
    for number, (opt, seed, value) in enumerate(jobs):
        write_run(root / str(number), optimizer=opt, seed=seed, metrics={R20: value, N20: value / 2}, **kw)


def report(folder: Path, **kwargs: Any) -> Report:
    """`make_report` on a clean tree: any ReportWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        return make_report(folder, out=folder / "out", png=False, **kwargs)


# ------------------------------------------------------------------------------------------ statistics


def test_hand_computed_means_gain_ci_and_pvalues(tmp_path: Path) -> None:
    write_pair(tmp_path, ADAM_R20, MG_R20)
    result = report(tmp_path)
    summary = result.summary.set_index(["arm", "metric"])
    # by hand: Adam mean 0.11, deviations -.01 .01 0 .02 -.02 -> variance 1e-3 / 4; MG mean 0.124
    assert summary.loc[("Adam", R20), "mean"] == pytest.approx(0.11)
    assert summary.loc[("Adam", R20), "std"] == pytest.approx(math.sqrt(1e-3 / 4))
    assert summary.loc[("MG", R20), "mean"] == pytest.approx(0.124)
    assert summary.loc[("MG", R20), "n_seeds"] == 5
    row = result.comparisons.set_index("metric").loc[R20]
    # differences 0.02 .01 .01 .02 .01: mean 0.014, sd sqrt(1.2e-4 / 4), t = 0.014 / (sd / sqrt 5)
    sd = math.sqrt(1.2e-4 / 4)
    t = 0.014 / (sd / math.sqrt(5))
    assert row["mean_diff"] == pytest.approx(0.014)
    assert row["rel_gain"] == pytest.approx(0.014 / 0.11)
    assert t == pytest.approx(5.715476, rel=1e-6)
    assert row["p_ttest"] == pytest.approx(2 * stats.t.sf(t, df=4))
    half = stats.t.ppf(0.975, df=4) * sd / math.sqrt(5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.014 - half, 0.014 + half))
    # scipy, independently
    reference = stats.ttest_rel(MG_R20, ADAM_R20)
    assert row["p_ttest"] == pytest.approx(reference.pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(reference.confidence_interval(0.95)))
    # every seed improved: the exact sign-flip test is at its floor, 2 / 2^5
    assert row["p_signflip"] == pytest.approx(2 / 32)
    assert row["verdict"] == f"MG better (p={reference.pvalue:.2g}; same direction on all 5 seeds)"
    assert row["n"] == 5 and row["paired_seeds"] == "0 1 2 3 4"


def brute_force_sign_flip(d: np.ndarray) -> float:
    observed = abs(d.sum())
    sums = [abs(np.dot(signs, d)) for signs in itertools.product([-1, 1], repeat=len(d))]
    return float(np.mean([s >= observed - 1e-12 for s in sums]))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_sign_flip_is_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(5):
        d = rng.normal(0.3, 1.0, size=n)
        assert sign_flip_pvalue(d) == pytest.approx(brute_force_sign_flip(d))
    assert sign_flip_pvalue(np.full(n, 0.5)) == pytest.approx(2 / 2**n)
    # scipy's exact permutation test of the mean difference agrees
    d = rng.normal(0.2, 1.0, size=n)
    if n >= 2:
        ref = stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
        )
        assert sign_flip_pvalue(d) == pytest.approx(min(ref.pvalue, 1.0))


def test_sign_flip_large_n_is_sampled_and_close() -> None:
    d = np.random.default_rng(0).normal(0.4, 1.0, size=20)
    ref = stats.ttest_1samp(d, 0.0).pvalue
    assert abs(sign_flip_pvalue(d) - ref) < 0.05


def test_degradation_noise_and_edge_verdicts() -> None:
    worse = paired_test(np.array([0.3, 0.31, 0.29, 0.30, 0.32]), np.array([0.28, 0.30, 0.27, 0.28, 0.31]))
    assert worse["mean_diff"] < 0 and worse["p_ttest"] < 0.05
    assert verdict(worse, "MG").startswith("MG worse (p=")
    noise = paired_test(np.array([0.30, 0.31, 0.29, 0.30, 0.32]), np.array([0.31, 0.29, 0.30, 0.31, 0.30]))
    assert verdict(noise, "MG") == f"no significant difference (p={noise['p_ttest']:.2g})"
    # the t-test is significant but one seed went the other way: the exact test (p 4/64) cannot confirm
    # at 0.05 although it could have with 6 seeds (floor 2/64)
    mixed = paired_test(np.zeros(6), np.array([0.05, 0.05, 0.05, 0.05, 0.05, -0.001]))
    assert mixed["p_ttest"] < 0.05 and mixed["p_signflip"] == pytest.approx(4 / 64)
    assert "better by t-test only" in verdict(mixed, "MG")
    six = paired_test(np.zeros(6), np.array([0.05, 0.04, 0.05, 0.06, 0.05, 0.04]))
    assert six["p_signflip"] == pytest.approx(2 / 64)  # below 0.05: the exact test confirms on its own
    assert verdict(six, "MG") == f"MG better (p={six['p_ttest']:.2g})"
    assert verdict(paired_test(np.ones(3), np.ones(3)), "MG") == "identical results"
    assert verdict(paired_test(np.ones(1), np.full(1, 2.0)), "MG") == "not testable (1 paired seed)"
    assert verdict(paired_test(np.ones(0), np.ones(0)), "MG") == "no paired seeds"


def test_two_seeds_in_the_same_direction_are_not_enough() -> None:
    # two seeds that moved by the same amount: the t-test's p is 0 but the sign-flip floor is 1/2
    two = paired_test(np.array([0.25, 0.5]), np.array([0.375, 0.625]))
    assert two["p_ttest"] == 0.0 and two["p_signflip"] == pytest.approx(0.5)
    assert verdict(two, "MG").startswith("MG better by t-test only")
    three = paired_test(np.array([0.25, 0.5, 0.75]), np.array([0.375, 0.625, 0.875]))
    assert verdict(three, "MG") == "MG better (p=0; same direction on all 3 seeds)"


def test_lower_is_better_for_losses_and_sharpness() -> None:
    lower = paired_test(np.array([1.0, 1.1, 0.9, 1.0, 1.2]), np.array([0.8, 0.9, 0.7, 0.85, 1.0]))
    assert verdict(lower, "MG", lower_is_better=True).startswith("MG better")
    assert verdict(lower, "MG").startswith("MG worse")
    assert [lower_is_better(m) for m in ("sharpness/worst@0.05", "hessian/top_eigenvalue", "train_loss")] == [
        True,
        True,
        True,
    ]
    assert not lower_is_better("test/recall@20")


# ------------------------------------------------------------------------------------------ grouping


def test_grouped_by_config_not_by_folder(tmp_path: Path) -> None:
    # misleading folder names: an Adam run in "mg", MG in "adam"; one setting split over two sweeps
    write_run(tmp_path / "mg" / "0", optimizer="adam", seed=0, metrics={R20: 0.1})
    write_run(tmp_path / "adam" / "0", optimizer="mg", seed=0, metrics={R20: 0.2})
    write_run(tmp_path / "other_sweep" / "7", optimizer="adam", seed=1, metrics={R20: 0.3})
    write_run(tmp_path / "other_sweep" / "8", optimizer="mg", seed=1, metrics={R20: 0.5})
    # same model and data, another reg_weight: a setting of its own
    for seed in (0, 1):
        for opt, value in (("adam", 0.6), ("mg", 0.7)):
            write_run(
                tmp_path / "x" / f"{opt}{seed}",
                optimizer=opt,
                seed=seed,
                metrics={R20: value},
                model_cfg={"reg_weight": 0.1},
            )
    result = report(tmp_path, metrics=[R20])
    summary = result.summary.set_index(["setting", "arm"])["mean"]
    assert summary.to_dict() == pytest.approx(
        {
            ("model.reg_weight=0.1", "Adam"): 0.6,
            ("model.reg_weight=0.1", "MG"): 0.7,
            ("model.reg_weight=2", "Adam"): 0.2,
            ("model.reg_weight=2", "MG"): 0.35,
        }
    )
    comparisons = result.comparisons.set_index("setting")
    assert comparisons.loc["model.reg_weight=2", "mean_diff"] == pytest.approx(0.15)
    assert comparisons.loc["model.reg_weight=2", "paired_seeds"] == "0 1"


def test_scheduler_and_mg_options_define_settings_and_arms(tmp_path: Path) -> None:
    decay = {"scheduler": {"_target_": "torch.optim.lr_scheduler.LambdaLR", "lr_lambda": {"factor": 0.96}}}
    for seed in range(3):
        write_run(tmp_path / f"a{seed}", optimizer="adam", seed=seed, metrics={R20: 0.1 + seed / 100})
        write_run(tmp_path / f"s{seed}", optimizer="adam", seed=seed, metrics={R20: 0.5}, extra_cfg=decay)
        for alpha2, value in ((0.1, 0.2), (0.3, 0.3)):
            write_run(
                tmp_path / f"m{alpha2}_{seed}",
                optimizer="mg",
                seed=seed,
                metrics={R20: value + seed / 100},
                optimizer_cfg={**MG, "alpha2": alpha2},
            )
    result = report(tmp_path, metrics=[R20])
    arms = set(result.summary["arm"])
    assert arms == {"Adam", "MG [alpha2=0.1]", "MG [alpha2=0.3]"}
    settings = dict(zip(result.summary["arm"], result.summary["setting"], strict=False))
    assert settings["MG [alpha2=0.1]"] == "scheduler=null"
    assert set(result.summary["setting"]) == {
        "scheduler=null",
        "scheduler._target_=LambdaLR scheduler.lr_lambda.factor=0.96",
    }
    # each alpha2 against Adam without a scheduler (constant differences: p 0, sign-flip at its floor)
    comparisons = result.comparisons.set_index("arm")
    assert comparisons.loc["MG [alpha2=0.1]", "mean_diff"] == pytest.approx(0.1)
    assert comparisons.loc["MG [alpha2=0.3]", "mean_diff"] == pytest.approx(0.2)
    assert len(result.comparisons) == 2  # the scheduler setting has no MG run: nothing to compare


def test_learning_rate_is_a_setting_shared_by_both_optimizers(tmp_path: Path) -> None:
    for lr, base in ((0.001, 0.1), (0.01, 0.4)):
        for seed in range(2):
            write_run(
                tmp_path / f"adam{lr}_{seed}",
                seed=seed,
                metrics={R20: base},
                optimizer_cfg={**ADAM, "lr": lr},
            )
            write_run(
                tmp_path / f"mg{lr}_{seed}",
                optimizer="mg",
                seed=seed,
                metrics={R20: base + 0.05 * (1 + seed)},
                optimizer_cfg={**MG, "lr": lr},
            )
    comparisons = report(tmp_path, metrics=[R20]).comparisons.set_index("setting")
    assert set(comparisons.index) == {"optimizer.lr=0.001", "optimizer.lr=0.01"}
    assert comparisons["mean_diff"].to_numpy() == pytest.approx([0.075, 0.075])
    assert comparisons.loc["optimizer.lr=0.01", "baseline_mean"] == pytest.approx(0.4)


def test_models_and_data_sets_are_separate(tmp_path: Path) -> None:
    write_pair(tmp_path / "a", [0.1, 0.2], [0.2, 0.3], model="vbpr", data="tiktok")
    write_pair(tmp_path / "b", [0.5, 0.6], [0.4, 0.5], model="bm3", data="tiktok", model_cfg={"dropout": 0.5})
    write_pair(tmp_path / "c", [0.7, 0.8], [0.7, 0.9], model="vbpr", data="baby")
    result = report(tmp_path, metrics=[R20])
    diffs = result.comparisons.set_index(["model", "data"])["mean_diff"].to_dict()
    assert diffs == pytest.approx({("bm3", "tiktok"): -0.1, ("vbpr", "baby"): 0.05, ("vbpr", "tiktok"): 0.1})
    # keys that differ only between models (bm3's dropout) do not make settings
    assert set(result.comparisons["setting"]) == {""}


# ------------------------------------------------------------------------------------------ pairing


def test_pairing_is_by_seed_not_by_order(tmp_path: Path) -> None:
    # written in different seed orders; pairing by position would mix seeds
    adam = {3: 0.30, 1: 0.10, 2: 0.20}
    mg = {1: 0.11, 2: 0.22, 3: 0.33}
    for n, (seed, value) in enumerate(adam.items()):
        write_run(tmp_path / f"{n}", optimizer="adam", seed=seed, metrics={R20: value})
    for n, (seed, value) in enumerate(mg.items()):
        write_run(tmp_path / f"{n + 10}", optimizer="mg", seed=seed, metrics={R20: value})
    row = report(tmp_path, metrics=[R20]).comparisons.iloc[0]
    differences = [mg[s] - adam[s] for s in (1, 2, 3)]
    assert row["mean_diff"] == pytest.approx(np.mean(differences))
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel([0.11, 0.22, 0.33], [0.10, 0.20, 0.30]).pvalue)


def test_unpaired_seeds_are_reported_and_left_out(tmp_path: Path) -> None:
    write_pair(tmp_path, ADAM_R20, MG_R20)
    write_run(tmp_path / "extra_mg", optimizer="mg", seed=5, metrics={R20: 0.9, N20: 0.1})
    write_run(tmp_path / "extra_adam", optimizer="adam", seed=6, metrics={R20: 0.0, N20: 0.1})
    with pytest.warns(ReportWarning, match=r"unpaired seeds.*Adam only: \[6\]; MG only: \[5\]"):
        result = make_report(tmp_path, out=tmp_path / "out", png=False)
    row = result.comparisons.set_index("metric").loc[R20]
    assert row["n"] == 5 and row["paired_seeds"] == "0 1 2 3 4"
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(MG_R20, ADAM_R20).pvalue)
    # the summary counts every run, the gain only paired ones
    summary = result.summary.set_index(["arm", "metric"])
    assert summary.loc[("MG", R20), "n_seeds"] == 6
    assert summary.loc[("MG", R20), "mean"] == pytest.approx(np.mean([*MG_R20, 0.9]))
    assert row["arm_mean"] == pytest.approx(np.mean(MG_R20))
    assert "unpaired seeds" in result.markdown


def test_duplicate_runs_keep_the_latest_with_a_warning(tmp_path: Path) -> None:
    write_pair(tmp_path, [0.1, 0.2], [0.2, 0.3])
    old = write_run(tmp_path / "rerun", optimizer="mg", seed=0, metrics={R20: 0.9, N20: 0.1})
    os.utime(old / "metrics.json", (time.time() - 1000, time.time() - 1000))  # older than the others
    with pytest.warns(ReportWarning, match="seed 0: 2 runs"):
        result = make_report(tmp_path, out=tmp_path / "out", png=False)
    assert result.comparisons.set_index("metric").loc[R20, "mean_diff"] == pytest.approx(0.1)


def test_runs_without_config_and_other_tasks(tmp_path: Path) -> None:
    write_pair(tmp_path, [0.1, 0.2], [0.2, 0.3], config=False)
    evaluation = write_run(tmp_path / "eval", optimizer="adam", seed=0, metrics={R20: 0.0})
    (evaluation / ".hydra" / "resolved.yaml").write_text(yaml.safe_dump({"task_name": "eval"}))
    with pytest.warns(ReportWarning, match="no saved config"):
        result = make_report(tmp_path, out=tmp_path / "out", png=False)
    assert len(result.runs.frame) == 4
    assert "1 run(s) of task 'eval' left out" in result.markdown
    # runs with a config are not pooled with runs without one
    write_pair(tmp_path / "configured", [0.5, 0.6], [0.5, 0.6])
    with pytest.warns(ReportWarning, match="no saved config"):
        result = make_report(tmp_path, out=tmp_path / "out", png=False)
    diffs = result.comparisons.groupby("setting")["mean_diff"].first().to_dict()
    assert diffs == pytest.approx({"": 0.0, "(no saved config)": 0.1})


def test_composed_config_is_used_when_resolved_is_missing(tmp_path: Path) -> None:
    for seed in (0, 1):
        for reg in (0.1, 1.0):
            run = write_run(tmp_path / f"{reg}_{seed}", seed=seed, metrics={R20: reg}, config=False)
            (run / ".hydra").mkdir()
            composed = {
                "seed": seed,
                "optimized_metric": "val/recall@20",
                "model": {"reg_weight": reg},
                "callbacks": {"early_stopping": {"monitor": "${optimized_metric}"}},
                "paths": {"output_dir": "${hydra:runtime.output_dir}"},
            }
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(composed))
    runs, problems = collect(tmp_path)
    assert not problems
    labelled = label_settings(runs).frame
    assert set(labelled["setting"]) == {"model.reg_weight=0.1", "model.reg_weight=1"}
    assert set(runs.config["callbacks.early_stopping.monitor"]) == {"val/recall@20"}


# ------------------------------------------------------------------------------------------ files


def test_files_written_and_consistent(tmp_path: Path) -> None:
    write_pair(tmp_path / "runs", ADAM_R20, MG_R20)
    out = tmp_path / "elsewhere"
    result = make_report(tmp_path / "runs", out=out)
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "report.png"}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "report.csv")
    assert set(table["metric"]) == {R20, N20} and len(table) == 4
    mg = table[(table["arm"] == "MG") & (table["metric"] == R20)].iloc[0]
    assert mg["mean"] == pytest.approx(0.124) and mg["n_seeds"] == 5
    assert mg["p_ttest"] == pytest.approx(stats.ttest_rel(MG_R20, ADAM_R20).pvalue)
    assert mg["verdict"].startswith("MG better (p=")
    assert table[table["arm"] == "Adam"]["verdict"].isna().all()
    markdown = (out / "report.md").read_text()
    assert markdown == result.markdown
    assert "| vbpr | tiktok | Adam | 5 |" in markdown and "0.1100 ± 0.0158" in markdown
    assert "MG vs Adam" in markdown and "+12.73%" in markdown


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_pair(tmp_path, [0.1, 0.2, 0.3], [0.2, 0.3, 0.5])
    main([str(tmp_path), "--metrics", R20, "--no-png", "--baseline", "adam"])
    assert "MG vs Adam" in capsys.readouterr().out
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "report.png").exists()
    with pytest.raises(SystemExit) as error:
        main([str(tmp_path / "nothing_here")])
    assert error.value.code == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--metrics", "test/unknown@20"])


# ------------------------------------------------------------------------------------------ end to end


def test_end_to_end_with_two_tiny_runs(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    from mgrec.train import train

    for number, optimizer in enumerate(("adam", "mg")):
        cfg = make_cfg(
            "model=lightgcn",
            f"optimizer={optimizer}",
            "trainer.max_epochs=1",
            "seed=3",
            "data.n_interactions=2000",
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "multirun" / str(number))
        train(cfg)
    result = make_report(tmp_path / "multirun", png=False)
    assert set(result.runs.frame["setting"]) == {""}  # trainer paths and folders do not split the runs
    assert list(result.comparisons["arm"]) == ["MG", "MG"]
    saved = [json.loads((tmp_path / "multirun" / str(n) / "metrics.json").read_text()) for n in (0, 1)]
    for metric, row in result.comparisons.set_index("metric").iterrows():
        difference = saved[1][metric] - saved[0][metric]
        assert row["mean_diff"] == pytest.approx(difference)
        assert row["verdict"] == ("identical results" if difference == 0 else "not testable (1 paired seed)")
    assert (result.comparisons["mean_diff"] != 0).any()  # MG changed the outcome


def test_results_table_script_agrees_with_the_report(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_pair(tmp_path, ADAM_R20, MG_R20)
    write_run(tmp_path / "itemknn_a", model="itemknncbf", seed=0, metrics={R20: 0.05, N20: 0.02})
    write_run(
        tmp_path / "itemknn_m", model="itemknncbf", optimizer="mg", seed=0, metrics={R20: 0.05, N20: 0.02}
    )
    frame = script.load(str(tmp_path))
    means = script.markdown_table_of_means(frame, [R20])
    assert "| tiktok | vbpr | adam | 5 | 3 3 3 3 3 | 0.1100 ± 0.0158 |" in means
    paired = script.paired_table(frame, [R20, N20])
    p = stats.ttest_rel(MG_R20, ADAM_R20).pvalue
    assert f"| tiktok | vbpr | 5 | +0.0140 (+12.7%) | {p:.2g} |" in paired
    assert "| tiktok | itemknncbf | 1 | +0.0000 (+0.0%) | identical |" in paired
    assert paired.splitlines()[0].count("| p |") == 2


def test_an_optimizer_without_baseline_runs_is_reported(tmp_path: Path) -> None:
    write_pair(tmp_path / "pair", [0.1, 0.2], [0.2, 0.3])
    write_run(tmp_path / "lonely", model="bm3", optimizer="mg", seed=0, metrics={R20: 0.4, N20: 0.2})
    with pytest.warns(ReportWarning, match="bm3/tiktok: no adam run to compare MG with"):
        result = make_report(tmp_path, out=tmp_path / "out", png=False)
    assert set(result.comparisons["model"]) == {"vbpr"}
    assert set(result.summary["model"]) == {"vbpr", "bm3"}


def test_runs_without_the_noise_key_group_with_clean_noise_runs(tmp_path: Path) -> None:
    """Runs from before `data.noise` existed and runs with `data.noise.kind=none` are one setting; a fused
    Adam kernel is the same optimizer; training-time noise is a setting of its own."""
    clean = {"kind": "none", "strength": 0.0, "seed": 0, "modalities": None}
    write_run(tmp_path / "0", seed=0, metrics={R20: 0.1})
    write_run(tmp_path / "1", seed=1, metrics={R20: 0.2}, optimizer_cfg={**ADAM, "fused": True},
              extra_cfg={"data": {"_target_": "x.Data", "name": "tiktok", "noise": clean}})  # fmt: skip
    noisy = {**clean, "kind": "gaussian", "strength": 5.0}
    write_run(tmp_path / "2", seed=0, metrics={R20: 0.3},
              extra_cfg={"data": {"_target_": "x.Data", "name": "tiktok", "noise": noisy}})  # fmt: skip
    runs = label_settings(collect(tmp_path)[0])
    settings = runs.frame.set_index("seed", append=True)["setting"].tolist()
    assert settings[0] == settings[1] != settings[2]


def test_small_values_keep_their_digits() -> None:
    from mgrec.report import _mean_std

    assert _mean_std(0.25, 0.01) == "0.2500 ± 0.0100"
    assert _mean_std(0.00091, 0.00002) == "9.100e-04 ± 2.000e-05"  # not 0.0009 ± 0.0000
    assert _mean_std(0.0, float("nan")) == "0.0000"
