"""Optimizers: Mirror Gradient as a wrapper around any torch optimizer, and learning-rate schedules."""

from __future__ import annotations

from mgrec.optim.mirror_gradient import MirrorGradient
from mgrec.optim.schedulers import ExponentialDecay

__all__ = ["ExponentialDecay", "MirrorGradient"]
