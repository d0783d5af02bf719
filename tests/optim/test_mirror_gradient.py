"""Tests for mgrec.optim.MirrorGradient: closed form on a quadratic, schedule, state, clipping, Lightning."""

from __future__ import annotations

import copy
import functools
import io
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mgrec.optim import MirrorGradient

# Quadratic L(theta) = 0.5 (theta - c)^T A (theta - c), gradient g(theta) = A (theta - c).
A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
C = torch.tensor([1.0, -2.0], dtype=torch.float64)


def _grad(theta: torch.Tensor) -> torch.Tensor:
    return A @ (theta - C)


def _quadratic(theta: torch.Tensor) -> torch.Tensor:
    d = theta - C
    return 0.5 * d @ A @ d


def _closure(opt: torch.optim.Optimizer, theta: torch.Tensor, calls: list[int] | None = None) -> Callable:
    def closure() -> torch.Tensor:
        if calls is not None:
            calls[-1] += 1
        opt.zero_grad()
        loss = _quadratic(theta)
        loss.backward()
        return loss

    return closure


def test_mirror_step_matches_closed_form_by_hand() -> None:
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=0.1, alpha1=0.8, alpha2=0.3, beta=3)
    assert opt.is_mirror_step
    loss = opt.step(_closure(opt, theta))
    # g(0) = A @ [-1, 2] = [-1, 1.5]; theta' = 0 - 0.8 * 0.1 * g = [0.08, -0.12]
    # g(theta') = A @ [-0.92, 1.88] = [-0.9, 1.42]; theta = theta' + 0.3 * 0.1 * g(theta') = [0.053, -0.0774]
    assert theta.detach().tolist() == pytest.approx([0.053, -0.0774], abs=1e-6)
    # the returned loss is the loss at theta before the step: 0.5 * [-1, 2] A [-1, 2]^T = 0.5 * 4 = 2
    assert loss.item() == pytest.approx(2.0)
    # the mirror loss is the loss at theta' = [0.08, -0.12]: 0.5 * d^T A d with d = [-0.92, 1.88]
    assert opt.last_mirror_loss.item() == pytest.approx(0.5 * (-0.92 * -0.9 + 1.88 * 1.42), abs=1e-9)
    assert not opt.is_mirror_step

    # a plain step from theta1 = [0.053, -0.0774]: g = A @ [-0.947, 1.9226] = [-0.9327, 1.4491]
    opt.step(_closure(opt, theta))
    assert theta.detach().tolist() == pytest.approx([0.14627, -0.22231], abs=1e-6)


@pytest.mark.parametrize(("alpha1", "alpha2", "eta"), [(1.0, 0.2, 0.05), (0.7, 0.1, 0.3), (1.5, 0.0, 0.1)])
def test_mirror_step_closed_form_general(alpha1: float, alpha2: float, eta: float) -> None:
    theta0 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=eta, alpha1=alpha1, alpha2=alpha2)
    opt.step(_closure(opt, theta))
    theta_prime = theta0 - alpha1 * eta * _grad(theta0)
    expected = theta0 - alpha1 * eta * _grad(theta0) + alpha2 * eta * _grad(theta_prime)
    torch.testing.assert_close(theta.detach(), expected, atol=1e-6, rtol=0)


def test_plain_step_equals_sgd() -> None:
    theta = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    ref = theta.detach().clone().requires_grad_(True)
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=0.1, beta=4)
    sgd = torch.optim.SGD([ref], lr=0.1)
    opt.step(_closure(opt, theta))  # mirror step first
    with torch.no_grad():
        ref.copy_(theta)
    for _ in range(3):  # three plain steps
        assert not opt.is_mirror_step
        opt.step(_closure(opt, theta))
        sgd.step(_closure(sgd, ref))
        torch.testing.assert_close(theta, ref, atol=0, rtol=0)
    assert opt.is_mirror_step


def test_schedule_closure_calls_and_reset() -> None:
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=0.01, beta=3)
    calls: list[int] = []
    for _ in range(7):
        calls.append(0)
        opt.step(_closure(opt, theta, calls))
    assert calls == [2, 1, 1, 2, 1, 1, 2]
    assert opt.step_count == 7
    opt.step(_closure(opt, theta, [0]))  # count 7: plain
    opt.reset_schedule()
    assert opt.step_count == 0 and opt.is_mirror_step
    calls = []
    for _ in range(4):
        calls.append(0)
        opt.step(_closure(opt, theta, calls))
    assert calls == [2, 1, 1, 2]


def test_beta_one_mirrors_every_step() -> None:
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=0.01, beta=1)
    calls: list[int] = []
    for _ in range(3):
        calls.append(0)
        opt.step(_closure(opt, theta, calls))
    assert calls == [2, 2, 2]


