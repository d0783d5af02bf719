"""Condense the robustness curves of `scripts/robustness_evidence.sh` into one Markdown table per kind.

    python scripts/evidence_summary.py logs/evidence [--metric test/recall@20] [--images docs/img/evidence]

Reads `<out>/robustness/<model>_<data>_<kind>/robustness.csv` (written by `python -m mgrec.robustness`).
Per model and data set and per strength, a cell gives the share of the clean metric each group retains (mean
over seeds) and Welch's p-value for the difference; the clean level is the first column. With `--images`,
writes 64-colour copies of every robustness.png, the comparison's report.png, the sharpness report.png and
the landscape PNGs there, under names that say what they show.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image

KINDS = {"gaussian": "SNR (dB)", "replace": "share of items replaced"}


def kind_table(out: Path, kind: str, metric: str) -> str:
    rows = []
    for path in sorted((out / "robustness").glob(f"*_{kind}/robustness.csv")):
        setting = path.parent.name.removesuffix(f"_{kind}")
        model, data = setting.rsplit("_", 1)
        frame = pd.read_csv(path)
        frame = frame[frame["metric"] == metric]
        groups = list(dict.fromkeys(frame["group"]))
        if len(groups) != 2:
            continue
        base, arm = (frame[frame["group"] == g].set_index("strength") for g in groups)
        clean = f"{base['clean_mean'].iloc[0]:.4f} / {arm['clean_mean'].iloc[0]:.4f}"
        cells = {"model": model, "data": data, f"clean {groups[0]} / {groups[1]}": clean}
        for strength in base.index:
            b, a = base.loc[strength], arm.loc[strength]
            # Welch's p is undefined when no run moved (a model that scores without the features)
            p_value = "no change" if pd.isna(a["p"]) else f"p={a['p']:.2g}"
            cells[f"{strength:g}"] = f"{b['retained_mean']:.0%} / {a['retained_mean']:.0%} ({p_value})"
        rows.append(cells)
    if not rows:
        return f"(no {kind} curves below {out / 'robustness'})\n"
    table = pd.DataFrame(rows).fillna("")
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(map(str, row)) + " |\n" for row in table.itertuples(index=False))
    return f"{metric} retained under `{kind}` ({KINDS.get(kind, 'strength')} in the columns)\n\n{head}{body}"


def copy_images(out: Path, images: Path) -> list[Path]:
    images.mkdir(parents=True, exist_ok=True)
    sources = {
        **{f"robustness_{p.parent.name}.png": p for p in (out / "robustness").glob("*/robustness.png")},
        **{
            f"landscape_{p.parent.name}.png": p for p in (out / "landscape").glob("*/flatness_comparison.png")
        },
        "report.png": out / "report" / "report.png",
        "sharpness.png": out / "sharpness" / "report.png",
    }
    written = []
    for name, source in sorted(sources.items()):
        if source.is_file():
            # a 64-colour palette keeps line plots and contours legible at a fraction of the size
            Image.open(source).convert("RGB").quantize(colors=64).save(images / name, optimize=True)
            written.append(images / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the evidence folder (robustness_evidence.sh's out)")
    parser.add_argument("--metric", default="test/recall@20")
    parser.add_argument("--images", type=Path, help="copy the PNGs here")
    args = parser.parse_args()
    if not (args.out / "robustness").is_dir():
        raise SystemExit(f"error: {args.out / 'robustness'} does not exist: run the robustness stage first")
    print("\n".join(kind_table(args.out, kind, args.metric) for kind in KINDS))
    if args.images:
        for path in copy_images(args.out, args.images):
            print(f"copied: {path}")


if __name__ == "__main__":
    main()
