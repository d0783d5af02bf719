"""MGCN (Yu et al., MM 2023, "Multi-View Graph Convolutional Network for Multimedia Recommendation") as in
MMRec."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import (
    bipartite_mean_propagation,
    cached_graph,
    knn_graph,
    normalized_bipartite,
    scipy_to_torch,
    transposed_spmm,
)
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss, in_batch_infonce
from mgrec.models.multimodal import ModalityFeatures, graph_key, require_modalities


def _gate(size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(size, size), nn.Sigmoid())


class MGCN(Recommender):
    r"""Multi-view GCN: a user-item (content) view, one item-item view per modality, and a fuser.

    For modality m with trainable raw features X_m, projection f_m(X_m) = X_m W_m + b_m and a fixed
    item-item graph S_m (kNN, k = `knn_k`, on the cosine similarity of the raw features, weighted by it,
    values d_i^{-1/2} s_ij d_j^{-1/2} with d the row sums):

    .. math::
        \tilde E^m_I = E_I \odot \sigma(\mathrm{Lin}^g_m(f_m(X_m))) \quad\text{(behaviour-guided purifier)},
        \qquad H^m_I = S_m^{L_{ii}} \tilde E^m_I, \qquad H^m_U = \tilde R H^m_I,

        C = \tfrac{1}{L+1} \sum_{l=0}^{L} \hat A^l [E_U; E_I] \quad\text{(LightGCN, } L = n\_ui\_layers),

        \alpha = \mathrm{softmax}_m(q(H^m)),\; q(h) = w^\top \tanh(W_q h + b_q), \qquad
        H^{com} = \sum_m \alpha_m H^m, \qquad H^{spe}_m = \sigma(\mathrm{Lin}^p_m(C)) \odot (H^m - H^{com}),

        S = \frac{1}{M+1}\Big(H^{com} + \sum_m H^{spe}_m\Big), \qquad E = C + S, \qquad
        \hat y_{ui} = e_u^\top e_i

    with \tilde R = D_u^{-1/2} R D_i^{-1/2} the user-item block of \hat A; for image + text, M + 1 = 3 is
    MMRec's ``/ 3``. The loss of a batch (u, i, j) of size B, as MMRec's code:

    .. math::
        \mathrm{BPR}(e_u, e_i, e_j) + \lambda \frac{1}{2B}\big(\lVert E_u\rVert^2 + \lVert E_i\rVert^2
        + \lVert E_j\rVert^2\big) + \lambda_C \big(\mathrm{NCE}(S_i, C_i) + \mathrm{NCE}(S_u, C_u)\big),

        \mathrm{NCE}(A, B) = \frac{1}{B} \sum_b -\log \frac{\exp(\hat a_b^\top \hat b_b / \tau)}
        {\sum_{b'} \exp(\hat a_b^\top \hat b_{b'} / \tau)}

    (final embeddings E in the regulariser, \hat a = a / \lVert a \rVert, \tau = 0.2, the batch's positive
    items and users, duplicates included, as in-batch negatives).

    Departures from MMRec: the regulariser divides by the actual batch size, where MMRec divides by the
    configured one (they differ on an epoch's last, smaller batch only); the fuser runs only on the rows a
    batch needs (it is row-wise, so the result is the same); a data set with one modality gets
    alpha = 1, H^{spe} = 0, S = H^1 / 2 (the query and preference gates then get no gradient).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_ui_layers: int = 2,
        n_layers: int = 1,
        knn_k: int = 10,
        reg_weight: float = 1e-4,
        cl_loss: float = 0.01,
        temperature: float = 0.2,
        graph_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        modalities = require_modalities("MGCN", data)
        self.modality_names = list(modalities)
        d = embedding_size
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.features = ModalityFeatures(modalities, trainable=True)
        dims = self.features.dims()
        self.projection = nn.ModuleDict({m: nn.Linear(dims[m], d) for m in self.modality_names})
        self.purifier = nn.ModuleDict({m: _gate(d) for m in self.modality_names})
        self.preference = nn.ModuleDict({m: _gate(d) for m in self.modality_names})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

        norm_r, norm_rt = normalized_bipartite(data.train)
        self.register_graph("norm_r", norm_r)
        self.register_graph("norm_rt", norm_rt)
        for index, (name, features) in enumerate(modalities.items()):
            graph = cached_graph(
                graph_cache_dir,
                "mgcn-knn",
                graph_key(data, name, k=knn_k, weighted=True, normalization="sym"),
                lambda features=features: knn_graph(features, knn_k, weighted=True, normalization="sym"),
            )
            # kNN graphs are not symmetric: keep S and S^T (for the backward pass); modality names may be any
            # string, so the attributes are numbered
            self.register_graph(f"knn_{index}", scipy_to_torch(graph))
            self.register_graph(f"knn_t_{index}", scipy_to_torch(graph.T))

    def views(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Content view C (users [n_users, d], items [n_items, d]) and modality views H (users
        [n_users, M, d], items [n_items, M, d], modalities in the data set's order)."""
        content_u, content_i = bipartite_mean_propagation(
            self.norm_r, self.norm_rt, self.user_embedding, self.item_embedding, self.hparams.n_ui_layers
        )
        modal_i = []
        for index, name in enumerate(self.modality_names):
            projected = self.projection[name](self.features[name])
            h = self.item_embedding * self.purifier[name](projected)
            for _ in range(self.hparams.n_layers):
                h = transposed_spmm(getattr(self, f"knn_{index}"), getattr(self, f"knn_t_{index}"), h)
            modal_i.append(h)
        stacked = torch.stack(modal_i, dim=1)  # [n_items, M, d]
        # one product R~ [H^1 | ... | H^M] for the user side of every modality
        modal_u = transposed_spmm(self.norm_r, self.norm_rt, stacked.reshape(self.n_items, -1))
        return content_u, content_i, modal_u.view(self.n_users, *stacked.shape[1:]), stacked

    def fuse(self, content: Tensor, modal: Tensor) -> tuple[Tensor, Tensor]:
        """Final embeddings C + S and the side view S of rows with content [B, d] and modality views
        [B, M, d]."""
        weights = torch.softmax(self.query_common(modal).squeeze(-1), dim=1)  # [B, M]
        common = torch.einsum("bm,bmd->bd", weights, modal)
        side = common.clone()
        for index, name in enumerate(self.modality_names):
            side = side + self.preference[name](content) * (modal[:, index] - common)
        side = side / (len(self.modality_names) + 1)
        return content + side, side

    def info_nce(self, view1: Tensor, view2: Tensor) -> Tensor:
        """MMRec's InfoNCE with in-batch negatives on cosine similarities."""
        return in_batch_infonce(
            F.normalize(view1, dim=1), F.normalize(view2, dim=1), self.hparams.temperature
        )

    def representations(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings [n_users, d], [n_items, d]."""
        content_u, content_i, modal_u, modal_i = self.views()
        return self.fuse(content_u, modal_u)[0], self.fuse(content_i, modal_i)[0]

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        size = len(users)
        content_u, content_i, modal_u, modal_i = self.views()
        items = torch.cat([pos_items, neg_items])
        user_e, user_side = self.fuse(content_u[users], modal_u[users])
        item_content = content_i[items]
        item_e, item_side = self.fuse(item_content, modal_i[items])
        pos_e, neg_e = item_e.split(size)
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        regulariser = 0.5 * (user_e.square().sum() + item_e.square().sum()) / size
        contrastive = self.info_nce(item_side[:size], item_content[:size]) + self.info_nce(
            user_side, content_u[users]
        )
        return ranking + self.hparams.reg_weight * regulariser + self.hparams.cl_loss * contrastive

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("representations", self.representations)
        return user_final[users] @ item_final.T
