"""Pieces shared by the multimodal recommenders: the item features of each modality, the weights that mix
per-modality graphs, and the cache key of a graph built from features.

Every multimodal model takes any non-empty set of named modalities (`data.modalities`, name -> float32
[n_items, dim]); per-modality parts are built per entry, in the data set's modality order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import scipy.sparse as sp
from torch import Tensor, nn

from mgrec.data.interactions import InteractionData
from mgrec.graphs import cached_graph, knn_graph


def require_modalities(model: str, data: InteractionData | None) -> dict[str, Tensor]:
    """The data set's modalities, or a clear error when there is no data set or it has none."""
    if data is None:
        raise ValueError(f"{model} needs `data` (an InteractionData with item modalities) to be built")
    if not data.modalities:
        raise ValueError(
            f"{model} is a multimodal model and needs at least one item modality, but data set "
            f"{data.name!r} has none: list its feature files under `modalities:` in the data config"
        )
    return dict(data.modalities)


def mixing_weights(names: list[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    """Weights summing to one for the modalities `names`.

    The configured `weights` (e.g. MMRec's image 0.1 / text 0.9) are used, renormalised, when they name
    every modality present; otherwise, e.g. for tiktok's image + audio, every modality gets 1 / M.
    """
    if not names:
        raise ValueError("mixing_weights needs at least one modality")
    if weights and all(name in weights for name in names):
        chosen = {name: float(weights[name]) for name in names}
        total = sum(chosen.values())
        if total <= 0 or any(value < 0 for value in chosen.values()):
            raise ValueError(f"modality weights must be non-negative with a positive sum, got {chosen}")
        return {name: value / total for name, value in chosen.items()}
    return {name: 1.0 / len(names) for name in names}


class ModalityFeatures(nn.Module):
    """The raw item features of every modality: trainable `nn.Parameter`s (MMRec's
    `nn.Embedding.from_pretrained(features, freeze=False)`) or fixed non-persistent buffers (rebuilt from
    the data, so they do not bloat checkpoints)."""

    def __init__(self, features: Mapping[str, Tensor], trainable: bool) -> None:
        super().__init__()
        self.names = list(features)
        self.trainable = trainable
        for name, value in features.items():
            table = value.detach().float().clone()
            if trainable:
                self.register_parameter(name, nn.Parameter(table))
            else:
                self.register_buffer(name, table, persistent=False)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)

    def items(self) -> list[tuple[str, Tensor]]:
        return [(name, self[name]) for name in self.names]

    def dims(self) -> dict[str, int]:
        return {name: int(self[name].shape[1]) for name in self.names}


def graph_key(data: InteractionData, modality: str, **params: Any) -> Callable[[], dict[str, Any]]:
    """The cache key of a graph built from one modality's features and `params`: a hash of that modality's
    values only (a kNN graph does not depend on the interactions or on other modalities), computed only when
    `cached_graph` needs it (not at all with the cache off)."""

    def key() -> dict[str, Any]:
        values = data.modalities[modality].detach().cpu().contiguous().numpy()
        digest = hashlib.sha256(str((values.dtype, values.shape)).encode() + values.tobytes()).hexdigest()
        return {"features": digest[:20], "modality": modality, **params}

    return key


def mixed_knn_graph(
    data: InteractionData, weights: Mapping[str, float], k: int, cache_dir: str | None
) -> sp.csr_matrix:
    """FREEDOM's and DRAGON's frozen item graph: sum over modalities of weight x the binary kNN graph of
    that modality's raw features, each D^-1/2 K D^-1/2; each modality's graph cached on its own (the two
    models share the cache entries)."""
    return sum(
        (
            weight
            * cached_graph(
                cache_dir,
                "freedom-knn",
                graph_key(data, name, k=k, weighted=False, normalization="sym"),
                lambda name=name: knn_graph(data.modalities[name], k, weighted=False),
            )
            for name, weight in weights.items()
        ),
        start=sp.csr_matrix((data.n_items, data.n_items), dtype="float32"),
    )
