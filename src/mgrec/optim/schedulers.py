"""Learning-rate schedules (stepped once per epoch by the template)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExponentialDecay:
    """MMRec's `learning_rate_scheduler: [factor, step]`: the multiplier factor ** (epoch / step).

    A picklable callable for `torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=...)`, so it can
    live in a checkpoint's hyperparameters.
    """

    factor: float = 1.0
    step: int = 50

    def __call__(self, epoch: int) -> float:
        return self.factor ** (epoch / self.step)
