"""Optimizers: Mirror Gradient as a wrapper around any torch optimizer."""

from __future__ import annotations

from mgrec.optim.mirror_gradient import MirrorGradient

__all__ = ["MirrorGradient"]
