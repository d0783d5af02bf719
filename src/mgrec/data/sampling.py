"""Vectorised training batches: every epoch, shuffle the training interactions and draw one negative item
per interaction uniformly among the items the user has not interacted with in training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

MAX_REJECTION_ROUNDS = 10_000


def interaction_keys(train: sp.csr_matrix) -> Tensor:
    """Sorted int64 keys user * n_items + item of the training interactions."""
    coo = train.tocoo()
    keys = coo.row.astype(np.int64) * train.shape[1] + coo.col.astype(np.int64)
    return torch.from_numpy(np.sort(keys))


def sample_negatives(users: Tensor, train_keys: Tensor, n_items: int, generator: torch.Generator) -> Tensor:
    """One uniform negative per entry of `users`, rejecting the user's training items (rejection rounds
    re-draw only the rejected entries, so the cost is a few vectorised passes, not a loop over users)."""
    negatives = torch.randint(n_items, users.shape, generator=generator, device=users.device)
    pending = torch.arange(len(users), device=users.device)
    for _ in range(MAX_REJECTION_ROUNDS):
        if not len(pending):
            return negatives
        keys = users[pending] * n_items + negatives[pending]
        position = torch.searchsorted(train_keys, keys).clamp_(max=len(train_keys) - 1)
        pending = pending[train_keys[position] == keys]
        negatives[pending] = torch.randint(n_items, pending.shape, generator=generator, device=users.device)
    raise RuntimeError(
        f"negative sampling did not converge: user(s) {users[pending][:5].tolist()} have (almost) "
        "every item in training"
    )


class EpochBatchSampler:
    """Yields the epoch's `(users, pos_items, neg_items)` batches, re-drawn for every epoch.

    The draw depends only on `(seed, epoch)`, so a resumed run sees the same batches. `batch_size` is the
    global batch: with `world_size > 1` every rank draws the same epoch and takes rows `rank::world_size`
    of each global batch, so a data-parallel step averages the gradients of exactly the batch a single
    process would use (the epoch is cut to a multiple of `world_size` interactions, at most
    `world_size - 1` dropped, so every rank gets equal shares and runs the same number of steps).
    """

    def __init__(
        self,
        train: sp.csr_matrix,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size % world_size:
            raise ValueError(
                f"data.batch_size={batch_size} is the global batch and must be divisible by the number of "
                f"processes ({world_size}) so that every rank gets an equal share"
            )
        empty = np.flatnonzero(np.diff(train.indptr) == train.shape[1])
        if len(empty):
            raise ValueError(f"user {empty[0]} has interacted with every item: no negative can be drawn")
        coo = train.tocoo()
        self.device = torch.device(device)
        self.users = torch.from_numpy(coo.row.astype(np.int64)).to(self.device)
        self.items = torch.from_numpy(coo.col.astype(np.int64)).to(self.device)
        self.train_keys = interaction_keys(train).to(self.device)
        self.n_items = train.shape[1]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def n_used(self) -> int:
        """Interactions used per epoch over all ranks (a multiple of `world_size`)."""
        return len(self.users) - len(self.users) % self.world_size

    def __len__(self) -> int:
        return -(-self.n_used // self.batch_size)

    def epoch_interactions(self) -> tuple[Tensor, Tensor, Tensor]:
        """The epoch's shuffled users, positives and sampled negatives, over all ranks (the same on each)."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.users), generator=generator, device=self.device)[: self.n_used]
        users = self.users[order]
        return users, self.items[order], sample_negatives(users, self.train_keys, self.n_items, generator)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        epoch = self.epoch_interactions()
        for start in range(0, self.n_used, self.batch_size):
            rows = slice(start + self.rank, start + self.batch_size, self.world_size)
            yield tuple(column[rows] for column in epoch)
