"""Robustness curves: a metric against the strength of a feature perturbation, for a baseline and MG.

    python -m mgrec.robustness --baseline <runs...> --mg <runs...> --kind gaussian \\
        --strengths 40 20 10 5 0 [--metrics test/recall@20,test/ndcg@20] [--modalities image] \\
        [--seed 0] [--data noise.kind=none] [--out logs/robustness/gaussian]

Each run is a training run folder (its `checkpoints/best.ckpt`), a `.ckpt` file, or a folder holding run
folders (every one below it, e.g. a multirun over seeds). Every checkpoint is evaluated in this process on
its own data set, clean (kind none) and at every strength, exactly as `eval.py ckpt_path=...
perturb=<kind> perturb.strength=<s> perturb.seed=<seed>` does: the features are perturbed before the model
is built (graphs derived from them are rebuilt) and trainable feature tables after the checkpoint is loaded.
Every run sees the same perturbation (one `--seed`), so the groups are compared on the same noise.

Writes into `--out`:
- `robustness_runs.csv`: one row per (group, run, strength) with all test metrics;
- `robustness.csv` and `robustness.md`: per group and strength, the mean and standard deviation over runs of
  each metric, the share of the clean metric retained (mean over runs of perturbed / clean), and, with two
  or more runs in each group, Welch's t-test p-value for a difference in retained share between groups;
- `robustness.png`: the first metric against strength, one curve per group (error bars: standard
  deviation over runs), the clean level of each group dashed.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from mgrec.eval import load_model, run_dir_of, saved_config
from mgrec.perturb import Perturbation, apply_to_model, perturb_data
from mgrec.train import build_data
from mgrec.utils import component_names

log = logging.getLogger("mgrec")

STRENGTH_HEADERS = {"gaussian": "SNR (dB)", "replace": "share replaced", "drop": "share zeroed"}

AXIS_LABELS = {
    "gaussian": "signal-to-noise ratio (dB), noisier to the right",
    "replace": "share of items given another item's features",
    "drop": "share of items with zeroed features",
}


def find_checkpoints(paths: Sequence[str | Path], checkpoint: str = "best") -> list[Path]:
    """The checkpoints named by run folders, `.ckpt` files or folders of run folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix == ".ckpt":
            found.append(path)
        elif (path / ".hydra" / "resolved.yaml").is_file():
            found.append(path / "checkpoints" / f"{checkpoint}.ckpt")
        elif path.is_dir():
            below = sorted(p.parent.parent for p in path.rglob(".hydra/resolved.yaml"))
            runs = [run / "checkpoints" / f"{checkpoint}.ckpt" for run in below]
            found.extend(run for run in runs if run.is_file())
            if not runs:
                raise FileNotFoundError(
                    f"{path}: no training run folder (with .hydra/resolved.yaml) below it"
                )
        else:
            raise FileNotFoundError(f"{path}: neither a run folder nor a checkpoint")
    found = list(dict.fromkeys(path.resolve() for path in found))
    for path in found:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
    return found


def evaluate_checkpoint(
    checkpoint: str | Path,
    perturbations: Sequence[Perturbation],
    data_overrides: Mapping[str, Any] | None = None,
    accelerator: str = "auto",
) -> list[dict[str, Any]]:
    """Test metrics of `checkpoint` under each perturbation (the data set is read once)."""
    run_cfg = saved_config(run_dir_of(checkpoint))
    datamodule = build_data(OmegaConf.merge(run_cfg.data, dict(data_overrides or {})))
    data = datamodule.data
    rows = []
    for perturbation in perturbations:
        datamodule.data = perturb_data(data, perturbation)
        model = load_model(checkpoint, run_cfg, datamodule.data)
        apply_to_model(model, perturbation)
        trainer = Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            callbacks=[],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
        rows.append(
            {
                **{k: float(v) for k, v in metrics.items() if not k.endswith("_best")},
                **component_names(run_cfg),
                **perturbation.record(),
                "run_seed": int(run_cfg.seed),
                "checkpoint": str(Path(checkpoint).resolve()),
            }
        )
    datamodule.data = data
    return rows


