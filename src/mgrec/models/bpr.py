"""BPR-MF (Rendle et al., UAI 2009) as in MMRec."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss, embedding_norm_loss


class BPR(Recommender):
    r"""Matrix factorisation trained with the BPR loss.

    .. math::
        \hat y_{ui} = e_u^\top e_i, \qquad
        \mathcal L = -\frac1B \sum \log\sigma(\hat y_{ui} - \hat y_{uj})
        + \lambda\,\frac{\lVert E_u\rVert + \lVert E_i\rVert + \lVert E_j\rVert}{B}

    The regulariser is MMRec's (Frobenius norms of the batch embeddings, not squared, over the batch size).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        reg_weight: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        self.user_embedding = nn.Embedding(self.n_users, embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, embedding_size)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_e = self.user_embedding(users)
        pos_e, neg_e = self.item_embedding(pos_items), self.item_embedding(neg_items)
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        return ranking + self.hparams.reg_weight * embedding_norm_loss(user_e, pos_e, neg_e)

    @override
    def score(self, users: Tensor) -> Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T


__all__ = ["BPR"]
