"""Mirror Gradient (MG) as a wrapper around any ``torch.optim`` optimizer.

Algorithm 1 of Zhong et al., "Mirror Gradient: Towards Robust Multimodal Recommender Systems via Exploring
Flat Local Minima" (WWW 2024), with learning rate eta, scales alpha1 > alpha2 >= 0 and interval beta:

- plain step:   theta <- theta - eta * g(theta)
- mirror step (every beta-th step):
      theta' <- theta - alpha1 * eta * g(theta)
      theta  <- theta' + alpha2 * eta * g(theta')        (g(theta') on the same batch)

First-order view: with theta' = theta - a1*eta*g, g(theta') ~ g - a1*eta*H g, so a mirror step moves theta
by -(a1 - a2)*eta*g - a1*a2*eta^2*H g = -(a1 - a2)*eta * grad[ L + a1*a2*eta/(2*(a1 - a2)) * ||grad L||^2 ]
(since grad ||grad L||^2 = 2 H g): descent on L plus a penalty on ||grad L||^2 of weight about
alpha1*alpha2*eta/(alpha1 - alpha2) (up to the factor 1/2), which favours flat minima.

With a stateful base optimizer (Adam, momentum SGD) both sub-steps go through its moments, as in the official
code (MMRec trainer): ``alpha1 * loss`` -> backward -> step -> zero_grad -> ``-alpha2 * loss(same batch)`` ->
backward -> clip -> step. So the base step count advances twice on a mirror step. Scaling the gradients after
backward equals scaling the loss before it.

Usage, plain PyTorch::

    opt = MirrorGradient(model.parameters(), optimizer=torch.optim.Adam, lr=1e-3, alpha2=0.2, beta=3)
    for epoch in range(n_epochs):
        opt.reset_schedule()  # the official schedule: mirror on batch_idx % beta == 0, per epoch
        for batch in loader:

            def closure():
                opt.zero_grad()
                loss = model.loss(batch)
                loss.backward()
                return loss

            loss = opt.step(closure, clip_fn=lambda: clip_grad_norm_(model.parameters(), 1.0))

In Lightning (manual optimization) call ``self.optimizers().step(closure=..., clip_fn=...)``: Lightning's
``LightningOptimizer.step`` forwards extra keyword arguments to this ``step``. The closure must be re-runnable
(it is called twice on a mirror step) and should not depend on state that changes between calls (dropout masks
do change; the paper's code accepts that). Not compatible with AMP's ``GradScaler`` (fp16 mixed precision),
which refuses closures; bf16 works.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

__all__ = ["MirrorGradient"]


@dataclass
class _MirrorState:
    """Mutable schedule state, kept in one object so that Lightning's ``LightningOptimizer`` proxy (which
    forwards attribute reads but not writes) mutates the real optimizer's state."""

    alpha1: float
    alpha2: float
    beta: int
    step_count: int = 0
    last_mirror_loss: Any = None


def _check_hparams(alpha1: object, alpha2: object, beta: object) -> tuple[float, float, int]:
    for name, value in (("alpha1", alpha1), ("alpha2", alpha2)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"MirrorGradient: {name} must be a finite real number, got {value!r}")
    if isinstance(beta, bool) or not isinstance(beta, Integral):
        raise ValueError(f"MirrorGradient: beta must be an integer >= 1, got {beta!r}")
    a1, a2, b = float(alpha1), float(alpha2), int(beta)
    if not a1 > a2 >= 0.0:
        raise ValueError(f"MirrorGradient: need alpha1 > alpha2 >= 0, got alpha1={a1}, alpha2={a2}")
    if b < 1:
        raise ValueError(f"MirrorGradient: beta must be an integer >= 1, got {b}")
    return a1, a2, b


