"""Flatness probes of a trained `Recommender`: sharpness, the top Hessian eigenvalue, loss landscapes.

Everything is measured on the *training loss* `model.loss(batch)` averaged over a fixed list of training
batches (`training_batches`: the first batches of epoch 0 of `EpochBatchSampler` with a given seed, so two
models trained on the same data are probed on the same interactions and negatives).

Conventions (shared by every probe):

- **Weights** are the model's trainable parameters (`requires_grad`), trainable feature tables included.
  Buffers (fixed features, graphs) are never perturbed.
- **Mode and randomness.** The loss is evaluated in `train()` mode (the objective the optimizer saw; only
  MVGAE's dropout depends on the mode, BM3's and SELFCFED_LGN's dropout views are always on), and torch's
  global RNG is reseeded before every batch's loss call with a seed fixed per (probe seed, batch index), so
  dropout masks and sampled edges are the same in every evaluation and a loss difference reflects the weights
  only. Per-batch graph caches (LATTICE's learned item graph: `refresh_item_graph`) are dropped before every
  call, so the graph is rebuilt from the weights being probed. FREEDOM and LayerGCN use the full (unpruned)
  user-item graph, as they do after loading a checkpoint. `train_mode=False` probes in `eval()` mode instead.
- **Restoration.** On exit every parameter is copied back from a snapshot (bit-exact), as are buffers,
  gradients, the train/eval flag and the torch (CPU and CUDA) and NumPy RNG states.
- **Relative radius, tensor-wise.** A perturbation e of radius rho has, for every parameter tensor w_i,
  ||e_i||_2 = rho * ||w_i||_2 (Frobenius norms; a tensor whose weights are all zero is not perturbed). A random
  perturbation draws g_i ~ N(0, I) and sets e_i = rho ||w_i|| g_i / ||g_i||; the ball of the worst case is
  {e : ||e_i|| <= rho ||w_i|| for every i}.
- **Stop-gradients.** Models with stop-gradient targets (BM3, SELFCFED_LGN) have a training gradient that is
  not the gradient of the loss value; the ascent steps and the Hessian-vector products use the training
  gradient (what the optimizer follows), so for them the "Hessian" is the Jacobian of that gradient field.

Probes: `random_sharpness`, `worst_sharpness`, `hessian_top_eigenvalue`, `loss_landscape_1d`,
`loss_landscape_2d`. `run_flatness_task` is the `task=sharpness` / `task=landscape` entry of eval.py, and
`python -m mgrec.flatness compare <baseline> <mg> --out DIR` draws two models' landscapes side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mgrec.data.sampling import EpochBatchSampler
from mgrec.models.base import Recommender

log = logging.getLogger("mgrec")

Batch = tuple[Tensor, Tensor, Tensor]
Offsets = list[Tensor | None]

FD_EPS = 1e-3  # finite-difference HVP: ||h v|| = FD_EPS * ||w|| (all trainable weights together)
_BATCH_SEED_STRIDE = 1_000_003
# the code object every `once_differentiable` wrapper shares
_ONCE_CODE = torch.autograd.function.once_differentiable(lambda ctx, *grads: grads).__code__


# --------------------------------------------------------------------------- batches
def training_batches(
    model: Recommender,
    n_batches: int,
    batch_size: int = 2048,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> list[Batch]:
    """The first `n_batches` batches `(users, pos_items, neg_items)` of epoch 0 of `EpochBatchSampler`
    over the model's training interactions (fewer if the epoch has fewer)."""
    if model.data is None:
        raise RuntimeError("the flatness probes need the training data: load the model with data=...")
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    sampler = EpochBatchSampler(model.data.train, batch_size, seed=seed)
    batches = []
    for batch in sampler:
        batches.append(tuple(t.to(device or model.device) for t in batch))
        if len(batches) == n_batches:
            break
    return batches