def test_adam_step_count_advances_twice_on_mirror_steps() -> None:
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = MirrorGradient([theta], lr=0.01, beta=3)  # Adam by default
    assert isinstance(opt.base_optimizer, torch.optim.Adam)
    counts = []
    for _ in range(4):
        opt.step(_closure(opt, theta))
        counts.append(int(opt.state[theta]["step"]))
    assert counts == [2, 3, 4, 6]
    assert opt.state is opt.base_optimizer.state
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_argument_checks() -> None:
    params = [torch.zeros(2, requires_grad=True)]
    for kwargs in (
        {"alpha1": 0.2, "alpha2": 0.2},
        {"alpha1": 0.1, "alpha2": 0.2},
        {"alpha2": -0.1},
        {"alpha1": float("nan")},
        {"beta": 0},
        {"beta": 1.5},
        {"beta": True},
        {"beta": "3"},
    ):
        with pytest.raises(ValueError, match="MirrorGradient"):
            MirrorGradient(params, lr=0.1, **kwargs)
    with pytest.raises(TypeError, match="not an optimizer instance"):
        MirrorGradient(params, optimizer=torch.optim.SGD(params, lr=0.1))
    opt = MirrorGradient(params, optimizer=torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
    with pytest.raises(ValueError, match="expects"):
        opt.load_state_dict(torch.optim.SGD(params, lr=0.1).state_dict())
    MirrorGradient(params, alpha1=0.3, alpha2=0.0, beta=1, lr=0.1)  # boundary values are fine


def _make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 5, generator=gen), torch.randn(6, 1, generator=gen)) for _ in range(n)]


def _model_closure(opt: torch.optim.Optimizer, model: nn.Module, batch, calls: list[int]) -> Callable:
    def closure() -> torch.Tensor:
        calls[-1] += 1
        opt.zero_grad()
        loss = F.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        return loss

    return closure


def test_state_dict_round_trip_continues_schedule() -> None:
    batches = _batches(9)
    model = _make_model()
    opt = MirrorGradient(model.parameters(), lr=0.01, alpha2=0.3, beta=3)
    for batch in batches[:4]:
        opt.step(_model_closure(opt, model, batch, [0]))

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # loadable like a Lightning checkpoint
    assert saved["opt"]["mirror"] == {"step_count": 4, "alpha1": 1.0, "alpha2": 0.3, "beta": 3}

    clone = _make_model(seed=123)
    clone.load_state_dict(saved["model"])
    with pytest.warns(UserWarning, match="restoring alpha1=1.0, alpha2=0.3, beta=3"):
        opt2 = MirrorGradient(clone.parameters(), lr=0.5, alpha2=0.1, beta=2)  # overwritten by the load
        opt2.load_state_dict(saved["opt"])
    assert (opt2.step_count, opt2.alpha2, opt2.beta) == (4, 0.3, 3)
    assert opt2.param_groups[0]["lr"] == 0.01

    calls_a: list[int] = []
    calls_b: list[int] = []
    for batch in batches[4:]:
        calls_a.append(0)
        calls_b.append(0)
        opt.step(_model_closure(opt, model, batch, calls_a))
        opt2.step(_model_closure(opt2, clone, batch, calls_b))
    assert calls_a == calls_b == [1, 1, 2, 1, 1]  # counts 4..8, mirror at 6
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_clip_fn_once_per_step_after_negative_scaling() -> None:
    theta0 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    eta, a1, a2 = 0.1, 1.0, 0.2
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=eta, alpha1=a1, alpha2=a2, beta=2)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def clip_fn() -> None:
        seen.append((theta.detach().clone(), theta.grad.detach().clone()))

    opt.step(_closure(opt, theta), clip_fn=clip_fn)  # mirror
    assert len(seen) == 1
    theta_prime = theta0 - a1 * eta * _grad(theta0)
    torch.testing.assert_close(seen[0][0], theta_prime)  # clipping happens at theta'
    torch.testing.assert_close(seen[0][1], -a2 * _grad(theta_prime))  # on the -alpha2-scaled gradient
    theta1 = theta.detach().clone()
    opt.step(_closure(opt, theta), clip_fn=clip_fn)  # plain
    assert len(seen) == 2
    torch.testing.assert_close(seen[1][1], _grad(theta1))


def test_clip_fn_result_is_used_by_the_final_step() -> None:
    theta0 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    opt = MirrorGradient([theta], optimizer=torch.optim.SGD, lr=0.1, alpha1=1.0, alpha2=0.2)
    opt.step(_closure(opt, theta), clip_fn=lambda: theta.grad.zero_())
    # the final (mirrored) update is zeroed by the "clip", so theta stops at theta'
    torch.testing.assert_close(theta.detach(), theta0 - 0.1 * _grad(theta0))


def test_partial_sgd_with_momentum() -> None:
    theta0 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    eta, mu, a1, a2 = 0.1, 0.9, 1.0, 0.2
    opt = MirrorGradient(
        [theta], optimizer=functools.partial(torch.optim.SGD, momentum=mu), lr=eta, alpha1=a1, alpha2=a2
    )
    assert isinstance(opt.base_optimizer, torch.optim.SGD)
    assert opt.defaults["momentum"] == mu and opt.param_groups[0]["lr"] == eta
    opt.step(_closure(opt, theta))
    # SGD momentum: b <- mu * b + g (b = g on the first step), theta <- theta - eta * b
    b1 = a1 * _grad(theta0)
    theta_prime = theta0 - eta * b1
    b2 = mu * b1 - a2 * _grad(theta_prime)
    torch.testing.assert_close(theta.detach(), theta_prime - eta * b2)


