"""LightGCN (He et al., SIGIR 2020) as in MMRec."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import bipartite_mean_propagation, normalized_bipartite
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
            # A_hat = [[0, R~], [R~^T, 0]] is kept as its two blocks: propagating users and items separately
            # avoids concatenating, slicing and zero-padding [n_users + n_items, d] tensors every batch
            norm_r, norm_rt = normalized_bipartite(data.train)
            self.register_graph("norm_r", norm_r)
            self.register_graph("norm_rt", norm_rt)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings [n_users, d], [n_items, d]: the mean of layers 0..L of A_hat^l E."""
        return bipartite_mean_propagation(
            self.norm_r, self.norm_rt, self.user_embedding, self.item_embedding, self.hparams.n_layers
        )

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_final, item_final = self.propagate()
        # one gather for positives and negatives together: one full-size scatter in backward, not two
        items = torch.cat([pos_items, neg_items])
        user_e = user_final[users]
        pos_e, neg_e = item_final[items].split(len(pos_items))
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        pos_ego, neg_ego = self.item_embedding[items].split(len(pos_items))
        return ranking + self.hparams.reg_weight * embedding_norm_loss(
            self.user_embedding[users], pos_ego, neg_ego
        )

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("propagate", self.propagate)
        return user_final[users] @ item_final.T