# --------------------------------------------------------------------------- the probe context
class _Probe:
    """Evaluates the averaged loss, its gradient and Hessian-vector products at w0 + offsets, and restores
    the model exactly on exit (see the module docstring)."""

    def __init__(self, model: Recommender, batches: Sequence[Batch], seed: int, train_mode: bool) -> None:
        if not batches:
            raise ValueError("no batches given")
        self.model, self.batches, self.seed, self.train_mode = model, list(batches), seed, train_mode
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")

    def __enter__(self) -> _Probe:
        model = self.model
        self.was_training = model.training
        self.origin = [p.detach().clone() for p in self.params]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.numpy_rng = np.random.get_state()
        model.train(self.train_mode)
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for p, w, g in zip(self.params, self.origin, self.grads, strict=True):
                p.copy_(w)
                p.grad = g
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        self._reset_state()
        self.model.train(self.was_training)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.numpy_rng)

    # ------------------------------------------------------------- weights
    def norms(self) -> list[float]:
        return [float(w.norm()) for w in self.origin]

    @torch.no_grad()
    def set(self, offsets: Offsets | None = None) -> None:
        """Weights w0 + offsets (None: w0 exactly)."""
        for i, (p, w) in enumerate(zip(self.params, self.origin, strict=True)):
            e = None if offsets is None else offsets[i]
            p.copy_(w if e is None else w + e)

    # ------------------------------------------------------------- loss, gradient, HVP
    def _reset_state(self) -> None:
        refresh = getattr(self.model, "refresh_item_graph", None)
        if callable(refresh):
            refresh()

    def _batch_loss(self, index: int) -> Tensor:
        torch.manual_seed(self.seed * _BATCH_SEED_STRIDE + index)
        self._reset_state()
        return self.model.loss(self.batches[index])

    def loss(self) -> float:
        with torch.no_grad():
            total = sum(float(self._batch_loss(i)) for i in range(len(self.batches)))
        return total / len(self.batches)

    def loss_and_grad(self) -> tuple[float, list[Tensor]]:
        grads = [torch.zeros_like(p) for p in self.params]
        total = 0.0
        with torch.enable_grad():
            for i in range(len(self.batches)):
                loss = self._batch_loss(i)
                total += float(loss.detach())
                parts = torch.autograd.grad(loss / len(self.batches), self.params, allow_unused=True)
                for g, part in zip(grads, parts, strict=True):
                    if part is not None:
                        g.add_(part)
        return total / len(self.batches), grads

    def once_differentiable(self) -> set[str]:
        """Names of the `once_differentiable` autograd Functions in the first batch's loss graph."""
        with torch.enable_grad():
            loss = self._batch_loss(0)
        found: set[str] = set()
        seen: set[int] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            forward_cls = getattr(node, "_forward_cls", None)
            if forward_cls is not None and getattr(forward_cls.backward, "__code__", None) is _ONCE_CODE:
                found.add(forward_cls.__name__)
            stack.extend(child for child, _ in node.next_functions)
        return found

    def hvp_autograd(self, v: list[Tensor]) -> list[Tensor]:
        """H v by double backward, summed over batches (one graph at a time)."""
        out = [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            for i in range(len(self.batches)):
                loss = self._batch_loss(i) / len(self.batches)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                terms = [
                    (g * u).sum() for g, u in zip(grads, v, strict=True) if g is not None and g.requires_grad
                ]
                if not terms:
                    continue  # a loss linear in every weight
                parts = torch.autograd.grad(torch.stack(terms).sum(), self.params, allow_unused=True)
                for acc, part in zip(out, parts, strict=True):
                    if part is not None:
                        acc.add_(part.detach())
        return out

    def hvp_finite_difference(self, v: list[Tensor], eps: float = FD_EPS) -> list[Tensor]:
        """H v ~ (g(w0 + h v) - g(w0 - h v)) / 2h with ||h v|| = eps * ||w0|| (eps if w0 = 0)."""
        v_norm = _norm(v)
        if v_norm == 0.0:
            return [torch.zeros_like(p) for p in self.params]
        h = eps * (_norm(self.origin) or 1.0) / v_norm
        self.set([h * u for u in v])
        _, plus = self.loss_and_grad()
        self.set([-h * u for u in v])
        _, minus = self.loss_and_grad()
        self.set()
        return [(a - b) / (2 * h) for a, b in zip(plus, minus, strict=True)]


def _norm(tensors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))


