"""FREEDOM (Zhou & Shen, ACM MM 2023) as in MMRec: a frozen item-item graph and a denoised user-item graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import (
    bipartite_mean_propagation,
    degree_sensitive_prune,
    normalized_bipartite,
    scipy_to_torch,
    transposed_spmm,
)
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss
from mgrec.models.multimodal import ModalityFeatures, mixed_knn_graph, mixing_weights, require_modalities

# MMRec's mm_image_weight = 0.1: the image kNN graph weighs 0.1, the text one 0.9
MMREC_MODALITY_WEIGHTS = {"image": 0.1, "text": 0.9}


class FREEDOM(Recommender):
    r"""LightGCN on a degree-sensitively pruned user-item graph plus a frozen multimodal item-item graph.

    .. math::
        S = \sum_m w_m\, D_m^{-1/2} K_m D_m^{-1/2}, \qquad h = S^{L_{mm}} E_i^{(0)}, \\
        [E_u; E_i] = \frac{1}{L+1} \sum_{l=0}^{L} \hat A_t^{\,l} [E_u^{(0)}; E_i^{(0)}], \qquad
        e_u = E_u[u], \quad e_i = E_i[i] + h_i, \qquad \hat y_{ui} = e_u^\top e_i, \\
        \mathcal L = \mathrm{BPR}(e_u, e_i, e_j)
        + \lambda \sum_m \mathrm{BPR}(e_u, W_m x^m_i, W_m x^m_j)

    :math:`K_m` is the binary kNN graph of the raw features of modality m (cosine, the item itself
    included), :math:`D_m` its row sums (MMRec's ``get_knn_adj_mat``); the weights :math:`w_m` are
    MMRec's image 0.1 / text 0.9 when both are present, uniform otherwise (``modality_weights``); S is
    built once and frozen. :math:`\hat A_t` is the symmetric-normalised graph of the user-item edges kept
    at epoch t: ``int((1 - dropout) |E|)`` edges drawn without replacement with probability
    proportional to :math:`1/\sqrt{d_u d_i}`, re-drawn every epoch; scoring uses the full graph.
    BPR = mean of :math:`-\log\sigma(e_u^\top e_i - e_u^\top e_j)`; the raw features :math:`x^m` are
    trainable (as MMRec's ``from_pretrained(freeze=False)``); S is built from their initial values.

    Departures from MMRec, none changing a loss value or a score: the projections have no bias (MMRec's
    :math:`b_m` cancels in :math:`e_u^\top(W_m x_i + b_m) - e_u^\top(W_m x_j + b_m)`, so its gradient is
    zero up to rounding and it is used nowhere else), and the modality scores are computed as
    :math:`(e_u W_m)^\top x_i` (half the multiply-adds of projecting the batch's items); ``feat_embed_dim``
    is not a parameter (MMRec's must equal ``embedding_size``, or the modality BPR fails); nodes without
    edges get zero rows (MMRec's 1e-7 degree offset scales rows that are all zero anyway).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_mm_layers: int = 1,
        n_ui_layers: int = 2,
        knn_k: int = 10,
        dropout: float = 0.8,
        reg_weight: float = 1e-5,
        modality_weights: Mapping[str, float] | None = None,
        graph_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        modalities = require_modalities(type(self).__name__, data)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        self.features = ModalityFeatures(modalities, trainable=True)
        self.projections = nn.ModuleDict(
            {name: nn.Linear(dim, embedding_size, bias=False) for name, dim in self.features.dims().items()}
        )
        weights = mixing_weights(
            self.features.names,
            MMREC_MODALITY_WEIGHTS if modality_weights is None else dict(modality_weights),
        )
        item_graph = mixed_knn_graph(data, weights, knn_k, graph_cache_dir)
        self.register_graph("item_graph", scipy_to_torch(item_graph))
        self.register_graph("item_graph_t", scipy_to_torch(item_graph.T))
        norm_r, norm_rt = normalized_bipartite(data.train)
        self.register_graph("norm_r", norm_r)
        self.register_graph("norm_rt", norm_rt)
        # the training graph until the first epoch prunes it (the full one when loss() is called directly)
        self.register_graph("masked_r", norm_r)
        self.register_graph("masked_rt", norm_rt)

    def sample_training_graph(self) -> None:
        """Degree-sensitive edge pruning: a fresh pruned, re-normalised user-item graph for training."""
        if self.hparams.dropout <= 0.0:
            masked_r, masked_rt = self.norm_r, self.norm_rt
        else:
            kept = degree_sensitive_prune(self.data.train, keep_ratio=1.0 - self.hparams.dropout)
            masked_r, masked_rt = (graph.to(self.device) for graph in normalized_bipartite(kept))
        self.register_graph("masked_r", masked_r)
        self.register_graph("masked_rt", masked_rt)

    @override
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.sample_training_graph()

    def propagate(self, norm_r: Tensor, norm_rt: Tensor) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings on the user-item graph (norm_r, norm_rt) and the item graph."""
        item_item = self.item_embedding
        for _ in range(self.hparams.n_mm_layers):
            item_item = transposed_spmm(self.item_graph, self.item_graph_t, item_item)
        user_final, item_final = bipartite_mean_propagation(
            norm_r, norm_rt, self.user_embedding, self.item_embedding, self.hparams.n_ui_layers
        )
        return user_final, item_final + item_item

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_final, item_final = self.propagate(self.masked_r, self.masked_rt)
        items = torch.cat([pos_items, neg_items])
        user_e = user_final[users]
        pos_e, neg_e = item_final[items].split(len(pos_items))
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        modal = user_e.new_zeros(())
        for name, features in self.features.items():
            # e_u . (W x) = (e_u W) . x: one [B, d] x [d, dim] product instead of projecting 2B items
            user_m = user_e @ self.projections[name].weight
            pos_x, neg_x = features[items].split(len(pos_items))
            modal = modal + bpr_loss((user_m * pos_x).sum(1), (user_m * neg_x).sum(1))
        return ranking + self.hparams.reg_weight * modal

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("propagate", lambda: self.propagate(self.norm_r, self.norm_rt))
        return user_final[users] @ item_final.T
