"""LightGCN (He et al., SIGIR 2020) as in MMRec."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import normalized_adjacency, symmetric_spmm
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss, embedding_norm_loss


class LightGCN(Recommender):
    r"""Linear propagation on the symmetric-normalised user-item graph, mean of the layer outputs.

    .. math::
        E^{(l+1)} = \hat A E^{(l)}, \quad \hat A = D^{-1/2} A D^{-1/2}, \qquad
        E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}, \qquad \hat y_{ui} = e_u^\top e_i

    Trained with BPR on the propagated embeddings plus MMRec's norm regulariser on the layer-0 (ego)
    embeddings of the batch.
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 3,
        reg_weight: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        if data is not None:
            self.register_graph("adjacency", normalized_adjacency(data.train))

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings [n_users, d], [n_items, d]."""
        layer = torch.cat([self.user_embedding, self.item_embedding])
        total = layer
        for _ in range(self.hparams.n_layers):
            layer = symmetric_spmm(self.adjacency, layer)
            total = total + layer
        final = total / (self.hparams.n_layers + 1)
        return final[: self.n_users], final[self.n_users :]

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_final, item_final = self.propagate()
        user_e = user_final[users]
        ranking = bpr_loss((user_e * item_final[pos_items]).sum(1), (user_e * item_final[neg_items]).sum(1))
        ego = (self.user_embedding[users], self.item_embedding[pos_items], self.item_embedding[neg_items])
        return ranking + self.hparams.reg_weight * embedding_norm_loss(*ego)

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("propagate", self.propagate)
        return user_final[users] @ item_final.T