def test_zero_grad_repr_deepcopy_and_scheduler() -> None:
    model = _make_model()
    opt = MirrorGradient(model.parameters(), optimizer=torch.optim.AdamW, lr=0.1, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(_model_closure(opt, model, _batches(1)[0], [0]))
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    text = repr(opt)
    assert text.startswith("MirrorGradient(alpha1=1.0, alpha2=0.2, beta=3, step_count=1")
    assert "AdamW" in text and "weight_decay: 0.01" in text
    clone = copy.deepcopy(opt)
    assert clone.step_count == 1 and clone.state is clone.base_optimizer.state


# --- Lightning ----------------------------------------------------------------------------------------------


class _MGModule(L.LightningModule):
    """Manual optimization with MirrorGradient wrapping Adam, as the template's Recommender base does."""

    def __init__(self, beta: int = 2, reset_each_epoch: bool = True, clip: float | None = 1.0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.beta = beta
        self.reset_each_epoch = reset_each_epoch
        self.clip = clip
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
        self.epoch_losses: list[list[float]] = []
        self.closure_calls: list[int] = []
        self.clip_calls = 0
        self.before_step_hook_calls = 0
        self.step_count_at_train_start: int | None = None

    def configure_optimizers(self) -> MirrorGradient:
        return MirrorGradient(self.parameters(), optimizer=torch.optim.Adam, lr=0.02, beta=self.beta)

    def on_train_start(self) -> None:
        self.step_count_at_train_start = self.trainer.optimizers[0].step_count

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.before_step_hook_calls += 1

    def on_train_epoch_start(self) -> None:
        self.epoch_losses.append([])
        if self.reset_each_epoch:
            self.optimizers().reset_schedule()  # through the LightningOptimizer proxy

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        self.closure_calls.append(0)

        def closure() -> torch.Tensor:
            self.closure_calls[-1] += 1
            opt.zero_grad()
            loss = F.mse_loss(self.net(x), y)
            self.manual_backward(loss)
            return loss

        def clip_fn() -> None:
            self.clip_calls += 1
            self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")

        loss = opt.step(closure=closure, clip_fn=clip_fn if self.clip is not None else None)
        self.epoch_losses[-1].append(float(loss.detach()))


def _loader(n_batches: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8 * n_batches, 5, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [1.5]]) + 0.05 * torch.randn(
        8 * n_batches, 1, generator=gen
    )
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(tmp_path: Path, max_epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_lightning_manual_optimization_trains(tmp_path: Path) -> None:
    module = _MGModule(beta=2)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(module, _loader(8))
    first, second = (sum(e) / len(e) for e in module.epoch_losses)
    assert second < first
    # reset at each epoch start: mirror on batch_idx % 2 == 0 in both epochs
    assert module.closure_calls == [2, 1] * 4 * 2
    assert module.clip_calls == 16  # once per step, mirror steps included
    # Lightning wraps the closure and runs on_before_optimizer_step after *each* closure call: 16 + 8 mirror
    assert module.before_step_hook_calls == 24
    opt = trainer.optimizers[0]
    assert isinstance(opt, MirrorGradient)
    # Observed: global_step counts LightningOptimizer.step calls (one per batch here), not base sub-steps:
    # 16 batches with beta=2 give global_step == 16, while Adam took 16 + 8 mirror sub-steps = 24 steps.
    assert trainer.global_step == 16
    first_param = next(module.parameters())
    assert int(opt.state[first_param]["step"]) == 24
    assert opt.step_count == 8  # reset at the start of epoch 2, then 8 calls


def test_lightning_checkpoint_restores_mirror_counter(tmp_path: Path) -> None:
    # Uninterrupted reference: 2 epochs x 4 batches, no per-epoch reset, beta=3: mirror on calls 0, 3, 6.
    reference = _MGModule(beta=3, reset_each_epoch=False, clip=None)
    _trainer(tmp_path / "ref", max_epochs=2).fit(reference, _loader(4))
    assert reference.closure_calls == [2, 1, 1, 2, 1, 1, 2, 1]

    first = _MGModule(beta=3, reset_each_epoch=False, clip=None)
    trainer = _trainer(tmp_path / "a", max_epochs=1)
    trainer.fit(first, _loader(4))
    ckpt = tmp_path / "one_epoch.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["optimizer_states"][0]["mirror"]["step_count"] == 4

    resumed = _MGModule(beta=3, reset_each_epoch=False, clip=None)
    _trainer(tmp_path / "b", max_epochs=2).fit(resumed, _loader(4), ckpt_path=ckpt)
    assert resumed.step_count_at_train_start == 4  # restored before training resumes
    assert resumed.closure_calls == [1, 1, 2, 1]  # calls 4..7 continue the schedule (a fresh one: 2, 1, 1, 2)
    for p, q in zip(resumed.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
