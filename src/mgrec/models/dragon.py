"""DRAGON (Zhou et al., 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation") as in MMRec: DualGNN's heterogeneous and user-user graphs plus a frozen item-item graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import scipy_to_torch, transposed_spmm
from mgrec.models.dualgnn import DualGraphRecommender
from mgrec.models.multimodal import mixed_knn_graph, mixing_weights

# MMRec's mm_image_weight = 0.1: the image kNN graph weighs 0.1, the text one 0.9
MMREC_MODALITY_WEIGHTS = {"image": 0.1, "text": 0.9}


class DRAGON(DualGraphRecommender):
    r"""Per-modality user-item convolution, concatenated across modalities, refined by a sampled user
    co-occurrence graph (users) and a frozen multimodal kNN graph (items).

    .. math::
        r^m = \sum_{l=0}^{L} S^l\, \widehat{[P_m;\ \mathrm{MLP}_m(X_m)]}, \qquad
        \bar u = \Vert_m\, w_{um}\, r^m_u, \qquad \bar\imath = \Vert_m\, r^m_i, \\
        e_u = \bar u + \sum_{v \in N_t(u)} g_{uv}\, \bar u_v, \qquad
        e_i = \bar\imath + \big(K^{L_{mm}} \bar\imath\big)_i, \qquad
        K = \sum_m \alpha_m D_m^{-1/2} K_m D_m^{-1/2}, \qquad \hat y_{ui} = e_u^\top e_i

    (:math:`\Vert` concatenation along features, so representations have M x ``embedding_size``
    dimensions). S is MMRec's ``Base_gcn`` (`convolution_graph`: :math:`D^{-1/2} A D^{-1/2}` for
    ``aggr_mode='add'``, :math:`D^{-1} A` for ``'mean'``); :math:`w_u` [n_users, M, 1] are per-user
    modality weights (softmax at init, then free); :math:`N_t(u)`, :math:`g_{uv}`: the ``user_knn_k``
    co-occurrence neighbours sampled at epoch t and the softmax of their counts. :math:`K_m` is the binary
    cosine kNN graph (``knn_k``, the item itself included) of modality m's raw features and :math:`D_m` its
    row sums, mixed by MMRec's image 0.1 / text 0.9 (uniform for other modality sets, `mixing_weights`)
    and frozen. The loss is `DualGraphRecommender`'s (BPR in log base 2 as MMRec, L2 of the batch's
    preference rows and of w). One modality: :math:`\bar u = r_u` and no w, as MMRec's single-modality
    branch; image + text is MMRec's two-modality ``'cat'`` construction.

    Departures from MMRec (none changes a loss value or a score unless stated):

    - Scores come from the current weights (MMRec: ``result_embed`` stored by the last training batch).
    - The user graph is built block-wise from the training split (`graphs.py`) instead of MMRec's
      preprocessed ``user_graph_dict.npy``; its k (40, hard-coded) is ``user_knn_k``.
    - Dead code not ported: ``weight_i`` (only in the unused ``weighted_sum`` branch),
      ``image_embedding``/``text_embedding`` (trainable copies of the features used only to build K, here
      built from the features directly), ``image_trs``/``text_trs`` (and so ``feat_embed_dim``),
      ``MLP_user``, ``MLP_v``, ``MLP_t``, ``result_embed``: none enters the loss. The per-modality item
      edge drop MMRec draws is ignored by its GCN: ``item_drop_rate=0`` (default); > 0 applies it.
    - ``n_layers`` (MMRec's config value 2, unused there) counts the convolutions MMRec hard-codes as
      :math:`x + h + h_1`; MMRec's ``dim_latent = 64`` is ``embedding_size``, its 4x MLP width
      ``hidden_factor``. A zero degree gives a zero row of K (MMRec adds 1e-7 to the degrees).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 2,
        n_mm_layers: int = 1,
        knn_k: int = 10,
        aggr_mode: str = "add",
        reg_weight: float = 1e-3,
        user_knn_k: int = 40,
        hidden_factor: int = 4,
        item_drop_rate: float = 0.0,
        modality_weights: Mapping[str, float] | None = None,
        graph_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data,
            embedding_size=embedding_size,
            n_layers=n_layers,
            aggr_mode=aggr_mode,
            reg_weight=reg_weight,
            user_knn_k=user_knn_k,
            hidden_factor=hidden_factor,
            item_drop_rate=item_drop_rate,
            graph_cache_dir=graph_cache_dir,
            **kwargs,
        )
        weights = mixing_weights(
            self.features.names,
            MMREC_MODALITY_WEIGHTS if modality_weights is None else dict(modality_weights),
        )
        item_graph = mixed_knn_graph(data, weights, knn_k, graph_cache_dir)
        self.register_graph("item_graph", scipy_to_torch(item_graph))
        self.register_graph("item_graph_t", scipy_to_torch(item_graph.T))

    @override
    def propagate(self) -> tuple[Tensor, Tensor]:
        users, items = self.modality_representations()
        # [n_users, M, d] scaled per user and modality, flattened: the concatenation of the w_um r^m_u
        user = users[0] if self.weight_u is None else (torch.stack(users, dim=1) * self.weight_u).flatten(1)
        item = torch.cat(items, dim=1)
        item_item = item
        for _ in range(self.hparams.n_mm_layers):
            item_item = transposed_spmm(self.item_graph, self.item_graph_t, item_item)
        return user + self.aggregate_users(user), item + item_item
