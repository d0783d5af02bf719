"""mgrec: robust multimodal recommendation with Mirror Gradient, on PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mgrec.data.interactions import InteractionData
    from mgrec.models.base import Recommender


def load_run(run_dir: Any, checkpoint: str = "best") -> tuple[Recommender, InteractionData]:
    """`model, data = mgrec.load_run(run_dir)`: the trained model (eval mode) and its data set."""
    from mgrec.eval import load_run as _load_run

    return _load_run(run_dir, checkpoint)


__all__ = ["__version__", "load_run"]
