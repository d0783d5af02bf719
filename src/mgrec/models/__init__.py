"""Recommenders: each a `Recommender` subclass in its own module, imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

from mgrec.models.base import Recommender

# class name -> module; configs name a model as `mgrec.models.<ClassName>`
MODEL_MODULES = {
    "BPR": "mgrec.models.bpr",
    "LightGCN": "mgrec.models.lightgcn",
    "VBPR": "mgrec.models.vbpr",
    "BM3": "mgrec.models.bm3",
    "FREEDOM": "mgrec.models.freedom",
    "LATTICE": "mgrec.models.lattice",
    "MGCN": "mgrec.models.mgcn",
    "SLMRec": "mgrec.models.slmrec",
    "MMGCN": "mgrec.models.mmgcn",
    "GRCN": "mgrec.models.grcn",
    "DualGNN": "mgrec.models.dualgnn",
    "DRAGON": "mgrec.models.dragon",
    "MVGAE": "mgrec.models.mvgae",
    "LayerGCN": "mgrec.models.layergcn",
    "SELFCFED_LGN": "mgrec.models.selfcfed_lgn",
    "ItemKNNCBF": "mgrec.models.itemknncbf",
}

__all__ = ["MODEL_MODULES", "Recommender", *MODEL_MODULES]


def __getattr__(name: str) -> Any:
    if name in MODEL_MODULES:
        return getattr(importlib.import_module(MODEL_MODULES[name]), name)
    raise AttributeError(f"module 'mgrec.models' has no attribute {name!r}")
