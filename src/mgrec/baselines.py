"""Reference points without training, evaluated with the same protocol as every model.

python -m mgrec.baselines <data folder> <name>     # most-popular and random on valid and test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mgrec.data.datamodule import eval_batches
from mgrec.data.interactions import InteractionData, read_mmrec
from mgrec.metrics import TopKMetrics, topk_hits


def evaluate_scores(
    data: InteractionData, item_scores: torch.Tensor, split: str, k_max: int = 50
) -> dict[str, float]:
    """Full-ranking metrics on `split` for one score per item shared by all users (training items masked)."""
    metric = TopKMetrics(prefix=f"{'val' if split == 'valid' else split}/")
    for users, train_rows, train_items, truth_rows, truth_items in eval_batches(data, split, 4096):
        scores = item_scores.expand(len(users), -1).clone()
        scores[train_rows, train_items] = float("-inf")
        top = scores.topk(min(k_max, data.n_items), dim=1).indices
        metric.update(
            topk_hits(top, truth_rows, truth_items, data.n_items),
            torch.bincount(truth_rows, minlength=len(users)),
        )
    return {k: float(v) for k, v in metric.compute().items()}


def most_popular(data: InteractionData, split: str = "test") -> dict[str, float]:
    """Rank items by their number of training interactions."""
    popularity = torch.from_numpy(np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32))
    return evaluate_scores(data, popularity, split)


def random_ranking(data: InteractionData, split: str = "test", seed: int = 0) -> dict[str, float]:
    """One random item order shared by all users (its expectation equals a per-user random ranking)."""
    return evaluate_scores(
        data, torch.rand(data.n_items, generator=torch.Generator().manual_seed(seed)), split
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    data = read_mmrec(args.folder, args.name)
    print(data.summary())
    for baseline in (most_popular, random_ranking):
        for split in ("valid", "test"):
            values = baseline(data, split)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k.endswith("@20"))
            print(f"{baseline.__name__:>14} {split:>5}: {shown}")


if __name__ == "__main__":
    main()