class MirrorGradient(Optimizer):
    """Mirror Gradient around a base optimizer built as ``optimizer(params, **optimizer_kwargs)``.

    Args:
        params: parameters or parameter groups, passed to the base optimizer.
        optimizer: the base optimizer class or a factory (e.g. ``functools.partial(torch.optim.SGD,
            momentum=0.9)``, Hydra's ``_partial_: true``).
        alpha1: scale of the descent sub-step of a mirror step.
        alpha2: scale of the mirrored (ascent) sub-step; ``alpha1 > alpha2 >= 0``.
        beta: a mirror step every ``beta`` calls to :meth:`step` (the first call is one); ``beta=1``: always.
        **optimizer_kwargs: passed to the base optimizer (``lr``, ``weight_decay``, ...).

    ``param_groups``, ``state`` and ``defaults`` are the base optimizer's own objects, so LR schedulers,
    Lightning's checkpointing / device moves and LR monitors act on the real optimizer.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        optimizer: Callable[..., Optimizer] = torch.optim.Adam,
        alpha1: float = 1.0,
        alpha2: float = 0.2,
        beta: int = 3,
        **optimizer_kwargs: Any,
    ) -> None:
        a1, a2, b = _check_hparams(alpha1, alpha2, beta)
        if isinstance(optimizer, Optimizer):
            raise TypeError(
                "MirrorGradient: `optimizer` must be an optimizer class or factory (e.g. torch.optim.Adam or "
                "functools.partial(torch.optim.SGD, momentum=0.9)), not an optimizer instance"
            )
        if not callable(optimizer):
            raise TypeError(f"MirrorGradient: `optimizer` must be callable, got {optimizer!r}")
        base = optimizer(params, **optimizer_kwargs)
        if not isinstance(base, Optimizer):
            raise TypeError(
                f"MirrorGradient: `optimizer(...)` must return a torch Optimizer, got {type(base)}"
            )
        self._base = base
        self._mirror = _MirrorState(alpha1=a1, alpha2=a2, beta=b)
        # What Optimizer.__init__ sets, except defaults / state / param_groups: the base's (properties).
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._patch_step_function()

    # --- the base optimizer's objects, shared --------------------------------------------------------------
    @property
    def base_optimizer(self) -> Optimizer:
        """The wrapped optimizer."""
        return self._base

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self._base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._base.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> defaultdict[Tensor, Any]:
        return self._base.state

    @state.setter
    def state(self, value: defaultdict[Tensor, Any]) -> None:
        self._base.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self._base.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._base.defaults = value

    # --- schedule ------------------------------------------------------------------------------------------
    @property
    def alpha1(self) -> float:
        return self._mirror.alpha1

    @property
    def alpha2(self) -> float:
        return self._mirror.alpha2

    @property
    def beta(self) -> int:
        return self._mirror.beta

    @property
    def step_count(self) -> int:
        """Calls to :meth:`step` since construction or the last :meth:`reset_schedule`."""
        return self._mirror.step_count

    @property
    def is_mirror_step(self) -> bool:
        """Whether the next call to :meth:`step` is a mirror step (``step_count % beta == 0``)."""
        return self._mirror.step_count % self._mirror.beta == 0

    @property
    def last_mirror_loss(self) -> Any:
        """The loss at theta' (second closure call) of the last mirror step, detached; None before any."""
        return self._mirror.last_mirror_loss

    def reset_schedule(self) -> None:
        """Restart the schedule: the next step is a mirror step. Call at each epoch start to reproduce the
        official schedule (mirror on ``batch_idx % beta == 0``, counted from 0 in each epoch)."""
        self._mirror.step_count = 0

    # --- stepping ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _scale_grads(self, factor: float) -> None:
        """``grad <- factor * grad`` for every parameter with a gradient (equals scaling the loss)."""
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    p.grad.mul_(factor)
                else:
                    groups[(p.grad.device, p.grad.dtype)].append(p.grad)
        for grads in groups.values():
            torch._foreach_mul_(grads, factor)

    @staticmethod
    def _call(closure: Callable[[], Any]) -> Any:
        with torch.enable_grad():
            return closure()

    @override
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, clip_fn: Callable[[], object] | None = None
    ) -> Any:
        """One plain or mirror step; returns the closure's loss at theta (before any update).

        Plain: ``loss = closure(); clip_fn(); base.step()``.
        Mirror (``step_count % beta == 0``): ``loss = closure(); grads *= alpha1; base.step();
        loss' = closure(); grads *= -alpha2; clip_fn(); base.step()``.

        Args:
            closure: zeroes the gradients, computes the loss on the current batch, back-propagates it and
                returns it. Required; called twice on a mirror step, on the same batch.
            clip_fn: optional gradient clipping, called once per step just before the final base step
                (on a mirror step after the ``-alpha2`` scaling).
        """
        if closure is None:
            raise ValueError(
                "MirrorGradient.step needs a closure (zero grads, compute the loss on the current batch, "
                "backward, return the loss): a mirror step re-evaluates the gradient after its first sub-step"
            )
        mirror = self._mirror
        loss = self._call(closure)
        if mirror.step_count % mirror.beta == 0:
            if mirror.alpha1 != 1.0:
                self._scale_grads(mirror.alpha1)
            self._base.step()
            self._base.zero_grad()  # the closure should do it too; the second gradient must be fresh
            loss2 = self._call(closure)
            self._scale_grads(-mirror.alpha2)
            mirror.last_mirror_loss = loss2.detach() if isinstance(loss2, Tensor) else loss2
        if clip_fn is not None:
            clip_fn()
        self._base.step()
        mirror.step_count += 1
        return loss

    @override
    def zero_grad(self, set_to_none: bool = True) -> None:
        self._base.zero_grad(set_to_none=set_to_none)

    @override
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._base.add_param_group(param_group)

    # --- (de)serialisation -------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"base": base.state_dict(), "mirror": {"step_count", "alpha1", "alpha2", "beta"}}``."""
        m = self._mirror
        return {
            "base": self._base.state_dict(),
            "mirror": {"step_count": m.step_count, "alpha1": m.alpha1, "alpha2": m.alpha2, "beta": m.beta},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base optimizer's state and the MG schedule (counter and alpha1, alpha2, beta)."""
        if not isinstance(state_dict, dict) or "base" not in state_dict or "mirror" not in state_dict:
            keys = list(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise ValueError(
                "MirrorGradient.load_state_dict expects {'base': ..., 'mirror': ...} as written by "
                f"MirrorGradient.state_dict(), got keys {keys}; to load a plain optimizer's state use "
                "`mg.base_optimizer.load_state_dict(...)`"
            )
        saved = state_dict["mirror"]
        a1, a2, b = _check_hparams(saved["alpha1"], saved["alpha2"], saved["beta"])
        step_count = int(saved["step_count"])
        if step_count < 0:
            raise ValueError(f"MirrorGradient.load_state_dict: negative step_count {step_count}")
        self._base.load_state_dict(state_dict["base"])
        m = self._mirror
        if (a1, a2, b) != (m.alpha1, m.alpha2, m.beta):
            warnings.warn(
                f"MirrorGradient: restoring alpha1={a1}, alpha2={a2}, beta={b} from the state dict over "
                f"alpha1={m.alpha1}, alpha2={m.alpha2}, beta={m.beta}",
                stacklevel=2,
            )
        m.alpha1, m.alpha2, m.beta, m.step_count, m.last_mirror_loss = a1, a2, b, step_count, None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @override
    def __repr__(self) -> str:
        m = self._mirror
        base = "\n".join("    " + line for line in repr(self._base).splitlines())
        return (
            f"{type(self).__name__}(alpha1={m.alpha1}, alpha2={m.alpha2}, beta={m.beta}, "
            f"step_count={m.step_count}, base=\n{base}\n)"
        )
