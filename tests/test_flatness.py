"""Flatness probes (mgrec.flatness) against closed forms on a quadratic "recommender", and the eval tasks
`task=sharpness` / `task=landscape` and `python -m mgrec.flatness compare` end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from mgrec import flatness
from mgrec.data import InteractionData
from mgrec.eval import evaluate
from mgrec.flatness import (
    filter_normalized_direction,
    hessian_top_eigenvalue,
    loss_landscape_1d,
    loss_landscape_2d,
    random_sharpness,
    training_batches,
    worst_sharpness,
)
from mgrec.models.base import Recommender
from mgrec.train import train

DUMMY_BATCHES = [(torch.zeros(1, dtype=torch.long),) * 3] * 2


def spd(eigenvalues: list[float], seed: int) -> Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


class Quadratic(Recommender):
    """loss = sum_i 0.5 (w_i - c_i)^T A_i (w_i - c_i) over parameter tensors w_i (flattened), initialised at
    the minimum w_i = c_i; `noise` adds a random term drawn from torch's RNG to every loss call, and
    `bias` adds an unused 1-D parameter."""

    def __init__(self, blocks: list[tuple[Tensor, Tensor]], noise: float = 0.0, bias: bool = False) -> None:
        super().__init__(n_users=1, n_items=1)
        self.weights = nn.ParameterList([nn.Parameter(c.clone()) for _, c in blocks])
        for i, (a, c) in enumerate(blocks):
            self.register_buffer(f"a{i}", a)
            self.register_buffer(f"c{i}", c.clone())
        self.noise = noise
        self.bias = nn.Parameter(torch.ones(3, dtype=torch.float64)) if bias else None

    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for i, w in enumerate(self.weights):
            d = (w - getattr(self, f"c{i}")).reshape(-1)
            total = total + 0.5 * d @ getattr(self, f"a{i}") @ d
        if self.noise:
            total = total + self.noise * torch.rand(())
        return total


def two_blocks() -> tuple[Quadratic, list[tuple[Tensor, Tensor]]]:
    """Block 1: large weights, small curvature; block 2: small weights, large curvature (so a global radius
    and a tensor-wise one give different answers)."""
    generator = torch.Generator().manual_seed(0)
    blocks = [
        (
            spd([2.0, 1.0, 0.5, 0.5, 0.2, 0.1], 1),
            5.0 * torch.randn(2, 3, generator=generator, dtype=torch.float64),
        ),
        (spd([9.0, 4.0, 3.0, 1.0], 2), 0.5 * torch.randn(2, 2, generator=generator, dtype=torch.float64)),
    ]
    return Quadratic(blocks), blocks


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_restored(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("hvp", ["autograd", "fd", "auto"])
def test_top_eigenvalue_of_a_quadratic(hvp: str) -> None:
    a = spd([7.0, 3.0, 2.0, 1.0, 0.5], 3)
    model = Quadratic([(a, torch.arange(5, dtype=torch.float64).reshape(1, 5) + 1.0)])
    result = hessian_top_eigenvalue(model, DUMMY_BATCHES, iters=300, tol=1e-10, seed=0, hvp=hvp)
    assert result["eigenvalue"] == pytest.approx(7.0, rel=1e-4)
    assert result["converged"]
    assert result["method"] == ("autograd" if hvp == "auto" else hvp)


def test_top_eigenvalue_spans_all_tensors() -> None:
    model, _ = two_blocks()  # the top eigenvalue, 9, lives in the second tensor
    assert hessian_top_eigenvalue(model, DUMMY_BATCHES, iters=500, tol=1e-12)["eigenvalue"] == pytest.approx(
        9.0, rel=1e-4
    )


def test_random_sharpness_matches_its_expectation() -> None:
    """At the minimum, L(w + e) - L(w) = sum_i 0.5 e_i^T A_i e_i with e_i uniform on the sphere of radius
    rho ||w_i||: expectation sum_i 0.5 rho^2 ||w_i||^2 tr(A_i) / n_i."""
    model, blocks = two_blocks()
    rho = 0.1
    expected = sum(0.5 * rho**2 * float(c.square().sum()) * float(a.trace()) / a.shape[0] for a, c in blocks)
    global_radius = sum(  # what a single radius rho ||w|| over all weights would give
        0.5 * rho**2 * sum(float(c.square().sum()) for _, c in blocks) * float(a.trace()) / 10
        for a, _ in blocks
    )
    assert abs(global_radius - expected) > 0.3 * expected  # the test tells the two scalings apart
    result = random_sharpness(model, DUMMY_BATCHES[:1], rho, n_draws=1200, seed=0)
    assert result["mean"] == pytest.approx(expected, rel=0.04)  # about 3 standard errors
    assert result["max"] >= result["mean"] > 0 and result["std"] > 0
    assert len(result["increases"]) == 1200
    # every draw has exactly the tensor-wise radius: between the smallest and largest Rayleigh quotients
    low = sum(0.5 * rho**2 * float(c.square().sum()) * float(torch.linalg.eigvalsh(a)[0]) for a, c in blocks)
    high = sum(
        0.5 * rho**2 * float(c.square().sum()) * float(torch.linalg.eigvalsh(a)[-1]) for a, c in blocks
    )
    assert low - 1e-12 <= min(result["increases"]) and max(result["increases"]) <= high + 1e-12


def test_worst_sharpness_finds_the_top_of_the_ball() -> None:
    """The maximum over the ball ||e_i|| <= rho ||w_i|| is sum_i 0.5 rho^2 ||w_i||^2 lambda_max(A_i)."""
    model, blocks = two_blocks()
    rho = 0.1
    bound = sum(
        0.5 * rho**2 * float(c.square().sum()) * float(torch.linalg.eigvalsh(a)[-1]) for a, c in blocks
    )
    worst = worst_sharpness(model, DUMMY_BATCHES, rho, steps=60, seed=0)
    random = random_sharpness(model, DUMMY_BATCHES, rho, n_draws=50, seed=0)
    assert worst["worst"] <= bound * (1 + 1e-9)  # never leaves the ball
    assert worst["worst"] == pytest.approx(bound, rel=1e-3)
    assert worst["worst"] >= random["max"] >= random["mean"]
    assert worst["increases"][0] == pytest.approx(random["increases"][0])  # starts from the first draw
    few = worst_sharpness(model, DUMMY_BATCHES, rho, steps=2, seed=0)
    assert random["mean"] < few["worst"] <= worst["worst"] + 1e-12


def test_landscape_follows_the_quadratic_and_is_consistent() -> None:
    model, blocks = two_blocks()
    one = loss_landscape_1d(model, DUMMY_BATCHES, n_points=11, span=0.5, seed=4)
    two = loss_landscape_2d(model, DUMMY_BATCHES, n_points=11, span=0.5, seed=4)
    assert one["alphas"][5] == 0.0 and one["losses"][5] == one["loss"] == pytest.approx(0.0, abs=1e-24)
    assert two["losses"][5, 5] == two["loss"]
    np.testing.assert_allclose(two["losses"][:, 5], one["losses"], rtol=1e-12)  # d1 is the 1-D direction
    d = filter_normalized_direction([c for _, c in blocks], torch.Generator().manual_seed(4))
    curvature = sum(float(u.reshape(-1) @ a @ u.reshape(-1)) for (a, _), u in zip(blocks, d, strict=True))
    np.testing.assert_allclose(one["losses"], 0.5 * one["alphas"] ** 2 * curvature, rtol=1e-10)
    assert not np.allclose(two["losses"][5, :], one["losses"])  # d2 differs from d1


def test_filter_normalized_direction() -> None:
    weights = [torch.randn(4, 3), torch.zeros(2, 5), torch.randn(3), torch.randn(2, 3, 2)]
    weights[1][0] = 1.0  # one zero row, one non-zero row
    d = filter_normalized_direction(weights, torch.Generator().manual_seed(0))
    torch.testing.assert_close(d[0].norm(dim=1), weights[0].norm(dim=1))
    torch.testing.assert_close(d[1].norm(dim=1), weights[1].norm(dim=1))
    assert torch.equal(d[2], torch.zeros(3))  # 1-D tensors (biases) are not moved
    torch.testing.assert_close(d[3].reshape(2, -1).norm(dim=1), weights[3].reshape(2, -1).norm(dim=1))
    again = filter_normalized_direction(weights, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(d, again, strict=True))


def test_loss_randomness_is_fixed_between_evaluations() -> None:
    """A loss with torch-RNG noise: with the RNG reseeded before every call, a zero radius changes nothing."""
    model, _ = two_blocks()
    model.noise = 1.0
    assert random_sharpness(model, DUMMY_BATCHES, 0.0, n_draws=5)["increases"] == [0.0] * 5
    assert worst_sharpness(model, DUMMY_BATCHES, 0.0, steps=2)["worst"] == 0.0


def test_probes_restore_weights_grads_mode_and_rng() -> None:
    model, _ = two_blocks()
    model.noise, model.bias = 0.5, nn.Parameter(torch.ones(3, dtype=torch.float64))
    model.eval()
    model.weights[0].grad = torch.full_like(model.weights[0], 3.0)
    before, rng = snapshot(model), torch.get_rng_state()
    probes: list[Callable[[], object]] = [
        lambda: random_sharpness(model, DUMMY_BATCHES, 0.3, n_draws=3),
        lambda: worst_sharpness(model, DUMMY_BATCHES, 0.3, steps=3),
        lambda: hessian_top_eigenvalue(model, DUMMY_BATCHES, iters=3, hvp="fd"),
        lambda: hessian_top_eigenvalue(model, DUMMY_BATCHES, iters=3, hvp="autograd"),
        lambda: loss_landscape_1d(model, DUMMY_BATCHES, n_points=4),
        lambda: loss_landscape_2d(model, DUMMY_BATCHES, n_points=3),
    ]
    for probe in probes:
        probe()
        assert_restored(model, before)
        assert not model.training
        assert torch.equal(model.weights[0].grad, torch.full_like(model.weights[0], 3.0))
        assert model.weights[1].grad is None
        assert torch.equal(torch.get_rng_state(), rng)


def test_auto_hvp_avoids_once_differentiable_functions(
    tiny_data: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LightGCN's fused propagation is once_differentiable: double backward silently drops its second-order
    terms, so `auto` must use differences, and agree with float64 differences."""
    from mgrec.models.bpr import BPR
    from mgrec.models.lightgcn import LightGCN

    torch.manual_seed(0)
    model = LightGCN(data=tiny_data)
    batches = training_batches(model, 2, 256, seed=0)
    auto = hessian_top_eigenvalue(model, batches, iters=40, tol=1e-6, hvp="auto")
    assert auto["method"] == "fd"
    exact = hessian_top_eigenvalue(model.double(), batches, iters=40, tol=1e-6, hvp="fd")
    assert auto["eigenvalue"] == pytest.approx(exact["eigenvalue"], rel=0.02)
    dropped = hessian_top_eigenvalue(model, batches, iters=40, tol=1e-6, hvp="autograd")
    assert dropped["eigenvalue"] != pytest.approx(exact["eigenvalue"], rel=0.1)  # why `auto` exists
    with flatness._Probe(model, batches, 0, True) as probe:  # the graph walk finds the fused propagation
        assert probe.once_differentiable() == {"_BipartiteMeanPropagation"}
    # each safeguard alone suffices: the graph walk without the numerical check, and the check without it
    with monkeypatch.context() as patch:
        patch.setattr(flatness, "AUTOGRAD_CHECK", float("inf"))
        assert hessian_top_eigenvalue(model, batches, iters=1)["method"] == "fd"
    with monkeypatch.context() as patch:
        patch.setattr(flatness._Probe, "once_differentiable", lambda self: set())
        assert hessian_top_eigenvalue(model, batches, iters=1)["method"] == "fd"
    plain = BPR(data=tiny_data)  # no custom functions: double backward is used
    assert hessian_top_eigenvalue(plain, training_batches(plain, 1, 256), iters=2)["method"] == "autograd"