def _gaussian_like(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """Standard normal tensors shaped as `params`, drawn on the CPU (the same on every device)."""
    return [
        torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
        for p in params
    ]


def _scale_to(direction: Sequence[Tensor], radii: Sequence[float]) -> Offsets:
    """Every tensor of `direction` rescaled to norm radii[i] (None where the radius or the draw is 0)."""
    out: Offsets = []
    for d, r in zip(direction, radii, strict=True):
        n = float(d.norm())
        out.append(None if r == 0.0 or n == 0.0 else d * (r / n))
    return out


# --------------------------------------------------------------------------- sharpness
def random_sharpness(
    model: Recommender,
    batches: Sequence[Batch],
    rho: float,
    n_draws: int = 10,
    seed: int = 0,
    train_mode: bool = True,
) -> dict[str, Any]:
    """L(w + e) - L(w) over `n_draws` random perturbations of tensor-wise relative radius `rho`
    (e_i = rho ||w_i|| g_i / ||g_i||, g_i ~ N(0, I); draws from a CPU generator seeded with `seed`).

    Returns `{"loss": L(w), "mean", "std" (population), "max", "increases": [per draw]}`."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    with _Probe(model, batches, seed, train_mode) as probe:
        base = probe.loss()
        radii = [rho * n for n in probe.norms()]
        generator = torch.Generator().manual_seed(seed)
        increases = []
        for _ in range(n_draws):
            probe.set(_scale_to(_gaussian_like(probe.params, generator), radii))
            increases.append(probe.loss() - base)
    values = np.asarray(increases)
    return {
        "loss": base,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "max": float(values.max()),
        "increases": increases,
    }


def worst_sharpness(
    model: Recommender,
    batches: Sequence[Batch],
    rho: float,
    steps: int = 5,
    seed: int = 0,
    step_size: float = 1.0,
    train_mode: bool = True,
) -> dict[str, Any]:
    """The largest L(w + e) - L(w) found by projected, normalised gradient ascent in the ball
    ||e_i|| <= rho ||w_i|| (SAM's ascent step, iterated as in Keskar et al.'s epsilon-sharpness).

    Starts from a random point on the ball's boundary (at an exact minimum the gradient is zero, so an ascent
    from e = 0 would not move); each step moves every tensor by `step_size * rho ||w_i||` along its own
    normalised gradient g_i / ||g_i|| at w + e, then projects e_i back into its ball. Returns
    `{"loss": L(w), "worst": max increase over the steps + 1 visited points, "increases": [per point]}`."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    with _Probe(model, batches, seed, train_mode) as probe:
        base = probe.loss()
        radii = [rho * n for n in probe.norms()]
        generator = torch.Generator().manual_seed(seed)
        offsets = _scale_to(_gaussian_like(probe.params, generator), radii)
        increases = []
        for _ in range(steps):
            probe.set(offsets)
            value, grads = probe.loss_and_grad()
            increases.append(value - base)
            new: Offsets = []
            for e, g, r in zip(offsets, grads, radii, strict=True):
                g_norm = float(g.norm())
                if r == 0.0:
                    new.append(None)
                    continue
                e = torch.zeros_like(g) if e is None else e
                if g_norm > 0.0:
                    e = e + g * (step_size * r / g_norm)
                e_norm = float(e.norm())
                new.append(e * (r / e_norm) if e_norm > r else e)
            offsets = new
        probe.set(offsets)
        increases.append(probe.loss() - base)
    return {"loss": base, "worst": max(increases), "increases": increases}


