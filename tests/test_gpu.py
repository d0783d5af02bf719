"""GPU checks (marker `gpu`, skipped without CUDA): a training epoch on the GPU with batches sampled there,
GPU scores against CPU scores for the same weights, and DDP on two GPUs. Run them with `pytest -m gpu` or
`bash scripts/gpu_check.sh OUT_DIR` (which also runs the GPU benchmark)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer
from omegaconf import OmegaConf

from mgrec.data import InteractionData, RecDataModule, make_synthetic
from mgrec.data.sampling import EpochBatchSampler, interaction_keys
from mgrec.models import Recommender
from mgrec.optim import MirrorGradient

from .conftest import FAST, ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BATCH = 512
OPTIMIZERS = {
    "adam": functools.partial(torch.optim.Adam, lr=1e-3),
    "mg": functools.partial(
        MirrorGradient, optimizer=torch.optim.Adam, lr=1e-3, alpha1=1.0, alpha2=0.2, beta=3
    ),
}


@functools.cache
def gpu_data() -> InteractionData:
    return make_synthetic(
        n_users=600, n_items=300, n_interactions=12_000, modalities={"image": 64, "text": 32}, seed=0
    )


def build(name: str, data: InteractionData, optimizer: str = "adam") -> Recommender:
    """The model with its configs/model/<name>.yaml defaults, on the CPU, seeded."""
    torch.manual_seed(0)
    config = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    return instantiate(config, _partial_=True)(data=data, optimizer=OPTIMIZERS[optimizer])


class BatchDevices(Callback):
    """Records the device the training sampler draws on (before any transfer) and that of the batches the
    model receives."""

    def __init__(self) -> None:
        self.sampler_devices: set[str] = set()
        self.batch_devices: set[str] = set()
        self.batches = 0

    def on_train_epoch_start(self, trainer: Trainer, module: Any) -> None:
        self.sampler_devices.add(trainer.train_dataloader.sampler.device.type)

    def on_train_batch_start(self, trainer: Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self.batch_devices |= {t.device.type for t in batch}
        self.batches += 1


@pytest.fixture
def full_float32() -> Iterator[None]:
    """Full float32 products on the GPU (no TF32) for the test, restored afterwards."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def train_one_epoch_on_gpu(model: Recommender, data: InteractionData) -> tuple[Trainer, BatchDevices]:
    """`Trainer.fit` for one epoch on the GPU through `RecDataModule` (the training path of train.py)."""
    datamodule = RecDataModule(name=data.name, batch_size=BATCH, sampling_seed=0)
    datamodule.data = data
    recorder = BatchDevices()
    flags = ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary")
    trainer = Trainer(
        accelerator="gpu", devices=1, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        use_distributed_sampler=False, callbacks=[recorder], **dict.fromkeys(flags, False),
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    assert recorder.batches == -(-data.train.nnz // BATCH)
    return trainer, recorder


def test_sampler_draws_valid_negatives_on_the_gpu() -> None:
    data = gpu_data()
    sampler = EpochBatchSampler(data.train, BATCH, seed=0, device="cuda")
    users, positives, negatives = (t for t in sampler.epoch_interactions())
    assert {t.device.type for t in (users, positives, negatives)} == {"cuda"}
    keys = interaction_keys(data.train)
    drawn = (users * data.n_items + negatives).cpu()
    assert not torch.isin(drawn, keys).any(), "a negative is one of the user's training items"
    assert torch.equal(torch.sort((users * data.n_items + positives).cpu()).values, keys)


@pytest.mark.parametrize("optimizer", ["adam", "mg"])
@pytest.mark.parametrize("name", ["lightgcn", "bm3"])
def test_one_epoch_on_the_gpu(name: str, optimizer: str) -> None:
    data = gpu_data()
    model = build(name, data, optimizer)
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    trainer, recorder = train_one_epoch_on_gpu(model, data)
    assert recorder.sampler_devices == {"cuda"}, "the negatives were not drawn on the GPU"
    assert recorder.batch_devices == {"cuda"}
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    if optimizer == "mg":
        assert "train/mirror_loss" in trainer.callback_metrics, "MG took no mirror step"
    after = dict(model.named_parameters())
    assert all(torch.isfinite(value).all() for value in after.values())
    changed = [key for key, value in before.items() if not torch.equal(value, after[key].detach().cpu())]
    assert "user_embedding" in changed and "item_embedding" in changed


@pytest.mark.parametrize("name", ["lightgcn", "bm3"])
def test_gpu_scores_equal_cpu_scores(name: str, full_float32: None) -> None:
    data = gpu_data()
    model = build(name, data)
    train_one_epoch_on_gpu(model, data)  # weights that training on the GPU produced
    on_cpu = build(name, data)
    on_cpu.load_state_dict({key: value.cpu() for key, value in model.state_dict().items()})
    model.to("cuda").eval()
    on_cpu.eval()
    users = torch.arange(data.n_users)
    with torch.no_grad():
        gpu_scores = model.score(users.cuda())
        cpu_scores = on_cpu.score(users)
    assert gpu_scores.device.type == "cuda"
    assert not torch.equal(cpu_scores, build(name, data).eval().score(users).detach())  # trained weights
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, rtol=1e-4, atol=1e-5)


def train_cli(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    args = [arg for arg in FAST if not arg.startswith("trainer=")]
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, "trainer.max_epochs=2", f"paths.log_dir={tmp_path}", *overrides],
        cwd=ROOT, env={**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = (tmp_path / "train" / "runs").rglob("metrics.json")
    return json.loads(metrics.read_text())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_on_two_gpus_agrees_with_one(tmp_path: Path) -> None:
    one = train_cli(tmp_path / "one", "trainer=gpu", "optimizer=mg")
    two = train_cli(tmp_path / "two", "trainer=ddp", "trainer.devices=2", "optimizer=mg")
    for key in ("val/recall@20", "test/recall@20", "test/ndcg@20"):
        assert two[key] == pytest.approx(one[key], abs=0.02), key
