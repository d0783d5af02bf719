"""Pick the best configuration of a sweep by validation only.

    python -m mgrec.select <multirun folder> [--metric val/recall@20] [--report test/recall@20,test/ndcg@20]

Reads every `metrics.json` below the folder, groups runs by their Hydra overrides without `seed`,
averages over seeds, ranks configurations by the mean validation metric and prints the table; the
test columns are reported for reading, never used to choose.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml


def collect_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run below `folder`: its metrics and `config` (its overrides without the seed)."""
    rows = []
    for path in sorted(Path(folder).rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        overrides_file = path.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        config = " ".join(o for o in overrides or [] if not o.lstrip("+~").startswith("seed="))
        rows.append({**metrics, "config": config or "(defaults)", "run_dir": str(path.parent)})
    if not rows:
        raise FileNotFoundError(f"{folder}: no metrics.json found below it")
    return pd.DataFrame(rows)


def rank_configs(runs: pd.DataFrame, metric: str, report: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per configuration, best validation mean first."""
    columns = [metric, *[c for c in report if c in runs.columns]]
    grouped = runs.groupby("config")[columns]
    table = grouped.mean().add_suffix(" mean").join(grouped.std(ddof=1).add_suffix(" std"))
    table["seeds"] = runs.groupby("config").size()
    return table.sort_values(f"{metric} mean", ascending=False)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder")
    parser.add_argument("--metric", default="val/recall@20")
    parser.add_argument("--report", default="test/recall@20,test/ndcg@20")
    args = parser.parse_args(argv)
    table = rank_configs(collect_runs(args.folder), args.metric, args.report.split(","))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 80):
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nselected by {args.metric} (validation): {table.index[0]}")
    return table


if __name__ == "__main__":
    main()
