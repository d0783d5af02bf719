"""`RecDataModule`: reads (or builds) a data set and serves training and full-ranking evaluation batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_method
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from mgrec.data.interactions import InteractionData, read_mmrec
from mgrec.data.sampling import EpochBatchSampler
from mgrec.data.synthetic import make_synthetic
from mgrec.perturb import perturb_data

log = logging.getLogger(__name__)


class _Identity(Dataset):
    """A map-style data set whose items are the sampler's outputs (whole batches), or a list of batches."""

    def __init__(self, items: Sequence[Any] | None = None) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items or ())

    def __getitem__(self, index: Any) -> Any:
        return index if self.items is None else self.items[index]


def eval_batches(
    data: InteractionData, split: str, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[tuple[Tensor, ...]]:
    """Batches `(users, train_rows, train_items, truth_rows, truth_items)` for full ranking on `split`.

    Rows are local to the batch. Evaluation users (ground truth in `split` and training items) are dealt to
    ranks round-robin with no padding, so the union over ranks is every user exactly once.
    """
    users = data.eval_users(split)[rank::world_size]
    truth = getattr(data, split)
    batches = []
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        train_rows = data.train[chunk].tocoo()
        truth_rows = truth[chunk].tocoo()
        batches.append(
            tuple(
                torch.from_numpy(np.asarray(a, dtype=np.int64))
                for a in (chunk, train_rows.row, train_rows.col, truth_rows.row, truth_rows.col)
            )
        )
    return batches


class RecDataModule(LightningDataModule):
    """A data set in MMRec's layout at `path` (`<name>.inter` + modality `.npy` files).

    `builder` (a dotted function path taking the folder) builds the files on first use, on rank 0.
    """

    def __init__(
        self,
        name: str,
        path: str | None = None,
        modalities: Mapping[str, str] | None = None,
        builder: str | None = None,
        batch_size: int = 2048,
        eval_batch_size: int = 4096,
        sampling_seed: int = 0,
        noise: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name, self.path, self.builder = name, path, builder
        self.noise = noise  # training-time feature noise (mgrec.perturb spec), applied once in setup
        self.modalities = dict(modalities or {})
        self.batch_size, self.eval_batch_size, self.sampling_seed = batch_size, eval_batch_size, sampling_seed
        self.data: InteractionData | None = None

    def load(self) -> InteractionData:
        if self.path is None:
            raise ValueError(f"data set {self.name!r}: data.path is not set")
        return read_mmrec(self.path, self.name, self.modalities)

    @override
    def prepare_data(self) -> None:
        if self.builder and self.path and not (Path(self.path) / f"{self.name}.inter").is_file():
            log.info("Building data set %s into %s", self.name, self.path)
            get_method(self.builder)(self.path)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = perturb_data(self.load(), self.noise)
            log.info(self.data.summary())

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    @override
    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_world()
        # negatives are drawn on the training device (on a GPU, batches never round-trip to the host)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        sampler = EpochBatchSampler(
            self.data.train, self.batch_size, self.sampling_seed, rank, world_size, device=device
        )
        return DataLoader(_Identity(), sampler=sampler, batch_size=None)

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world_size = self._rank_world()
        batches = eval_batches(self.data, split, self.eval_batch_size, rank, world_size)
        return DataLoader(_Identity(batches), batch_size=None, shuffle=False)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class SyntheticDataModule(RecDataModule):
    """`make_synthetic` with the given size and modalities `{name: dim}`; nothing is read from disk."""

    def __init__(
        self,
        n_users: int = 500,
        n_items: int = 300,
        n_interactions: int = 10_000,
        modalities: Mapping[str, int] | None = None,
        name: str = "synthetic",
        seed: int = 0,
        generator: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.size = {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions}
        self.modality_dims = dict(modalities or {})
        self.seed = seed
        self.generator = dict(generator or {})

    @override
    def load(self) -> InteractionData:
        return make_synthetic(
            **self.size, modalities=self.modality_dims, seed=self.seed, name=self.name, **self.generator
        )
