"""VBPR (He & McAuley, AAAI 2016) as in MMRec."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss, embedding_norm_loss
from mgrec.models.multimodal import ModalityFeatures, require_modalities

# MMRec concatenates text before image; any other modality follows in the data set's order
_MMREC_ORDER = {"text": 0, "image": 1}


class VBPR(Recommender):
    r"""Matrix factorisation whose item factors append a linear projection of the item's content features.

    .. math::
        e_i = \big[\, q_i \;;\; W f_i + b \,\big] \in \mathbb R^{2d}, \qquad
        f_i = [\, f_i^{(1)} ; \dots ; f_i^{(M)} \,], \qquad
        \hat y_{ui} = p_u^\top e_i, \; p_u \in \mathbb R^{2d}

    .. math::
        \mathcal L = \frac1B \sum_{(u,i,j)} \operatorname{softplus}(\hat y_{uj} - \hat y_{ui})
        + \lambda\,\frac{\lVert P_B\rVert_F + \lVert E_{B^+}\rVert_F + \lVert E_{B^-}\rVert_F}{B}

    with :math:`f_i^{(m)}` the fixed (not trained) raw features of every modality, concatenated in MMRec's
    order (text, then image, then any other modality in the data set's order), and the regulariser MMRec's
    EmbLoss: non-squared Frobenius norms of the batch's user, positive and negative embeddings (the full
    2d-dimensional item embeddings, projected part included) over the batch size. Initialisation as MMRec:
    :math:`P, Q` Xavier-uniform, :math:`W` Xavier-normal, :math:`b = 0`.

    Departure from MMRec (result unchanged): the loss projects only the batch's distinct items (the
    projection is row-wise); scoring projects all items once per evaluation pass (`cached`).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        reg_weight: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        self.user_embedding = nn.Parameter(
            nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * embedding_size))
        )
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        modalities = require_modalities(type(self).__name__, data)
        names = sorted(modalities, key=lambda name: _MMREC_ORDER.get(name, len(_MMREC_ORDER)))
        self.features = ModalityFeatures({name: modalities[name] for name in names}, trainable=False)
        self.item_linear = nn.Linear(sum(self.features.dims().values()), embedding_size)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)

    def item_embeddings(self, items: Tensor | None = None) -> Tensor:
        """[q_i ; W f_i + b] for `items` (all items when None), shape [len(items), 2d]."""
        if items is None:
            raw = torch.cat([table for _, table in self.features.items()], dim=1)
            return torch.cat([self.item_embedding, self.item_linear(raw)], dim=1)
        # W f_i is row-wise: project each distinct item once (about half of a batch's items are repeats)
        distinct, index = torch.unique(items, return_inverse=True)
        raw = torch.cat([table.index_select(0, distinct) for _, table in self.features.items()], dim=1)
        projected = self.item_linear(raw).index_select(0, index)
        return torch.cat([self.item_embedding.index_select(0, items), projected], dim=1)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_e = self.user_embedding.index_select(0, users)
        # positives and negatives gathered and projected together
        pos_e, neg_e = self.item_embeddings(torch.cat([pos_items, neg_items])).split(len(pos_items))
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        return ranking + self.hparams.reg_weight * embedding_norm_loss(user_e, pos_e, neg_e)

    @override
    def score(self, users: Tensor) -> Tensor:
        items = self.cached("items", self.item_embeddings)
        return self.user_embedding[users] @ items.T


__all__ = ["VBPR"]
