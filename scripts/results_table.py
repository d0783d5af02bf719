"""Aggregate training runs into a Markdown table: one row per (data, model, optimizer), mean and standard
deviation over seeds of the test metrics at the best validation epoch.

    python scripts/results_table.py logs/results [--metrics test/recall@20,test/ndcg@20] [--models vbpr,bm3]
                                    [--paired test/recall@20,test/ndcg@20] [--out docs/results.md]

`--paired`: a second table, Mirror Gradient against Adam per (data, model), runs paired by seed: the mean
difference, its size relative to Adam, and the p-value of a paired t-test (scipy `ttest_rel`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scipy import stats

from mgrec.select import collect_runs


def markdown_table(folder: str, metrics: list[str], models: list[str] | None = None) -> str:
    runs = collect_runs(folder)
    if models:
        runs = runs[runs["model"].isin(models)]
    keys = ["data", "model", "optimizer"]
    grouped = runs.groupby(keys)
    header = [*keys, "seeds", "best epoch", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, frame in grouped:
        cells = [
            *group,
            str(len(frame)),
            " ".join("-" if e != e else str(int(e)) for e in frame["best_epoch"]),
        ]
        for metric in metrics:
            values = frame[metric]
            spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.4f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(folder: str, metrics: list[str], models: list[str] | None = None) -> str:
    runs = collect_runs(folder)
    if models:
        runs = runs[runs["model"].isin(models)]
    header = ["data", "model", "seeds"]
    for metric in metrics:
        header += [f"Δ {metric} (rel.)", "p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (data, model), frame in runs.groupby(["data", "model"]):
        if not {"adam", "mg"} <= set(frame["optimizer"]):
            continue
        by_seed = frame.pivot_table(
            index="seed", columns="optimizer", values=metrics, aggfunc="first"
        ).dropna()
        if by_seed.empty:
            continue
        cells = [data, model, str(len(by_seed))]
        for metric in metrics:
            adam, mg = by_seed[(metric, "adam")], by_seed[(metric, "mg")]
            delta = float((mg - adam).mean())
            relative = delta / float(adam.mean()) if float(adam.mean()) else float("nan")
            identical = bool(((mg - adam).abs() < 1e-12).all())
            p = (
                "identical"
                if identical
                else f"{stats.ttest_rel(mg, adam).pvalue:.2g}"
                if len(by_seed) > 1
                else ""
            )
            cells += [f"{delta:+.4f} ({relative:+.1%})", p]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    table = markdown_table(
        args.folder, args.metrics.split(","), args.models.split(",") if args.models else None
    )
    if args.paired:
        models = args.models.split(",") if args.models else None
        table += "\n" + paired_table(args.folder, args.paired.split(","), models)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
