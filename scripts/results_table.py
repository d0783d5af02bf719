"""The Markdown tables of docs/results.md, computed by `mgrec.report` (which groups runs by config and pairs
them by seed; `python -m mgrec.report` writes the full report with CI, sign-flip test, verdicts and a chart).

    python scripts/results_table.py logs/results [--metrics test/recall@20,test/ndcg@20] [--models vbpr,bm3]
                                    [--paired test/recall@20,test/ndcg@20] [--out docs/results.md]

First table: one row per (data, model, optimizer) and setting (config keys that differ between runs of a
model on a data set), the seeds, best epochs, and mean ± standard deviation over seeds of each metric.
`--paired`: a second table, Mirror Gradient against Adam per (data, model), runs paired by seed: the mean
difference, its size relative to Adam, and the p-value of a paired t-test.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mgrec.report import (
    ReportWarning,
    Runs,
    collect,
    compare,
    drop_duplicates,
    label_settings,
    markdown_table,
)


def load(folder: str, models: Sequence[str] | None = None) -> pd.DataFrame:
    """The labelled runs below `folder` (one per setting, optimizer and seed), optionally of some models."""
    runs, problems = collect(folder)
    if models:
        keep = runs.frame["model"].isin(models)
        runs = Runs(runs.frame[keep], runs.config[keep], runs.notes)
    frame, duplicates = drop_duplicates(label_settings(runs).frame)
    for problem in problems + duplicates:
        warnings.warn(problem, ReportWarning, stacklevel=2)
    # the optimizer's own name, with the optimizer options that differ between its runs (mg [alpha2=0.3])
    frame["optimizer"] = frame["optimizer"] + frame["arm"].str.partition(" [")[[1, 2]].sum(axis=1)
    return frame


def _with_setting(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns="setting") if (table["setting"] == "").all() else table


def markdown_table_of_means(frame: pd.DataFrame, metrics: Sequence[str]) -> str:
    keys = ["data", "model", "setting", "optimizer"]
    grouped = frame.groupby(keys, sort=True)
    table = grouped.size().rename("seeds").to_frame()
    table["best epoch"] = grouped["best_epoch"].agg(
        lambda e: " ".join("-" if pd.isna(x) else str(int(x)) for x in e)
    )
    for metric in metrics:
        mean, std = grouped[metric].mean(), grouped[metric].std(ddof=1)
        table[metric] = [
            f"{m:.4f}" + (f" ± {s:.4f}" if pd.notna(s) else "") for m, s in zip(mean, std, strict=True)
        ]
    return markdown_table(_with_setting(table.reset_index()))


def paired_table(frame: pd.DataFrame, metrics: Sequence[str]) -> str:
    comparisons, problems = compare(frame, metrics, baseline="adam")
    for problem in problems:
        warnings.warn(problem, ReportWarning, stacklevel=2)
    comparisons = comparisons[comparisons["arm"].str.startswith("MG") & (comparisons["baseline"] == "Adam")]
    header = ["data", "model", "setting", "seeds"]
    for metric in metrics:
        header += [f"Δ {metric} (rel.)", "p"]
    rows = []
    for (data, model, setting, arm), block in comparisons.groupby(["data", "model", "setting", "arm"]):
        by_metric = block.set_index("metric")
        row = [
            data,
            model,
            setting if arm == "MG" else f"{setting} {arm}".strip(),
            str(by_metric["n"].iloc[0]),
        ]
        for metric in metrics:
            r = by_metric.loc[metric]
            identical = r["verdict"] == "identical results"
            p = "identical" if identical else ("" if r["n"] < 2 else f"{r['p_ttest']:.2g}")
            row += [f"{r['mean_diff']:+.4f} ({r['rel_gain']:+.1%})", p]
        rows.append(row)
    return markdown_table(_with_setting(pd.DataFrame(rows, columns=header)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder")
    parser.add_argument("--metrics", default="val/recall@20,test/recall@20,test/ndcg@20")
    parser.add_argument("--models", help="only these models, comma-separated (default: all)")
    parser.add_argument("--paired", help="metrics of a paired MG-vs-Adam table, comma-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    frame = load(args.folder, args.models.split(",") if args.models else None)
    table = markdown_table_of_means(frame, args.metrics.split(","))
    if args.paired:
        table += "\n" + paired_table(frame, args.paired.split(","))
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
