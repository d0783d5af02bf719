from __future__ import annotations

import numpy as np
import pytest

from mgrec.data import make_synthetic


def test_sizes_modalities_and_split() -> None:
    data = make_synthetic(300, 150, 6000, {"image": 12, "audio": 5}, seed=1)
    assert (data.n_users, data.n_items) == (300, 150)
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 6000
    assert data.modality_dims == {"image": 12, "audio": 5}
    assert data.valid.nnz > 0 and data.test.nnz > 0
    assert (data.train.multiply(data.test)).nnz == 0


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = make_synthetic(100, 80, 2000, {"text": 4}, seed=5)
    b = make_synthetic(100, 80, 2000, {"text": 4}, seed=5)
    c = make_synthetic(100, 80, 2000, {"text": 4}, seed=6)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_planted_topics_make_interactions_predictable_from_content() -> None:
    """Items a user interacts with are closer in feature space than random pairs: the content signal."""
    data = make_synthetic(400, 200, 8000, {"image": 16}, seed=2, feature_noise=0.5)
    features = data.modalities["image"].numpy()
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    users, items = data.train.nonzero()
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    same_user = users[:-1] == users[1:]
    co = (features[items[:-1]] * features[items[1:]]).sum(1)[same_user].mean()
    rng = np.random.default_rng(0)
    random_pairs = (features[rng.integers(0, 200, 5000)] * features[rng.integers(0, 200, 5000)]).sum(1).mean()
    assert co > random_pairs + 0.2


def test_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="too dense"):
        make_synthetic(10, 10, 80)
