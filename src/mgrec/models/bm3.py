"""BM3: Bootstrap Latent Representations for Multi-modal Recommendation (Zhou et al., WWW 2023)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import bipartite_mean_propagation, normalized_bipartite
from mgrec.models.base import Recommender
from mgrec.models.losses import embedding_norm_loss
from mgrec.models.multimodal import ModalityFeatures, require_modalities


def _cosine_gap(online: Tensor, target: Tensor) -> Tensor:
    """1 - mean cosine similarity of the rows (the target is already detached)."""
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()


class BM3(Recommender):
    r"""Self-supervised: a LightGCN backbone, dropout views instead of negatives, one shared predictor.

    Backbone (LightGCN on :math:`\hat A = D^{-1/2} A D^{-1/2}`, plus the item ID embedding once more):

    .. math::
        [H_u; H_i] = \frac{1}{L+1} \sum_{l=0}^{L} \hat A^l [E_u; E_i], \qquad
        h_u = H_u[u], \quad h_i = H_i[i] + E_i[i], \qquad
        z^{(m)}_i = W_m x^{(m)}_i + b_m

    with :math:`x^{(m)}` the raw features of modality :math:`m`, trainable as in MMRec. Online views go
    through the predictor :math:`p(x) = W_p x + b_p`; target views are :math:`\tilde x = \operatorname{
    dropout}_\rho(\operatorname{sg}(x))` (stop-gradient, then dropout). On a batch of interactions
    :math:`(u, i)` (no negatives), with :math:`c(a, b) = 1 - \operatorname{mean}\cos(a, b)` over the batch:

    .. math::
        \mathcal L = c(p(h_u), \tilde h_i) + c(p(h_i), \tilde h_u)
        + \lambda \frac{\lVert H_u\rVert_F + \lVert H_i + E_i\rVert_F}{n_{items}}
        + \gamma \sum_{m} \big[ c(p(z^{(m)}_i), \tilde h_i) + c(p(z^{(m)}_i), \tilde z^{(m)}_i) \big]

    The regulariser is MMRec's EmbLoss on the full propagated embeddings (non-squared norms over the row
    count of the last, i.e. the item table). For image + text the sum over modalities is MMRec's
    `loss_t + loss_v + loss_tv + loss_vt`. Scores are :math:`p(h_u)^\top p(h_i)`, as MMRec's
    `full_sort_predict`. Initialisation as MMRec: embeddings Xavier-uniform, predictor and projection
    weights Xavier-normal, their biases PyTorch's default.

    Departures from MMRec, none changing the loss or its distribution: the projections, the predictor
    and the target dropout are applied to the batch's distinct users/items only, not to whole tables (all
    are row-wise; one dropout mask per distinct row, as MMRec's one mask per table row), in one predictor
    call and one mask draw for all of them; the mask is `rand >= p` (F.dropout's Bernoulli distribution,
    another random stream); the user-item graph is propagated as its two bipartite blocks. A node without
    interactions gets a zero row in :math:`\hat A` (MMRec adds 1e-7 to its zero degree: the same zero row).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 1,
        dropout: float = 0.5,
        reg_weight: float = 0.1,
        cl_weight: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        modalities = require_modalities(type(self).__name__, data)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        self.predictor = nn.Linear(embedding_size, embedding_size)
        nn.init.xavier_normal_(self.predictor.weight)
        self.features = ModalityFeatures(modalities, trainable=True)
        self.projections = nn.ModuleDict(
            {name: nn.Linear(dim, embedding_size) for name, dim in self.features.dims().items()}
        )
        for projection in self.projections.values():
            nn.init.xavier_normal_(projection.weight)
        norm_r, norm_rt = normalized_bipartite(data.train)
        self.register_graph("norm_r", norm_r)
        self.register_graph("norm_rt", norm_rt)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """h_u [n_users, d] and h_i [n_items, d]: LightGCN's layer mean, the ID embedding added to items."""
        user_final, item_final = bipartite_mean_propagation(
            self.norm_r, self.norm_rt, self.user_embedding, self.item_embedding, self.hparams.n_layers
        )
        return user_final, item_final + self.item_embedding

    def _target(self, rows: Tensor) -> Tensor:
        """The target view: stop-gradient, then dropout (always on, as MMRec's F.dropout). The mask is drawn
        with `rand` (the same Bernoulli(1 - p) distribution as F.dropout, 2x faster than CPU `bernoulli_`)."""
        rows, p = rows.detach(), float(self.hparams.dropout)
        if p <= 0.0:
            return rows
        if p >= 1.0:
            return torch.zeros_like(rows)
        return (rows * (torch.rand_like(rows) >= p)).mul_(1.0 / (1.0 - p))

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, items = batch[0], batch[1]  # BM3 uses no negatives
        user_final, item_final = self.propagate()
        # distinct rows only: one dropout mask per user / item, as MMRec's dropout over whole tables
        unique_users, user_index = torch.unique(users, return_inverse=True)
        unique_items, item_index = torch.unique(items, return_inverse=True)
        projected = [
            self.projections[name](table.index_select(0, unique_items))
            for name, table in self.features.items()
        ]
        # users, items and every modality's projection through one predictor and one dropout call
        rows = torch.cat(
            [user_final.index_select(0, unique_users), item_final.index_select(0, unique_items), *projected]
        )
        sizes = [len(unique_users)] + [len(unique_items)] * (1 + len(projected))
        online = self.predictor(rows).split(sizes)
        target = self._target(rows).split(sizes)

        def per_user(table: Tensor) -> Tensor:
            return table.index_select(0, user_index)

        def per_item(table: Tensor) -> Tensor:
            return table.index_select(0, item_index)

        item_target = per_item(target[1])
        loss = _cosine_gap(per_user(online[0]), item_target)
        loss = loss + _cosine_gap(per_item(online[1]), per_user(target[0]))
        loss = loss + self.hparams.reg_weight * embedding_norm_loss(user_final, item_final)
        alignment = torch.zeros((), device=loss.device)
        for modality_online, modality_target in zip(online[2:], target[2:], strict=True):
            modality_online = per_item(modality_online)
            alignment = alignment + _cosine_gap(modality_online, item_target)
            alignment = alignment + _cosine_gap(modality_online, per_item(modality_target))
        return loss + self.hparams.cl_weight * alignment

    def _predicted(self) -> tuple[Tensor, Tensor]:
        user_final, item_final = self.propagate()
        return self.predictor(user_final), self.predictor(item_final)

    @override
    def score(self, users: Tensor) -> Tensor:
        user_online, item_online = self.cached("predicted", self._predicted)
        return user_online[users] @ item_online.T


__all__ = ["BM3"]