def hessian_top_eigenvalue(
    model: Recommender,
    batches: Sequence[Batch],
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    hvp: str = "auto",
    fd_eps: float = FD_EPS,
    train_mode: bool = True,
) -> dict[str, Any]:
    """The Hessian eigenvalue of largest magnitude (the top one at a minimum) by power iteration with
    Hessian-vector products: v <- Hv / ||Hv||, estimate v^T H v, stopped when it changes by at most
    `tol` relative or after `iters` products.

    `hvp`: `autograd` (double backward), `fd` (central differences of gradients,
    (g(w + h v) - g(w - h v)) / 2h with ||h v|| = fd_eps ||w||), or `auto`. Double backward through an
    `autograd.Function` whose backward is `once_differentiable` does not always raise: it can silently drop
    that function's second-order terms (mgrec's fused `bipartite_mean_propagation`, `transposed_spmm`,
    `cosine_refine` and the in-batch InfoNCE are such functions; `symmetric_spmm` is linear with a
    differentiable backward and is fine). So `auto` walks the loss graph and uses differences when it holds
    such a function, or when double backward raises, or when, on the first vector, the double-backward HVP
    and the difference HVP differ by more than `AUTOGRAD_CHECK` (relative); else double backward.
    Returns `{"eigenvalue", "iterations", "converged", "method"}` (method: `autograd` or `fd`)."""
    if hvp not in ("auto", "autograd", "fd"):
        raise ValueError(f"hvp must be auto, autograd or fd, got {hvp!r}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    with _Probe(model, batches, seed, train_mode) as probe:
        generator = torch.Generator().manual_seed(seed)
        v = _gaussian_like(probe.params, generator)
        scale = _norm(v)
        v = [u / scale for u in v]
        method = hvp
        if hvp == "auto":
            method = _choose_hvp(probe, v, fd_eps)
        elif hvp == "autograd" and probe.once_differentiable():
            log.warning("double backward through %s may be wrong", sorted(probe.once_differentiable()))

        def product(v: list[Tensor]) -> list[Tensor]:
            if method == "autograd":
                return probe.hvp_autograd(v)
            return probe.hvp_finite_difference(v, fd_eps)

        eigenvalue, previous, converged, iteration = 0.0, None, False, 0
        for iteration in range(1, iters + 1):  # noqa: B007 (reported below)
            hv = product(v)
            eigenvalue = _dot(v, hv)
            size = _norm(hv)
            if size == 0.0:
                converged = True
                break
            v = [u / size for u in hv]
            if previous is not None and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
                converged = True
                break
            previous = eigenvalue
    return {"eigenvalue": eigenvalue, "iterations": iteration, "converged": converged, "method": method}


AUTOGRAD_CHECK = 0.05


def _choose_hvp(probe: _Probe, v: list[Tensor], fd_eps: float) -> str:
    """`autograd` where double backward is trustworthy for this model, else `fd` (see
    `hessian_top_eigenvalue`)."""
    once = probe.once_differentiable()
    if once:
        log.info("finite-difference HVPs: the loss graph holds once-differentiable %s", sorted(once))
        return "fd"
    try:
        exact = probe.hvp_autograd(v)
    except RuntimeError as error:
        log.info("finite-difference HVPs: double backward failed (%s)", str(error).splitlines()[0][:120])
        return "fd"
    approx = probe.hvp_finite_difference(v, fd_eps)
    scale = max(_norm(exact), _norm(approx))
    gap = _norm([a - b for a, b in zip(exact, approx, strict=True)]) / scale if scale else 0.0
    if gap > AUTOGRAD_CHECK:
        log.warning("finite-difference HVPs: double backward differs from differences by %.3g", gap)
        return "fd"
    return "autograd"


# --------------------------------------------------------------------------- landscapes
def filter_normalized_direction(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """A random direction d ~ N(0, I) with every filter rescaled to the norm of the weights' filter
    (Li et al. 2018): a filter is a slice along dim 0 of a tensor with >= 2 dims (a row of a Linear weight
    [out, in] = one output neuron; a row of an embedding table = one user's / item's embedding); 1-D and 0-D
    tensors (biases, scalars) get d = 0, as the reference implementation's default (`ignore='biasbn'`)."""
    direction = _gaussian_like(params, generator)
    out = []
    for d, w in zip(direction, params, strict=True):
        if w.dim() < 2:
            out.append(torch.zeros_like(w))
            continue
        rows_w = w.detach().reshape(len(w), -1).norm(dim=1)
        rows_d = d.reshape(len(d), -1).norm(dim=1)
        scale = torch.where(rows_d > 0, rows_w / rows_d.clamp_min(torch.finfo(d.dtype).tiny), 0.0)
        out.append(d * scale.reshape(-1, *([1] * (d.dim() - 1))))
    return out


def _grid(n_points: int, span: float) -> np.ndarray:
    """n_points values from -span to span, 0 exactly in the middle when n_points is odd."""
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    half = (n_points - 1) / 2
    return span * (np.arange(n_points) - half) / half


def loss_landscape_1d(
    model: Recommender,
    batches: Sequence[Batch],
    n_points: int = 51,
    span: float = 1.0,
    seed: int = 0,
    train_mode: bool = True,
) -> dict[str, Any]:
    """L(w + alpha d) for alpha on `n_points` values in [-span, span], d the filter-normalised direction
    drawn from `seed` (the first direction of `loss_landscape_2d` with the same seed). Returns
    `{"alphas", "losses"}` (NumPy arrays) and `"loss"` = L(w)."""
    alphas = _grid(n_points, span)
    with _Probe(model, batches, seed, train_mode) as probe:
        base = probe.loss()
        d = filter_normalized_direction(probe.origin, torch.Generator().manual_seed(seed))
        losses = []
        for a in alphas:
            probe.set([float(a) * u for u in d])
            losses.append(probe.loss())
    return {"alphas": alphas, "losses": np.asarray(losses), "loss": base}


def loss_landscape_2d(
    model: Recommender,
    batches: Sequence[Batch],
    n_points: int = 21,
    span: float = 1.0,
    seed: int = 0,
    train_mode: bool = True,
) -> dict[str, Any]:
    """L(w + alpha d1 + beta d2) on an `n_points` x `n_points` grid over [-span, span]^2, with d1, d2 two
    filter-normalised directions drawn one after the other from `seed`. Returns `{"alphas", "betas",
    "losses"}` (losses[i, j] at alphas[i], betas[j]) and `"loss"` = L(w)."""
    alphas = _grid(n_points, span)
    with _Probe(model, batches, seed, train_mode) as probe:
        base = probe.loss()
        generator = torch.Generator().manual_seed(seed)
        d1 = filter_normalized_direction(probe.origin, generator)
        d2 = filter_normalized_direction(probe.origin, generator)
        losses = np.empty((n_points, n_points))
        for i, a in enumerate(alphas):
            for j, b in enumerate(alphas):
                probe.set([float(a) * u + float(b) * t for u, t in zip(d1, d2, strict=True)])
                losses[i, j] = probe.loss()
    return {"alphas": alphas, "betas": alphas.copy(), "losses": losses, "loss": base}


# --------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_1d(ax: Any, curves: Sequence[tuple[str, dict[str, Any]]]) -> None:
    for label, land in curves:
        ax.plot(land["alphas"], land["losses"], marker=".", label=label)
    ax.set_xlabel("alpha (filter-normalised direction)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if len(curves) > 1 or curves[0][0]:
        ax.legend()


def _plot_2d(ax: Any, land: dict[str, Any], levels: np.ndarray, title: str) -> Any:
    beta_grid, alpha_grid = np.meshgrid(land["betas"], land["alphas"])
    contour = ax.contour(alpha_grid, beta_grid, land["losses"], levels=levels, cmap="viridis")
    ax.clabel(contour, inline=True, fontsize=7, fmt="%.3g")
    ax.plot([0], [0], marker="*", color="red", markersize=9)
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    ax.set_title(title)
    return contour


def _levels(*lands: dict[str, Any], n: int = 15) -> np.ndarray:
    values = np.concatenate([np.ravel(land["losses"]) for land in lands])
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(np.quantile(finite, 0.95))
    if high <= low:
        high = low + 1e-6
    return np.linspace(low, high, n)


def plot_landscape_1d(land: dict[str, Any], path: Path, title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    _plot_1d(ax, [("", land)])
    ax.set_title(title or "1-D loss landscape")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_landscape_2d(land: dict[str, Any], path: Path, title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    _plot_2d(ax, land, _levels(land), title or "2-D loss landscape")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(
    lands_1d: Sequence[tuple[str, dict[str, Any]]],
    lands_2d: Sequence[tuple[str, dict[str, Any]]],
    path: Path,
) -> None:
    """One PNG: both 1-D curves on one axis, then one 2-D contour panel per model (shared levels)."""
    plt = _pyplot()
    fig, grid = plt.subplots(1, 1 + len(lands_2d), figsize=(5.2 * (1 + len(lands_2d)), 4.6), squeeze=False)
    axes = grid[0]
    _plot_1d(axes[0], lands_1d)
    axes[0].set_title("1-D landscape (same direction seed)")
    levels = _levels(*(land for _, land in lands_2d)) if lands_2d else None
    for ax, (label, land) in zip(axes[1:], lands_2d, strict=True):
        _plot_2d(ax, land, levels, f"2-D landscape: {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- tasks
def _rho_key(rho: float) -> str:
    return f"{float(rho):g}"


def sharpness_metrics(
    model: Recommender,
    batches: Sequence[Batch],
    rhos: Sequence[float] = (0.05,),
    draws: int = 10,
    ascent_steps: int = 5,
    power_iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    hvp: str = "auto",
    train_mode: bool = True,
) -> dict[str, Any]:
    """The `task=sharpness` metrics: `train_loss`, `sharpness/random@<rho>` (mean; also `_std`, `_max`),
    `sharpness/worst@<rho>`, `hessian/top_eigenvalue` (with `hessian/iterations`, `hessian/converged`,
    `hessian/hvp_method`)."""
    metrics: dict[str, Any] = {}
    for rho in rhos:
        key = _rho_key(rho)
        rand = random_sharpness(model, batches, rho, draws, seed, train_mode)
        worst = worst_sharpness(model, batches, rho, ascent_steps, seed, train_mode=train_mode)
        metrics["train_loss"] = rand["loss"]
        metrics[f"sharpness/random@{key}"] = rand["mean"]
        metrics[f"sharpness/random_std@{key}"] = rand["std"]
        metrics[f"sharpness/random_max@{key}"] = rand["max"]
        metrics[f"sharpness/worst@{key}"] = worst["worst"]
    if power_iters > 0:
        top = hessian_top_eigenvalue(model, batches, power_iters, tol, seed, hvp, train_mode=train_mode)
        metrics["hessian/top_eigenvalue"] = top["eigenvalue"]
        metrics["hessian/iterations"] = top["iterations"]
        metrics["hessian/converged"] = top["converged"]
        metrics["hessian/hvp_method"] = top["method"]
    return metrics


def landscapes(
    model: Recommender,
    batches: Sequence[Batch],
    points_1d: int = 51,
    points_2d: int = 21,
    span: float = 1.0,
    seed: int = 0,
    train_mode: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    one = loss_landscape_1d(model, batches, points_1d, span, seed, train_mode)
    two = loss_landscape_2d(model, batches, points_2d, span, seed, train_mode) if points_2d else None
    return one, two


def save_landscapes(
    folder: Path, one: dict[str, Any], two: dict[str, Any] | None, seed: int, title: str
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "landscape_1d.npz", alphas=one["alphas"], losses=one["losses"], loss=one["loss"], seed=seed
    )
    plot_landscape_1d(one, folder / "landscape_1d.png", title)
    if two is not None:
        np.savez(
            folder / "landscape_2d.npz",
            alphas=two["alphas"],
            betas=two["betas"],
            losses=two["losses"],
            loss=two["loss"],
            seed=seed,
        )
        plot_landscape_2d(two, folder / "landscape_2d.png", title)


def _device(cfg: Any) -> torch.device:
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda")
    return torch.device("cpu")


def run_flatness_task(cfg: Any, model: Recommender, datamodule: Any, run_dir: Path) -> dict[str, Any]:
    """`python eval.py ckpt_path=... task=sharpness|landscape`: probe the loaded model on training batches
    and write metrics.json (and, for `landscape`, the arrays and PNGs) into `run_dir`."""
    from mgrec.eval import run_dir_of, saved_config  # eval imports this module
    from mgrec.utils import component_names, write_json_atomic

    task = str(cfg.task)
    if task not in ("sharpness", "landscape"):
        raise ValueError(f"task must be evaluate, sharpness or landscape, got {task!r}")
    settings = cfg[task]
    run_dir = Path(run_dir)
    model = model.to(_device(cfg))
    batch_size = settings.get("batch_size") or getattr(datamodule, "batch_size", 2048)
    seed = int(settings.seed)
    batches = training_batches(model, int(settings.batches), int(batch_size), seed)
    train_mode = bool(settings.get("train_mode", True))
    run_cfg = saved_config(run_dir_of(cfg.ckpt_path))
    metrics: dict[str, Any] = {}
    if task == "sharpness":
        rhos = [settings.rho] if isinstance(settings.rho, (int, float)) else list(settings.rho)
        metrics.update(
            sharpness_metrics(
                model,
                batches,
                [float(r) for r in rhos],
                int(settings.draws),
                int(settings.ascent_steps),
                int(settings.power_iters),
                float(settings.tol),
                seed,
                str(settings.hvp),
                train_mode,
            )
        )
    else:
        one, two = landscapes(
            model,
            batches,
            int(settings.points_1d),
            int(settings.points_2d),
            float(settings.span),
            seed,
            train_mode,
        )
        names = component_names(run_cfg)
        save_landscapes(run_dir, one, two, seed, f"{names['model']} / {names['optimizer']} / {names['data']}")
        metrics["train_loss"] = one["loss"]
        metrics["landscape/span"] = float(settings.span)
    metrics.update(
        {
            "task": task,
            "probe_seed": seed,
            "probe_batches": len(batches),
            "probe_batch_size": int(batch_size),
            **component_names(run_cfg),
            "seed": int(run_cfg.seed),
            "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        }
    )
    write_json_atomic(run_dir / "metrics.json", metrics)
    log.info("%s: %s", task, {k: v for k, v in metrics.items() if "/" in k or k == "train_loss"})
    return metrics


# --------------------------------------------------------------------------- compare
def _load_npz(path: Path) -> dict[str, Any]:
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def _side(
    folder: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """A folder's 1-D and 2-D landscapes and metrics: read from a `task=landscape` / `task=sharpness`
    output folder, or computed from a training run folder (its best checkpoint)."""
    if (folder / "landscape_1d.npz").is_file():
        one = _load_npz(folder / "landscape_1d.npz")
        two_path = folder / "landscape_2d.npz"
        two = _load_npz(two_path) if two_path.is_file() else None
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        if int(one.get("seed", args.seed)) != args.seed:
            log.warning("%s: landscape drawn with seed %s, not %s", folder, int(one["seed"]), args.seed)
        return one, two, metrics
    if (folder / ".hydra" / "resolved.yaml").is_file():
        from mgrec.eval import load_run, saved_config

        model, _ = load_run(folder, args.checkpoint)
        batch_size = int(saved_config(folder).data.get("batch_size", 2048))
        batches = training_batches(model, args.batches, batch_size, args.seed)
        metrics = sharpness_metrics(
            model, batches, args.rho, args.draws, args.ascent_steps, args.power_iters, seed=args.seed
        )
        one, two = landscapes(model, batches, args.points_1d, args.points_2d, args.span, args.seed)
        return one, two, metrics
    raise FileNotFoundError(
        f"{folder}: neither a task=landscape output (landscape_1d.npz) nor a training run (.hydra/resolved.yaml)"
    )


def _column_order(key: str) -> tuple[int, str]:
    """train_loss, the random and worst sharpness, the top eigenvalue, then the details."""
    for rank, prefix in enumerate(
        ("train_loss", "sharpness/random@", "sharpness/worst@", "hessian/top_eigenvalue")
    ):
        if key.startswith(prefix):
            return rank, key
    return 9, key


def compare(folders: Sequence[Path], labels: Sequence[str], out: Path, args: argparse.Namespace) -> Path:
    """Writes `flatness_comparison.png` (the 1-D curves together, one 2-D contour per model, shared contour
    levels), `flatness_table.md` and `flatness_table.csv` into `out`; returns the PNG's path."""
    out.mkdir(parents=True, exist_ok=True)
    sides = [_side(Path(folder), args) for folder in folders]
    lands_1d = [(label, one) for label, (one, _, _) in zip(labels, sides, strict=True)]
    lands_2d = [(label, two) for label, (_, two, _) in zip(labels, sides, strict=True) if two is not None]
    png = out / "flatness_comparison.png"
    plot_comparison(lands_1d, lands_2d, png)
    keys = sorted(
        {k for _, _, m in sides for k in m if k == "train_loss" or k.startswith(("sharpness/", "hessian/"))},
        key=_column_order,
    )
    rows = [[label, *(m.get(k, "") for k in keys)] for label, (_, _, m) in zip(labels, sides, strict=True)]
    with (out / "flatness_table.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", *keys])
        writer.writerows(rows)

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    def ratio(a: Any, b: Any) -> str:
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        return f"{b / a:.3g}" if numeric and a != 0 else ""

    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    if len(rows) == 2:
        ratios = [ratio(a, b) for a, b in zip(rows[0][1:], rows[1][1:], strict=True)]
        lines.append(f"| {labels[1]} / {labels[0]} | " + " | ".join(ratios) + " |")
    (out / "flatness_table.md").write_text("\n".join(lines) + "\n")
    return png


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mgrec.flatness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser(
        "compare",
        help="baseline and MG landscapes side by side, and a sharpness table",
        description="Each folder is a task=landscape/sharpness output folder (arrays and metrics are read) "
        "or a training run folder (landscapes and sharpness are computed from its checkpoint).",
    )
    cmp.add_argument("baseline", type=Path)
    cmp.add_argument("mg", type=Path)
    cmp.add_argument("--out", type=Path, required=True)
    cmp.add_argument("--labels", nargs=2, default=["baseline", "mg"])
    cmp.add_argument("--seed", type=int, default=0, help="batches and directions seed (the same for both)")
    cmp.add_argument("--checkpoint", default="best")
    cmp.add_argument("--batches", type=int, default=4)
    cmp.add_argument("--points-1d", type=int, default=51)
    cmp.add_argument("--points-2d", type=int, default=21)
    cmp.add_argument("--span", type=float, default=1.0)
    cmp.add_argument("--rho", type=float, nargs="+", default=[0.05])
    cmp.add_argument("--draws", type=int, default=10)
    cmp.add_argument("--ascent-steps", type=int, default=5)
    cmp.add_argument("--power-iters", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    png = compare([args.baseline, args.mg], args.labels, args.out, args)
    print(f"wrote {png}, {args.out / 'flatness_table.md'}, {args.out / 'flatness_table.csv'}")


if __name__ == "__main__":
    main()
