"""Aggregate training runs into a Markdown table: one row per (data, model, optimizer), mean and standard
deviation over seeds of the test metrics at the best validation epoch.

    python scripts/results_table.py logs/results [--metrics test/recall@20,test/ndcg@20] [--models vbpr,bm3]
                                    [--out docs/results.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
        cells = [*group, str(len(frame)), " ".join(str(int(e)) for e in frame["best_epoch"])]
        for metric in metrics:
            values = frame[metric]
            spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.4f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder")
    parser.add_argument("--metrics", default="val/recall@20,test/recall@20,test/ndcg@20")
    parser.add_argument("--models", help="only these models, comma-separated (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table = markdown_table(
        args.folder, args.metrics.split(","), args.models.split(",") if args.models else None
    )
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
