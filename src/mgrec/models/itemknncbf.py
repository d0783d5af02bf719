"""ItemKNNCBF as in MMRec: content-based item kNN, no training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import cached_graph, knn_graph
from mgrec.models.base import Recommender
from mgrec.models.multimodal import graph_key, require_modalities


class ItemKNNCBF(Recommender):
    r"""Score an item by the shrunk content similarity of the user's training items to it.

    .. math::
        s_{ij} = \frac{x_i^\top x_j}{\lVert x_i\rVert \lVert x_j\rVert + \text{shrink}}, \qquad
        S_{ij} = s_{ij}\,[j \in \operatorname{top}_k(s_{i\cdot})], \qquad
        \hat y_{uj} = \sum_{i \in R_u} S_{ij}

    :math:`x` is the concatenation of every modality's raw features (MMRec's ``cat(v_feat, t_feat)`` for
    image + text), item i itself among its k neighbours. Nothing is learned (MMRec's
    ``req_training: False``): `requires_training` is False, so the training task skips fitting and
    evaluates at once, and any optimizer, Mirror Gradient included, is a no-op (logged, not an error).

    Departures from MMRec, none changing a score: S is built block-wise and kept sparse (k entries per
    row), and a batch's scores are R[users] S (MMRec materialises the dense item x item similarity and the
    dense users x items score matrix, which cannot exist at Elec's size).
    """

    requires_training = False

    def __init__(
        self,
        data: InteractionData | None = None,
        knn_k: int = 10,
        shrink: float = 10.0,
        graph_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        modalities = require_modalities(type(self).__name__, data)
        names = list(modalities)
        features = torch.cat([modalities[name].float() for name in names], dim=1)
        self.similarity = cached_graph(
            graph_cache_dir,
            "itemknncbf",
            lambda: {"features": [graph_key(data, name)() for name in names], "k": knn_k, "shrink": shrink},
            lambda: knn_graph(features, knn_k, weighted=True, normalization="none", shrink=shrink),
        )
        self.interactions = data.train.astype(np.float32)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        raise RuntimeError("ItemKNNCBF has nothing to train (requires_training is False)")

    @override
    def score(self, users: Tensor) -> Tensor:
        scores = (self.interactions[users.cpu().numpy()] @ self.similarity).toarray()
        return torch.from_numpy(scores).to(self.device)

    @override
    def configure_optimizers(self) -> None:
        return None

    @override
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        return None