def robustness_runs(
    groups: Mapping[str, Sequence[str | Path]],
    kind: str,
    strengths: Sequence[float],
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    data_overrides: Mapping[str, Any] | None = None,
    accelerator: str = "auto",
) -> pd.DataFrame:
    """One row per (group, checkpoint, strength), the clean evaluation included as strength NaN."""
    if kind == "none":
        raise ValueError("a robustness curve needs a perturbation kind: gaussian, replace or drop")
    perturbations = [Perturbation()] + [
        Perturbation(kind, strength, seed, tuple(modalities) if modalities else None)
        for strength in strengths
    ]
    rows = []
    for group, paths in groups.items():
        for checkpoint in find_checkpoints(paths):
            log.info("%s: evaluating %s at %d strengths", group, checkpoint, len(strengths))
            for row in evaluate_checkpoint(checkpoint, perturbations, data_overrides, accelerator):
                rows.append({"group": group, **row})
    frame = pd.DataFrame(rows)
    frame["clean"] = frame["perturb/kind"] == "none"
    frame.loc[frame["clean"], "perturb/strength"] = math.nan
    return frame


def summarise(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per group, strength and metric: mean, std (ddof 1) and count over runs, and the retained share."""
    missing = [m for m in metrics if m not in runs.columns]
    if missing:
        raise KeyError(f"metric(s) {missing} not evaluated; available: {sorted(c for c in runs if '/' in c)}")
    clean = runs[runs["clean"]].set_index(["group", "checkpoint"])
    rows = []
    for (group, strength), frame in runs[~runs["clean"]].groupby(["group", "perturb/strength"], sort=False):
        reference = clean.loc[[(group, c) for c in frame["checkpoint"]]]
        for metric in metrics:
            values = frame[metric].to_numpy()
            retained = values / reference[metric].to_numpy()
            rows.append(
                {
                    "group": group,
                    "strength": float(strength),
                    "metric": metric,
                    "mean": values.mean(),
                    "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                    "runs": len(values),
                    "clean_mean": reference[metric].mean(),
                    "clean_std": reference[metric].std(ddof=1) if len(reference) > 1 else math.nan,
                    "retained_mean": retained.mean(),
                    "retained_std": retained.std(ddof=1) if len(retained) > 1 else math.nan,
                    "retained_values": retained,
                }
            )
    return pd.DataFrame(rows)


def _welch_p(summary: pd.DataFrame, groups: Sequence[str]) -> pd.Series:
    """Per (strength, metric), Welch's t-test p-value of retained share, first group against the second."""
    from scipy import stats

    p = pd.Series(math.nan, index=summary.index)
    if len(groups) != 2:
        return p
    for (_, _), frame in summary.groupby(["strength", "metric"], sort=False):
        by_group = {row.group: row.retained_values for row in frame.itertuples()}
        a, b = (by_group.get(g) for g in groups)
        if a is not None and b is not None and len(a) > 1 and len(b) > 1:
            p[frame.index] = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p


def markdown(summary: pd.DataFrame, groups: Sequence[str], kind: str) -> str:
    """One table per metric: rows = strengths, per group `mean ± std (retained %)`, and the p-value."""
    out = []
    for metric, frame in summary.groupby("metric", sort=False):
        header = [STRENGTH_HEADERS.get(kind, "strength"), *groups]
        if len(groups) == 2:
            header += [f"{groups[1]} − {groups[0]}", "p (retained)"]
        lines = [
            f"### {metric} under `{kind}`",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        clean_cells = ["clean"]
        for group in groups:
            rows = frame[frame["group"] == group]
            if rows.empty:
                clean_cells.append("-")
                continue
            std = rows["clean_std"].iloc[0]
            spread = "" if math.isnan(std) else f" ± {std:.4f}"
            clean_cells.append(f"{rows['clean_mean'].iloc[0]:.4f}{spread} (n={int(rows['runs'].iloc[0])})")
        if len(groups) == 2:
            clean_cells += ["", ""]
        lines.append("| " + " | ".join(clean_cells) + " |")
        for strength, rows in frame.groupby("strength", sort=False):
            by_group = {row.group: row for row in rows.itertuples()}
            cells = [f"{strength:g}"]
            for group in groups:
                row = by_group.get(group)
                if row is None:
                    cells.append("-")
                    continue
                spread = "" if math.isnan(row.std) else f" ± {row.std:.4f}"
                cells.append(f"{row.mean:.4f}{spread} ({row.retained_mean:.1%}, n={row.runs})")
            if len(groups) == 2:
                a, b = (by_group.get(g) for g in groups)
                cells.append(f"{b.mean - a.mean:+.4f}" if a is not None and b is not None else "-")
                p = rows["p"].iloc[0]
                cells.append("" if math.isnan(p) else f"{p:.2g}")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    note = (
        "Cells: mean ± standard deviation over runs (share of the clean metric retained, number of runs). "
        "p: Welch's t-test on the retained share between the two groups (two or more runs each)."
    )
    return "\n\n".join(out) + f"\n\n{note}\n"


def plot(summary: pd.DataFrame, groups: Sequence[str], kind: str, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    frame = summary[summary["metric"] == metric]
    for index, group in enumerate(groups):
        rows = frame[frame["group"] == group].sort_values("strength")
        if rows.empty:
            continue
        color = f"C{index}"
        errors = rows["std"].fillna(0.0) if rows["std"].notna().any() else None
        axes.errorbar(
            rows["strength"], rows["mean"], yerr=errors, marker="o", capsize=3, color=color,
            label=f"{group} (n={int(rows['runs'].max())})",
        )  # fmt: skip
        axes.axhline(rows["clean_mean"].iloc[0], color=color, linestyle="--", linewidth=1, alpha=0.7)
    if kind == "gaussian":
        axes.invert_xaxis()
    axes.set_xlabel(AXIS_LABELS.get(kind, "strength"))
    axes.set_ylabel(metric)
    axes.set_title(f"{kind} feature perturbation (dashed: clean features)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def robustness(
    groups: Mapping[str, Sequence[str | Path]],
    kind: str,
    strengths: Sequence[float],
    out: str | Path,
    metrics: Sequence[str] = ("test/recall@20", "test/ndcg@20"),
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    data_overrides: Mapping[str, Any] | None = None,
    accelerator: str = "auto",
) -> pd.DataFrame:
    """Evaluate, then write the run table, the summary (CSV and Markdown) and the PNG into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = robustness_runs(groups, kind, strengths, seed, modalities, data_overrides, accelerator)
    runs.to_csv(out / "robustness_runs.csv", index=False)
    names = list(groups)
    summary = summarise(runs, metrics)
    summary["p"] = _welch_p(summary, names)
    summary.drop(columns="retained_values").to_csv(out / "robustness.csv", index=False)
    (out / "robustness.md").write_text(markdown(summary, names, kind))
    plot(summary, names, kind, metrics[0], out / "robustness.png")
    log.info("robustness table and plot written to %s", out)
    return summary.drop(columns="retained_values")


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        prog="python -m mgrec.robustness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--baseline", nargs="+", required=True, help="baseline runs or checkpoints")
    parser.add_argument("--mg", nargs="+", required=True, help="Mirror Gradient runs or checkpoints")
    parser.add_argument("--labels", nargs=2, default=["baseline", "mg"], metavar=("BASELINE", "MG"))
    parser.add_argument("--kind", required=True, choices=["gaussian", "replace", "drop"])
    parser.add_argument("--strengths", nargs="+", type=float, required=True)
    parser.add_argument(
        "--metrics", default="test/recall@20,test/ndcg@20", help="comma-separated; plot: first"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the perturbation's seed (the same for every run)"
    )
    parser.add_argument("--modalities", nargs="+", help="perturb only these modalities (default: all)")
    parser.add_argument(
        "--data", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of the runs' data configs"
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--out", type=Path, help="output folder (default: logs/robustness/<kind>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist(args.data)) if args.data else None
    summary = robustness(
        {args.labels[0]: args.baseline, args.labels[1]: args.mg},
        args.kind,
        args.strengths,
        args.out or Path("logs") / "robustness" / args.kind,
        metrics=args.metrics.split(","),
        seed=args.seed,
        modalities=args.modalities,
        data_overrides=overrides,
        accelerator=args.accelerator,
    )
    print((Path(args.out or Path("logs") / "robustness" / args.kind) / "robustness.md").read_text())
    return summary


if __name__ == "__main__":
    main()
