"""Compare optimizers over seeds: Markdown, CSV and PNG reports of many training runs.

    python -m mgrec.report <folder> [--out DIR] [--metrics test/recall@20,test/ndcg@20] [--baseline adam]
                                    [--alpha 0.05] [--ignore KEY_PATTERN ...] [--task train]

Reads every `metrics.json` below `<folder>` (test metrics at the best validation epoch, as `train.py` writes
them) with the run's saved config (`.hydra/resolved.yaml`, else `.hydra/config.yaml`). Runs are grouped by
their config, never by folder names: per model and data set, every config key whose value differs between
runs (other than the seed and keys that do not change results, `IGNORED_KEYS`) defines a *setting*; within
a setting, runs differ by *optimizer* (plus optimizer-only keys such as MG's `alpha2` when those vary).

Writes into `--out` (default: `<folder>`):

- `report.md`: per model, data set, setting and optimizer the number of seeds and the mean and standard
  deviation over seeds of each metric; then every optimizer against the baseline (`--baseline`, Adam by
  default), runs paired by seed: the mean paired difference with its confidence interval, the relative gain,
  the p-values of a paired t-test and of an exact sign-flip permutation test, and a plain-language verdict.
- `report.csv`: the same numbers in long format, one row per (model, data, setting, optimizer, metric).
- `report.png`: grouped bars (mean, error bars one standard deviation) per model x data set x setting.

Seeds without a partner in the other arm are reported and left out of the paired test, with a warning.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf
from scipy import stats

DEFAULT_METRICS: tuple[str, ...] = ("test/recall@20", "test/ndcg@20")
# metrics where lower is better (fnmatch patterns): the verdict calls a decrease "better"
LOWER_IS_BETTER: tuple[str, ...] = ("sharpness/*", "hessian/*", "*loss*")
# the fewest paired seeds whose agreement in sign can back a t-test (sign-flip p = 2 / 2^n <= 0.25)
MIN_SEEDS_SAME_DIRECTION = 3
# config keys (fnmatch patterns over dotted keys) that never distinguish two settings: the seed, where
# files go, logging and progress display, hardware, and names already carried by the model / data /
# optimizer columns
IGNORED_KEYS: tuple[str, ...] = (
    "seed",
    "tags",
    "ckpt_path",
    "task_name",
    "paths.*",
    "hydra.*",
    "extras.*",
    "logger.*",
    "local.*",
    "callbacks.*.dirpath",
    "callbacks.*.filename",
    "callbacks.*.verbose",
    "callbacks.rich_progress_bar*",
    "data.name",
    "data.path",
    "data.builder",
    "data.sampling_seed",
    "data.eval_batch_size",
    "data.num_workers",
    "data.pin_memory",
    "model._target_",
    "model.graph_cache_dir",
    "optimizer._target_",
    "optimizer.optimizer._target_",
    "*._partial_",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy*",
    "trainer.sync_batchnorm",
    "trainer.deterministic",
    "trainer.profiler*",
    # the same update computed by one fused kernel or by the loop (added to the optimizer configs later)
    "optimizer.fused",
    "optimizer.optimizer.fused",
)
# the columns every run carries; the config keys live in `Runs.config`
ID_COLUMNS: tuple[str, ...] = ("model", "data", "optimizer", "seed")
DISPLAY_NAMES = {"mg": "MG", "adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
EXACT_SIGN_FLIP_MAX_N = 16  # 2^16 sign patterns; above, a seeded Monte Carlo sample of as many
MISSING = "(none)"
NO_CONFIG = "(no saved config)"


class ReportWarning(UserWarning):
    """A problem with the runs that the report works around (unpaired or duplicated seeds, no config)."""


@dataclass
class Runs:
    """The runs below a folder: `frame` has one row per run (`run_dir`, `model`, `data`, `optimizer`, `seed`,
    the metrics, then `setting` and `arm` once labelled); `config` holds their flattened configs (same index,
    one column per dotted key, NaN where a run's config lacks the key)."""

    frame: pd.DataFrame
    config: pd.DataFrame
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What `make_report` computed and where it wrote it."""

    runs: Runs
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    warnings: list[str]
    markdown: str
    paths: dict[str, Path]


# ----------------------------------------------------------------------------------------------- reading


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}, "c": [1, 2]}` -> `{"a.b": 1, "c": "[1, 2]"}`: dotted keys, lists as JSON text, None
    as the string "null" (so that a key set to null differs from an absent key)."""
    if isinstance(config, dict):
        if not config and prefix:
            return {prefix[:-1]: "{}"}
        return {k: v for key, value in config.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    key = prefix[:-1]
    if isinstance(config, list | tuple):
        return {key: json.dumps(config, sort_keys=True, default=str)}
    return {key: "null" if config is None else config}


def _resolve_leaves(config: DictConfig) -> dict[str, Any]:
    """A config's leaves, each interpolation resolved where it can be (Hydra's own resolvers cannot be
    outside a job: those leaves keep their `${...}` text)."""
    raw = flatten(OmegaConf.to_container(config, resolve=False))
    resolved = {}
    for key, value in raw.items():
        if isinstance(value, str) and "${" in value:
            try:
                node = OmegaConf.select(config, key, throw_on_missing=False)
                value = node if not isinstance(node, DictConfig | ListConfig) else str(node)
            except Exception:  # an unresolvable interpolation (hydra:..., now:...): keep its text
                pass
        resolved[key] = value
    return resolved


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The flattened config a run saved: `.hydra/resolved.yaml` (every interpolation resolved, written by
    `train.py`), else Hydra's `.hydra/config.yaml` (interpolations resolved where possible), else None."""
    resolved = run_dir / ".hydra" / "resolved.yaml"
    if resolved.is_file():
        return flatten(OmegaConf.to_container(OmegaConf.load(resolved), resolve=False))
    composed = run_dir / ".hydra" / "config.yaml"
    if composed.is_file():
        loaded = OmegaConf.load(composed)
        return _resolve_leaves(loaded) if isinstance(loaded, DictConfig) else None
    return None


def without_clean_noise(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Drop `data.noise.*` when there is no training-time noise, so runs from before the key existed and
    runs with `data.noise.kind=none` form one setting."""
    if config is None or str(config.get("data.noise.kind", "none")) not in {"none", "None"}:
        return config
    return {k: v for k, v in config.items() if not k.startswith("data.noise.")}


def ignored(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def collect(
    folder: str | Path, ignore: Sequence[str] = (), task: str | None = "train"
) -> tuple[Runs, list[str]]:
    """Every run below `folder` with a `metrics.json`. Returns the runs and the warnings raised reading them.

    `task`: keep runs whose config has this `task_name` (train runs by default; eval.py's runs write
    metrics.json too); None keeps all. `ignore`: more key patterns to leave out of the settings.
    """
    patterns = (*IGNORED_KEYS, *ignore)
    rows, configs, problems, notes = [], [], [], []
    skipped_tasks: dict[str, int] = {}
    for path in sorted(Path(folder).rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            problems.append(f"{path}: unreadable ({error}); left out")
            continue
        if not isinstance(metrics, dict) or not set(ID_COLUMNS) <= set(metrics):
            problems.append(f"{path}: lacks {', '.join(ID_COLUMNS)}; left out")
            continue
        config = without_clean_noise(read_config(path.parent))
        run_task = str((config or {}).get("task_name", "train"))
        if task is not None and run_task != task:
            skipped_tasks[run_task] = skipped_tasks.get(run_task, 0) + 1
            continue
        if config is None:
            problems.append(
                f"{path.parent}: no saved config (.hydra/): grouped with other such runs by model, data and "
                "optimizer only"
            )
        rows.append({**metrics, "run_dir": str(path.parent), "mtime": path.stat().st_mtime})
        configs.append({k: v for k, v in (config or {}).items() if not ignored(k, patterns)})
    if not rows:
        raise FileNotFoundError(f"{folder}: no metrics.json of a {task or 'any'} run below it")
    notes += [f"{n} run(s) of task {name!r} left out (--task)" for name, n in sorted(skipped_tasks.items())]
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype(int)
    return Runs(frame=frame, config=pd.DataFrame(configs, index=frame.index), notes=notes), problems


# ----------------------------------------------------------------------------------------------- settings


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text.rsplit(".", 1)[-1] if key.endswith("_target_") else text


def _label(config: pd.DataFrame, keys: list[str], strip: str = "") -> pd.Series:
    """'k1=v1 k2=v2' per row over `keys` (absent keys left out)."""
    if not keys:
        return pd.Series("", index=config.index)
    parts = config[sorted(keys)].apply(
        lambda row: " ".join(
            f"{k.removeprefix(strip)}={_format_value(k, v)}" for k, v in row.items() if not _absent(v)
        ),
        axis=1,
    )
    return parts.astype(str)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def display(optimizer: str) -> str:
    """'mg' -> 'MG', 'adam' -> 'Adam'; others as they are."""
    return DISPLAY_NAMES.get(optimizer, optimizer)


def label_settings(runs: Runs) -> Runs:
    """Add `setting` and `arm` to `runs.frame`.

    Per model and data set (`block`): a key is part of the setting when its value differs between the
    block's runs (an absent key counts as a value, so runs with and without a scheduler differ), except
    keys under `optimizer.` that only some runs have (MG's `alpha1`, `alpha2`, `beta`): those belong to
    the arm, and only where they differ between runs of the same optimizer. Keys under `optimizer.` that
    every run has (`lr`, `weight_decay`) are part of the setting, so Adam and MG at the same learning rate
    are compared, and each learning rate separately.
    """
    frame = runs.frame.copy()
    frame["setting"], frame["arm"] = "", frame["optimizer"].map(display)
    has_config = runs.config.notna().any(axis=1)
    # runs without a saved config cannot be matched to a setting: a group of their own (and a warning)
    frame.loc[~has_config, "setting"] = NO_CONFIG
    for _, index in frame[has_config].groupby(["model", "data"]).groups.items():
        config = runs.config.loc[index].dropna(axis=1, how="all")
        hashable = config.astype(object).where(config.notna(), MISSING)
        varying = [key for key in hashable.columns if hashable[key].nunique() > 1]
        optimizer_keys = [k for k in varying if k.startswith("optimizer.")]
        partial = [k for k in optimizer_keys if config[k].isna().any()]
        by_optimizer = hashable[partial].groupby(frame.loc[index, "optimizer"]).nunique()
        arm_keys = [k for k in partial if (by_optimizer[k] > 1).any()]
        setting_keys = [k for k in varying if k not in partial]
        frame.loc[index, "setting"] = _label(config, setting_keys)
        suffix = _label(config, arm_keys, strip="optimizer.")
        arm = frame.loc[index, "optimizer"].map(display)
        frame.loc[index, "arm"] = arm.where(suffix == "", arm + " [" + suffix + "]")
    return Runs(frame=frame, config=runs.config, notes=runs.notes)


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One run per (model, data, setting, arm, seed): the most recently written; a warning for each
    duplicate."""
    keys = ["model", "data", "setting", "arm", "seed"]
    frame = frame.sort_values("mtime")
    duplicated = frame[frame.duplicated(keys, keep=False)]
    problems = [
        f"{model}/{data} {setting or ''} {arm} seed {seed}: {len(group)} runs "
        f"({', '.join(group['run_dir'])}); only the latest is used"
        for (model, data, setting, arm, seed), group in duplicated.groupby(keys)
    ]
    return frame.drop_duplicates(keys, keep="last").sort_index(), problems


# ----------------------------------------------------------------------------------------------- statistics


def sign_flip_pvalue(differences: np.ndarray, draws: int = 2**EXACT_SIGN_FLIP_MAX_N, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of a zero mean difference.

    Under the null hypothesis each paired difference is as likely to have either sign; the p-value is the
    share of the 2^n sign patterns whose |sum| is at least the observed |sum| (exact for n <= 16, else a
    seeded sample of `draws` patterns). With n pairs the smallest possible value is 2 / 2^n: 0.25 at 3
    seeds, 0.0625 at 5, 0.03125 at 6.
    """
    d = np.asarray(differences, dtype=np.float64)
    n = d.size
    if n == 0:
        return float("nan")
    if n <= EXACT_SIGN_FLIP_MAX_N:
        patterns = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)
        signs = 1.0 - 2.0 * (patterns & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(draws, n))
    sums = np.abs(signs @ d)
    observed = abs(d.sum())
    # ties count as extreme; a relative tolerance absorbs the rounding of the sums
    return float(np.mean(sums >= observed - 1e-12 * max(1.0, np.abs(d).sum())))


def paired_test(baseline: np.ndarray, other: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """Paired statistics of `other - baseline` over seeds: `n`, `mean_diff`, `max_abs_diff`, the
    (1 - alpha) confidence interval of the mean difference `ci_low`, `ci_high` (Student t), `rel_gain` (mean
    difference over the baseline's mean), the two-sided p-values `p_ttest` (paired t-test) and `p_signflip`
    (`sign_flip_pvalue`), and `p_min_signflip`, the smallest p-value the sign-flip test can give."""
    base, arm = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
    d = arm - base
    n = d.size
    keys = ("mean_diff", "max_abs_diff", "ci_low", "ci_high", "rel_gain", "p_ttest", "p_signflip")
    out = dict.fromkeys(keys, float("nan"))
    out["n"] = float(n)
    out["p_min_signflip"] = 2.0 / 2**n if n else float("nan")
    if n == 0:
        return out
    mean = float(d.mean())
    out["mean_diff"], out["max_abs_diff"] = mean, float(np.abs(d).max())
    out["rel_gain"] = mean / float(base.mean()) if base.mean() != 0 else float("nan")
    out["p_signflip"] = sign_flip_pvalue(d)
    if n < 2:
        return out
    sem = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, df=n - 1)) * sem
    out["ci_low"], out["ci_high"] = mean - half, mean + half
    if sem == 0:  # every pair differs by the same amount: t is infinite (p 0), or undefined if that is 0
        out["p_ttest"] = 1.0 if mean == 0 else 0.0
    else:
        out["p_ttest"] = float(2 * stats.t.sf(abs(mean / sem), df=n - 1))
    return out


def verdict(test: dict[str, float], arm: str, alpha: float = 0.05, lower_is_better: bool = False) -> str:
    """Plain language for a paired comparison (see `paired_test`).

    Significant when the t-test's p < alpha and the sign-flip test agrees as far as it can with this many
    seeds: its p <= alpha, or, with at least `MIN_SEEDS_SAME_DIRECTION` seeds, its smallest possible value
    (every seed differs in the same direction). Significant by the t-test alone, the verdict says so ("by
    t-test only"). `lower_is_better`: a decrease is "better" (losses, sharpness).
    """
    n = int(test["n"])
    if n == 0:
        return "no paired seeds"
    if test["max_abs_diff"] == 0:
        return "identical results"
    if n == 1:
        return "not testable (1 paired seed)"
    p, p_flip = test["p_ttest"], test["p_signflip"]
    if not p < alpha:
        return f"no significant difference (p={p:.2g})"
    direction = "better" if (test["mean_diff"] > 0) != lower_is_better else "worse"
    if p_flip <= alpha:
        return f"{arm} {direction} (p={p:.2g})"
    # too few seeds for the exact test to reach alpha, but every one moved the same way
    if n >= MIN_SEEDS_SAME_DIRECTION and p_flip <= test["p_min_signflip"] + 1e-12:
        return f"{arm} {direction} (p={p:.2g}; same direction on all {n} seeds)"
    return f"{arm} {direction} by t-test only (p={p:.2g}; sign-flip p={p_flip:.2g})"


def lower_is_better(metric: str) -> bool:
    """Whether a decrease of `metric` is an improvement (`LOWER_IS_BETTER`)."""
    return ignored(metric, LOWER_IS_BETTER)


def summarize(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (model, data, setting, arm, metric): `n_seeds`, `seeds`, `mean`, `std` (ddof 1) over seeds."""
    long = frame.melt(
        id_vars=["model", "data", "setting", "arm", "optimizer", "seed"],
        value_vars=list(metrics),
        var_name="metric",
    ).dropna(subset=["value"])
    grouped = long.groupby(["model", "data", "setting", "arm", "optimizer", "metric"], sort=True)
    summary = grouped["value"].agg(n_seeds="count", mean="mean", std="std")
    summary["seeds"] = grouped["seed"].agg(lambda s: " ".join(map(str, sorted(s))))
    return summary.reset_index()


def compare(
    frame: pd.DataFrame, metrics: Sequence[str], baseline: str = "adam", alpha: float = 0.05
) -> tuple[pd.DataFrame, list[str]]:
    """Every arm against each baseline arm (optimizer `baseline`) of the same model, data and setting,
    paired by seed. Returns one row per (model, data, setting, baseline, arm, metric) with `paired_test`'s
    statistics, the means over the paired seeds and the `verdict`; and the warnings about unpaired seeds."""
    rows, problems = [], []
    for (model, data, setting), block in frame.groupby(["model", "data", "setting"], sort=True):
        bases = block[block["optimizer"] == baseline]
        others = block[block["optimizer"] != baseline]
        if bases.empty and not others.empty:
            where = f"{model}/{data}{' ' + setting if setting else ''}"
            problems.append(
                f"{where}: no {baseline} run to compare {', '.join(sorted(set(others['arm'])))} with"
            )
        for base_arm, base in bases.groupby("arm"):
            for arm, other in others.groupby("arm"):
                where = f"{model}/{data}{' ' + setting if setting else ''}: {arm} vs {base_arm}"
                only_base = sorted(set(base["seed"]) - set(other["seed"]))
                only_other = sorted(set(other["seed"]) - set(base["seed"]))
                if only_base or only_other:
                    problems.append(
                        f"{where}: unpaired seeds left out of the paired test "
                        f"({base_arm} only: {only_base or '-'}; {arm} only: {only_other or '-'})"
                    )
                columns = ["seed", *metrics]
                paired = base[columns].merge(other[columns], on="seed", suffixes=("_base", "_arm"))
                paired = paired.set_index("seed").sort_index()
                for metric in metrics:
                    pair = paired[[f"{metric}_base", f"{metric}_arm"]].dropna()
                    test = paired_test(pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy(), alpha)
                    rows.append(
                        {
                            "model": model,
                            "data": data,
                            "setting": setting,
                            "baseline": base_arm,
                            "arm": arm,
                            "metric": metric,
                            "paired_seeds": " ".join(map(str, sorted(pair.index))),
                            "baseline_mean": float(pair.iloc[:, 0].mean()) if len(pair) else float("nan"),
                            "arm_mean": float(pair.iloc[:, 1].mean()) if len(pair) else float("nan"),
                            **test,
                            "verdict": verdict(test, arm, alpha, lower_is_better(metric)),
                        }
                    )
    columns = [
        *("model", "data", "setting", "baseline", "arm", "metric", "n", "paired_seeds", "baseline_mean"),
        *("arm_mean", "mean_diff", "max_abs_diff", "ci_low", "ci_high", "rel_gain"),
        *("p_ttest", "p_signflip", "p_min_signflip", "verdict"),
    ]
    table = pd.DataFrame(rows, columns=columns)
    table["n"] = table["n"].astype(int)
    return table, problems


# ----------------------------------------------------------------------------------------------- output


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of `frame`'s cells as they are (strings)."""
    cells = frame.astype(str).map(lambda s: s.replace("|", "\\|"))
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + "---|" * len(frame.columns),
        *("| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)),
    ]
    return "\n".join(lines) + "\n"


def _spec(reference: float) -> str:
    """Four decimals, as metrics are usually reported; three significant digits in scientific notation for
    values below 0.01 (sharpness, Hessian eigenvalues), which four decimals would print as 0.0000."""
    small = not math.isnan(reference) and 0 < abs(reference) < 0.01
    return ".3e" if small else ".4f"


def _mean_std(mean: float, std: float) -> str:
    spec = _spec(mean)
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if not math.isnan(std) else "")


def _p(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2g}"


def summary_markdown(frame: pd.DataFrame, summary: pd.DataFrame, metrics: Sequence[str]) -> str:
    """Per model, data set, setting and optimizer: seeds, best epochs, mean training time, mean ± std."""
    keys = ["model", "data", "setting", "arm"]
    cells = summary.assign(
        cell=[_mean_std(m, s) for m, s in zip(summary["mean"], summary["std"], strict=True)]
    )
    wide = cells.pivot_table(index=keys, columns="metric", values="cell", aggfunc="first")
    wide = wide.reindex(columns=[m for m in metrics if m in wide.columns]).fillna("")
    runs = frame.groupby(keys)
    info = pd.DataFrame(
        {
            "seeds": runs["seed"].count(),
            "best epoch": runs["best_epoch"].agg(
                lambda e: " ".join("-" if _absent(x) else str(int(x)) for x in e)
            )
            if "best_epoch" in frame
            else "",
            "train s": runs["train_seconds"].mean().map(lambda s: "" if math.isnan(s) else f"{s:.0f}")
            if "train_seconds" in frame
            else "",
        }
    )
    table = info.join(wide).reset_index().rename(columns={"arm": "optimizer"})
    if (table["setting"] == "").all():
        table = table.drop(columns="setting")
    return markdown_table(table)


def comparison_markdown(comparisons: pd.DataFrame, alpha: float) -> str:
    """One row per comparison and metric."""
    level = f"{1 - alpha:.0%} CI"
    table = pd.DataFrame(
        {
            "model": comparisons["model"],
            "data": comparisons["data"],
            "setting": comparisons["setting"],
            "comparison": comparisons["arm"] + " vs " + comparisons["baseline"],
            "metric": comparisons["metric"],
            "pairs": comparisons["n"],
            "baseline": comparisons["baseline_mean"].map(lambda v: f"{v:{_spec(v)}}"),
            "other": [
                f"{v:{_spec(b)}}"
                for v, b in zip(comparisons["arm_mean"], comparisons["baseline_mean"], strict=True)
            ],
            f"Δ ({level})": [
                f"{d:+{_spec(b)}}" + ("" if math.isnan(lo) else f" [{lo:+{_spec(b)}}, {hi:+{_spec(b)}}]")
                for d, lo, hi, b in zip(
                    comparisons["mean_diff"],
                    comparisons["ci_low"],
                    comparisons["ci_high"],
                    comparisons["baseline_mean"],
                    strict=True,
                )
            ],
            "gain": comparisons["rel_gain"].map(lambda g: "" if math.isnan(g) else f"{g:+.2%}"),
            "p (t-test)": comparisons["p_ttest"].map(_p),
            "p (sign-flip)": comparisons["p_signflip"].map(_p),
            "verdict": comparisons["verdict"],
        }
    )
    if (table["setting"] == "").all():
        table = table.drop(columns="setting")
    return markdown_table(table)


def long_csv(summary: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """`summary` joined with each arm's comparison against the baseline (empty for the baseline's rows)."""
    keyed = comparisons.drop(columns=["arm_mean"]).rename(columns={"n": "n_pairs"})
    table = summary.merge(keyed, how="left", on=["model", "data", "setting", "arm", "metric"])
    return table


def plot(
    summary: pd.DataFrame,
    comparisons: pd.DataFrame,
    metrics: Sequence[str],
    path: Path,
    baseline: str = "adam",
) -> None:
    """Grouped bars: a panel per metric (rows) and data set (columns, each with its own scale), a group of
    bars per model (and setting), a bar per optimizer (mean, error bar one standard deviation); '*' marks
    an optimizer significantly better or worse than the baseline (the verdict of `compare`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(summary["data"].unique())
    arms = (
        summary[["arm", "optimizer"]]
        .drop_duplicates("arm")
        .assign(order=lambda t: t["optimizer"] != baseline)
        .sort_values(["order", "arm"])["arm"]
        .tolist()
    )
    significant = set(
        comparisons.loc[
            comparisons["verdict"].str.contains(r"(?:better|worse) \(p=", regex=True),
            ["model", "data", "setting", "arm", "metric"],
        ].itertuples(index=False, name=None)
    )
    groups_per_data = {
        d: summary.loc[summary["data"] == d, ["model", "setting"]]
        .drop_duplicates()
        .sort_values(["model", "setting"])
        for d in datasets
    }
    widest = max(len(g) for g in groups_per_data.values())
    width = 0.8 / len(arms)
    figure, axes = plt.subplots(
        len(metrics),
        len(datasets),
        figsize=(max(4.0, 0.35 * widest * (len(arms) + 1)) * len(datasets), 3.2 * len(metrics)),
        squeeze=False,
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, metric in enumerate(metrics):
        table = summary[summary["metric"] == metric].set_index(["model", "data", "setting", "arm"])
        for column, data in enumerate(datasets):
            axis, groups = axes[row, column], groups_per_data[data]
            x = np.arange(len(groups))
            for offset, arm in enumerate(arms):
                keys = [(model, data, setting, arm) for model, setting in groups.itertuples(index=False)]
                values = table.reindex(keys)
                position = x + (offset - (len(arms) - 1) / 2) * width
                errors = values["std"].fillna(0.0).to_numpy()
                axis.bar(
                    position,
                    values["mean"],
                    width,
                    yerr=errors,
                    capsize=3,
                    color=colours[offset % len(colours)],
                    label=arm,
                )
                tops = values["mean"].to_numpy() + errors
                for pos, key, top in zip(position, keys, tops, strict=True):
                    if (*key, metric) in significant and not math.isnan(top):
                        axis.text(pos, top, "*", ha="center", va="bottom", fontsize=12)
            labels = [m + (f"\n{s}" if s else "") for m, s in groups.itertuples(index=False)]
            axis.set_xticks(x, labels, fontsize=8)
            axis.set_title(f"{data}: {metric}", fontsize=9)
            axis.grid(axis="y", alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper right", fontsize=8, ncols=min(len(arms), 4))
    figure.suptitle(
        "mean ± std over seeds; * significant against the baseline, paired by seed",
        fontsize=9,
        x=0.02,
        ha="left",
    )
    header_inches = 0.45  # the title line and the legend, whatever the figure's height
    figure.tight_layout(rect=(0, 0, 1, 1 - header_inches / figure.get_figheight()))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def render(
    folder: str | Path,
    runs: Runs,
    summary: pd.DataFrame,
    comparisons: pd.DataFrame,
    problems: list[str],
    metrics: Sequence[str],
    baseline: str,
    alpha: float,
) -> str:
    """The whole report.md."""
    frame = runs.frame
    settings = frame[["model", "data", "setting"]].drop_duplicates()
    parts = [
        f"# Optimizer comparison: {folder}\n",
        f"{len(frame)} runs, {len(settings)} model x data set x setting combination(s); metrics: "
        f"{', '.join(metrics)} (from each run's metrics.json; a training run's test metrics are those of "
        "the best validation epoch). "
        "Runs are grouped by their saved config: the setting column lists the config keys that differ "
        "between a model's runs on a data set (seeds and output paths excepted).\n",
        "## Mean ± standard deviation over seeds\n",
        summary_markdown(frame, summary, metrics),
    ]
    if comparisons.empty:
        parts.append(f"No comparison: no setting has runs with both {baseline} and another optimizer.\n")
    else:
        p_min = ", ".join(f"{n} seeds {2 / 2**n:.3g}" for n in (3, 4, 5, 6))
        parts += [
            f"## Against {display(baseline)}, paired by seed\n",
            comparison_markdown(comparisons, alpha),
            f"Δ: mean over paired seeds of (other - baseline) with its {1 - alpha:.0%} confidence interval "
            "(Student t); gain: Δ relative to the baseline's mean. p (t-test): paired t-test; p (sign-flip): "
            "exact sign-flip permutation test, which assumes no normality but cannot go below 2/2^n "
            f"({p_min}). Verdict: significant when the t-test's p < {alpha:g} and the sign-flip test agrees: "
            f"its p <= {alpha:g} too, or, with too few seeds for that but at least {MIN_SEEDS_SAME_DIRECTION}, "
            "its smallest possible value (every seed moved the same way, which the verdict says); 'by t-test "
            "only' otherwise. 'better' means lower for losses, sharpness and Hessian eigenvalues. p-values are "
            "per comparison, not corrected for the number of comparisons.\n",
        ]
    if problems or runs.notes:
        parts += ["## Warnings\n", "".join(f"- {p}\n" for p in [*problems, *runs.notes])]
    return "\n".join(parts)


def make_report(
    folder: str | Path,
    out: str | Path | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline: str = "adam",
    alpha: float = 0.05,
    ignore: Sequence[str] = (),
    task: str | None = "train",
    png: bool = True,
) -> Report:
    """Read the runs below `folder` and write report.md, report.csv and (if `png`) report.png into `out`
    (default `folder`). Each problem found (unpaired or duplicated seeds, runs without a config) is also
    issued as a `ReportWarning`."""
    runs, problems = collect(folder, ignore=ignore, task=task)
    missing = [m for m in metrics if m not in runs.frame.columns]
    if missing:
        raise KeyError(f"metrics not in any metrics.json below {folder}: {', '.join(missing)}")
    has_metric = runs.frame[list(metrics)].notna().any(axis=1)
    if not has_metric.all():
        problems.append(f"{int((~has_metric).sum())} run(s) without any of the metrics left out")
    runs = label_settings(Runs(runs.frame[has_metric], runs.config[has_metric], runs.notes))
    frame, duplicates = drop_duplicates(runs.frame)
    runs = Runs(frame=frame, config=runs.config.loc[frame.index], notes=runs.notes)
    summary = summarize(frame, metrics)
    comparisons, unpaired = compare(frame, metrics, baseline=baseline, alpha=alpha)
    problems += duplicates + unpaired
    for problem in problems:
        warnings.warn(problem, ReportWarning, stacklevel=2)

    target = Path(out) if out is not None else Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    markdown = render(folder, runs, summary, comparisons, problems, metrics, baseline, alpha)
    paths = {"md": target / "report.md", "csv": target / "report.csv"}
    paths["md"].write_text(markdown)
    long_csv(summary, comparisons).to_csv(paths["csv"], index=False)
    if png:
        paths["png"] = target / "report.png"
        plot(summary, comparisons, metrics, paths["png"], baseline)
    return Report(runs, summary, comparisons, problems, markdown, paths)


def main(argv: Sequence[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        prog="python -m mgrec.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="a multirun folder, or any folder with run folders below it")
    parser.add_argument("--out", help="where to write report.md, .csv, .png (default: the folder)")
    parser.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metrics.json keys"
    )
    parser.add_argument("--baseline", default="adam", help="the optimizer every other one is compared with")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (CI: 1 - alpha)")
    parser.add_argument(
        "--ignore", action="append", default=[], help="config key pattern that does not define a setting"
    )
    parser.add_argument("--task", default="train", help="task_name of the runs to read ('all': every run)")
    parser.add_argument("--no-png", action="store_true", help="skip the bar chart")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)  # printed with the report below
        try:
            report = make_report(
                args.folder,
                args.out,
                [m.strip() for m in args.metrics.split(",") if m.strip()],
                baseline=args.baseline,
                alpha=args.alpha,
                ignore=args.ignore,
                task=None if args.task == "all" else args.task,
                png=not args.no_png,
            )
        except (FileNotFoundError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from error
    print(report.markdown)
    print("written: " + ", ".join(str(p) for p in report.paths.values()), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
