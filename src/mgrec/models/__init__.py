"""Recommenders: each a `Recommender` subclass in its own module."""

from mgrec.models.base import Recommender
from mgrec.models.bpr import BPR
from mgrec.models.lightgcn import LightGCN

__all__ = ["BPR", "LightGCN", "Recommender"]
