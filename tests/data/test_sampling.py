from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mgrec.data import InteractionData
from mgrec.data.sampling import EpochBatchSampler, interaction_keys, sample_negatives


def test_negatives_are_never_training_items() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 50
    # dense users (45 of 50 items) make rejection frequent
    dense = (rng.random((n_users, n_items)) < 0.9).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 0  # at least one negative per user
    train = sp.csr_matrix(dense)
    keys = interaction_keys(train)
    users = torch.from_numpy(np.repeat(np.arange(n_users), 200))
    negatives = sample_negatives(users, keys, n_items, torch.Generator().manual_seed(0))
    assert dense[users.numpy(), negatives.numpy()].sum() == 0
    assert len(np.unique(negatives.numpy())) > n_items // 2


def test_epoch_batches_cover_every_interaction_once(tiny_data: InteractionData) -> None:
    sampler = EpochBatchSampler(tiny_data.train, batch_size=100, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-tiny_data.train.nnz // 100)
    users = torch.cat([b[0] for b in batches]).numpy()
    items = torch.cat([b[1] for b in batches]).numpy()
    negatives = torch.cat([b[2] for b in batches]).numpy()
    seen = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=tiny_data.train.shape)
    assert (seen != tiny_data.train).nnz == 0
    assert np.asarray(tiny_data.train[users.copy(), negatives.copy()]).sum() == 0


def test_epochs_are_redrawn_and_reproducible(tiny_data: InteractionData) -> None:
    sampler = EpochBatchSampler(tiny_data.train, batch_size=100, seed=3)
    first = sampler.epoch_interactions()
    again = sampler.epoch_interactions()
    sampler.set_epoch(1)
    second = sampler.epoch_interactions()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=False))
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[2], second[2])


def test_ranks_split_every_global_batch_equally(tiny_data: InteractionData) -> None:
    """Rank r takes rows r::2 of each global batch: the two shares interleave back into exactly the
    batches one process draws (on the epoch cut to a multiple of the world size)."""
    single = list(EpochBatchSampler(tiny_data.train, 64, seed=1))
    shares = [EpochBatchSampler(tiny_data.train, 64, seed=1, rank=r, world_size=2) for r in (0, 1)]
    per_rank = [list(s) for s in shares]
    assert len(per_rank[0]) == len(per_rank[1]) == len(shares[0]) == len(single)
    n_used = tiny_data.train.nnz - tiny_data.train.nnz % 2
    assert sum(len(b[0]) for b in per_rank[0] + per_rank[1]) == n_used
    for whole, first, second in zip(single, *per_rank, strict=True):
        assert len(first[0]) == len(second[0])
        for column, a, b in zip(whole, first, second, strict=True):
            merged = torch.stack([a, b], dim=1).reshape(-1)
            assert torch.equal(merged, column[: len(merged)])


def test_global_batch_must_split_evenly(tiny_data: InteractionData) -> None:
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        EpochBatchSampler(tiny_data.train, 63, rank=0, world_size=2)