def test_training_batches_are_seeded(tiny_data: InteractionData) -> None:
    from mgrec.models.bpr import BPR

    model = BPR(data=tiny_data)
    a, b, c = (training_batches(model, 3, 100, seed=s) for s in (1, 1, 2))
    assert len(a) == 3 and all(len(batch[0]) == 100 for batch in a)
    assert all(torch.equal(x, y) for ba, bb in zip(a, b, strict=True) for x, y in zip(ba, bb, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


# ----------------------------------------------------------------------------- tasks
def eval_cfg(make_cfg: Callable[..., DictConfig], run: Path, out: Path, *overrides: str) -> DictConfig:
    cfg = make_cfg(
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        "extras.print_config=false",
        *overrides,
        config_name="eval.yaml",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.mark.parametrize("model", ["lightgcn", "bm3"])
def test_sharpness_and_landscape_tasks(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, model: str
) -> None:
    train(make_cfg(f"model={model}", "trainer.max_epochs=1"))
    run = tmp_path / "run"
    sharp = evaluate(
        eval_cfg(
            make_cfg,
            run,
            tmp_path / "sharp",
            "task=sharpness",
            "sharpness.rho=[0.01,0.05]",
            "sharpness.draws=3",
            "sharpness.ascent_steps=2",
            "sharpness.batches=2",
            "sharpness.power_iters=3",
        )
    )
    saved = json.loads((tmp_path / "sharp" / "metrics.json").read_text())
    keys = [f"sharpness/{kind}@{rho}" for kind in ("random", "worst") for rho in ("0.01", "0.05")]
    for key in [*keys, "hessian/top_eigenvalue", "train_loss"]:
        assert np.isfinite(saved[key]), key
    assert saved == json.loads(json.dumps(sharp))
    assert saved["model"] == model and saved["hessian/hvp_method"] == "fd"  # both use the fused propagation
    assert saved["sharpness/worst@0.05"] >= saved["sharpness/worst@0.01"]
    assert not any(k.startswith("test/") for k in saved)  # the probes replace the ranking evaluation

    evaluate(
        eval_cfg(
            make_cfg,
            run,
            tmp_path / "land",
            "task=landscape",
            "landscape.points_1d=5",
            "landscape.points_2d=3",
            "landscape.batches=1",
        )
    )
    land = tmp_path / "land"
    for name in (
        "landscape_1d.npz",
        "landscape_2d.npz",
        "landscape_1d.png",
        "landscape_2d.png",
        "metrics.json",
    ):
        assert (land / name).is_file(), name
    with np.load(land / "landscape_1d.npz") as one, np.load(land / "landscape_2d.npz") as two:
        assert one["losses"].shape == (5,) and two["losses"].shape == (3, 3)
        assert one["losses"][2] == pytest.approx(float(one["loss"]))
        assert two["losses"][1, 1] == pytest.approx(float(two["loss"]))
        loss = float(one["loss"])
    assert json.loads((land / "metrics.json").read_text())["train_loss"] == pytest.approx(loss)


def test_compare_cli(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """Two training runs (adam, mg), compared from their run folders and from task=landscape outputs."""
    runs = {}
    for optimizer in ("adam", "mg"):
        cfg = make_cfg("model=bpr", f"optimizer={optimizer}", "trainer.max_epochs=1")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / optimizer)
        train(cfg)
        runs[optimizer] = tmp_path / optimizer
    small = ["--batches", "1", "--points-1d", "5", "--points-2d", "3", "--draws", "2", "--power-iters", "2"]
    flatness.main(["compare", str(runs["adam"]), str(runs["mg"]), "--out", str(tmp_path / "cmp"), *small])
    out = tmp_path / "cmp"
    assert (out / "flatness_comparison.png").stat().st_size > 1000
    table = (out / "flatness_table.md").read_text()
    assert "sharpness/random@0.05" in table and "| mg |" in table and "| baseline |" in table
    rows = (out / "flatness_table.csv").read_text().splitlines()
    assert len(rows) == 3 and "hessian/top_eigenvalue" in rows[0]

    for optimizer, run in runs.items():
        evaluate(
            eval_cfg(
                make_cfg,
                run,
                tmp_path / f"land_{optimizer}",
                "task=landscape",
                "landscape.points_1d=5",
                "landscape.points_2d=3",
                "landscape.batches=1",
            )
        )
    flatness.main(
        ["compare", str(tmp_path / "land_adam"), str(tmp_path / "land_mg"), "--out", str(out / "b")]
    )
    assert (out / "b" / "flatness_comparison.png").is_file()
    assert "train_loss" in (out / "b" / "flatness_table.md").read_text()


def test_comparison_plot_without_2d_landscapes(tmp_path: Path) -> None:
    alphas = np.linspace(-1.0, 1.0, 5)
    lands_1d = [
        (label, {"alphas": alphas, "losses": alphas**2 + shift}) for label, shift in (("a", 0.0), ("b", 1.0))
    ]
    flatness.plot_comparison(lands_1d, [], tmp_path / "one_panel.png")
    assert (tmp_path / "one_panel.png").stat().st_size > 0
