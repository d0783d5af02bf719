"""A seeded synthetic data set of any size with planted structure that models can learn.

Items belong to `n_clusters` latent topics; each user prefers one topic and draws a share
`affinity` of their interactions from it, the rest from the whole catalogue. Within a topic, items
are drawn with Zipf popularity (`popularity_skew`). Each modality's feature of an item is its topic's
random centroid projected to the modality's dimension plus Gaussian noise (`feature_noise`), so
content features carry the topic signal. The split follows MMRec's rule (`mmrec_split`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mgrec.data.interactions import InteractionData, from_interactions
from mgrec.data.split import mmrec_split


def _zipf_weights(n: int, skew: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** skew
    return weights / weights.sum()


def make_synthetic(
    n_users: int = 500,
    n_items: int = 300,
    n_interactions: int = 10_000,
    modalities: Mapping[str, int] | None = None,
    *,
    seed: int = 0,
    n_clusters: int = 10,
    affinity: float = 0.8,
    popularity_skew: float = 0.8,
    feature_noise: float = 1.0,
    name: str = "synthetic",
) -> InteractionData:
    """Generate `n_interactions` distinct (user, item) pairs (at least 3 per user) and item features."""
    if n_interactions > n_users * n_items // 2:
        raise ValueError(f"n_interactions={n_interactions} is too dense for {n_users} x {n_items}")
    if n_interactions < 3 * n_users:
        raise ValueError(f"n_interactions={n_interactions} must be at least 3 per user ({3 * n_users})")
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, n_clusters, n_items)
    # popularity rank within the catalogue, a random permutation so ids carry no signal
    item_rank = rng.permutation(n_items)
    item_weight = _zipf_weights(n_items, popularity_skew)[item_rank]
    user_topic = rng.integers(0, n_clusters, n_users)
    user_activity = rng.pareto(2.0, n_users) + 1.0

    # items sorted by (topic, popularity rank); each topic's within-topic CDF is shifted by the topic
    # index so that all topics form one increasing array and one searchsorted draws for every row
    order = np.lexsort((item_rank, item_topic))
    topic_start = np.searchsorted(item_topic[order], np.arange(n_clusters + 1))
    sorted_topic = item_topic[order]
    weights = item_weight[order]
    topic_total = np.bincount(sorted_topic, weights=weights, minlength=n_clusters)
    cumulative = np.cumsum(weights) - np.concatenate([[0.0], np.cumsum(topic_total)])[sorted_topic]
    shifted_cdf = cumulative / topic_total[sorted_topic] + sorted_topic
    global_cdf = np.cumsum(item_weight)

    seen = np.empty(0, dtype=np.int64)
    activity = user_activity / user_activity.sum()
    while len(seen) < n_interactions:
        want = int((n_interactions - len(seen)) * 1.3) + 16
        users = rng.choice(n_users, size=want, p=activity)
        if len(seen) == 0:
            users = np.concatenate([np.repeat(np.arange(n_users), 3), users])
        topics = user_topic[users]
        u = rng.random(len(users))
        in_topic = np.searchsorted(shifted_cdf, topics + u * (1 - 1e-12))
        in_topic = order[np.clip(in_topic, topic_start[topics], np.maximum(topic_start[topics + 1] - 1, 0))]
        anywhere = np.minimum(np.searchsorted(global_cdf, u * global_cdf[-1]), n_items - 1)
        use_topic = (rng.random(len(users)) < affinity) & (topic_start[topics + 1] > topic_start[topics])
        items = np.where(use_topic, in_topic, anywhere)
        seen = np.concatenate([seen, users.astype(np.int64) * n_items + items])
        _, first = np.unique(seen, return_index=True)
        seen = seen[np.sort(first)]
    seen = seen[:n_interactions]
    users, items = seen // n_items, seen % n_items
    labels = mmrec_split(users, seed)

    features = {}
    for modality, dim in (modalities or {}).items():
        centroids = rng.standard_normal((n_clusters, dim)).astype(np.float32)
        noise = rng.standard_normal((n_items, dim)).astype(np.float32) * feature_noise
        features[modality] = centroids[item_topic] + noise
    return from_interactions(users, items, labels, features, n_users=n_users, n_items=n_items, name=name)
