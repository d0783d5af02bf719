"""LATTICE (Zhang et al., ACM MM 2021) as in MMRec: item-item graphs learned from multimodal features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import (
    bipartite_adjacency,
    cached_graph,
    edge_spmm,
    knn_graph,
    knn_neighbours,
    normalize_edges,
    row_normalize,
    scipy_to_torch,
    transposed_spmm,
)
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss
from mgrec.models.multimodal import ModalityFeatures, graph_key, require_modalities

Edges = tuple[Tensor, Tensor, Tensor]


class LATTICE(Recommender):
    r"""LightGCN on the user-item graph plus an item-item graph mixing learned and fixed modality kNN graphs.

    .. math::
        \tilde S_m = \mathrm{kNN}_k(\cos(W_m x^m + b_m)), \qquad w = \mathrm{softmax}(\omega), \\
        S = (1 - \lambda)\, \mathrm{norm}\Big(\sum_m w_m \tilde S_m\Big)
            + \lambda \sum_m w_m\, \mathrm{norm}(\mathrm{kNN}_k(\cos x^m)), \qquad
        h = S^{L_{ii}} E_i^{(0)}, \\
        [E_u; E_i] = \frac{1}{L+1} \sum_{l=0}^{L} \hat A^l [E_u^{(0)}; E_i^{(0)}], \quad
        e_u = E_u[u], \quad e_i = E_i[i] + \frac{h_i}{\lVert h_i \rVert}, \quad \hat y_{ui} = e_u^\top e_i, \\
        \mathcal L = \mathrm{BPR}(e_u, e_i, e_j)
            + \lambda_{reg} \frac{\lVert e_u\rVert^2 + \lVert e_i\rVert^2 + \lVert e_j\rVert^2}{2B}

    kNN keeps the k most cosine-similar items of each item (itself included) weighted by the similarity;
    norm(M) = D^{-1/2} M D^{-1/2} with D the row sums (MMRec's ``compute_normalized_laplacian``).
    :math:`\hat A = D^{-1}(A + I)` is MMRec's row-normalised user-item graph with self-loops (LATTICE's
    own, not LightGCN's :math:`D^{-1/2} A D^{-1/2}`, so it is propagated here, not by the shared code); the
    norms in the regulariser are over the batch's final embeddings. The raw features :math:`x^m` are trainable
    (MMRec's ``from_pretrained(freeze=False)``); the fixed graphs are built once from their initial values.

    The item graph is rebuilt, with gradient into :math:`W_m, b_m, x^m, \omega`, by the first training
    batch of every epoch and reused detached by the epoch's later batches (MMRec's ``build_item_graph``);
    under Mirror Gradient both passes of that first batch rebuild it. Scoring rebuilds it from the
    current weights. It is never dense: kNN indices are found block-wise without gradient, the k
    similarities are recomputed with gradient from the gathered unit-normalised projections, and the
    learned part is propagated as an edge list (differentiable in its values); the fixed part is one CSR
    product per modality, weighted after the product; later batches use the learned part detached as
    CSR. With one modality w = 1 (MMRec's single-modality code).

    Departures from MMRec: the regulariser divides by the batch's size (MMRec: the configured batch
    size, which differs only for the last batch); a zero feature row has similarity 0 instead of NaN;
    MMRec's unused NGCF/MF alternatives (``cf_model``) are not ported, and its ``weight_size`` list is
    ``n_ui_layers`` (its length).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        feat_embed_dim: int = 64,
        n_layers: int = 1,
        n_ui_layers: int = 2,
        knn_k: int = 10,
        lambda_coeff: float = 0.9,
        reg_weight: float = 1e-5,
        graph_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        modalities = require_modalities(type(self).__name__, data)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        self.features = ModalityFeatures(modalities, trainable=True)
        self.projections = nn.ModuleDict(
            {name: nn.Linear(dim, feat_embed_dim) for name, dim in self.features.dims().items()}
        )
        self.modal_weight = nn.Parameter(torch.full((len(modalities),), 0.5))
        for m, name in enumerate(self.features.names):  # the fixed, normalised kNN graph of each modality
            fixed = cached_graph(
                graph_cache_dir,
                "lattice-knn",
                graph_key(data, name, k=knn_k, weighted=True, normalization="sym"),
                lambda name=name: knn_graph(modalities[name], knn_k, weighted=True),
            )
            self.register_graph(f"fixed_graph_{m}", scipy_to_torch(fixed))
            self.register_graph(f"fixed_graph_{m}_t", scipy_to_torch(fixed.T))
        adjacency = row_normalize(bipartite_adjacency(data.train) + sp.eye(self.n_users + self.n_items))
        self.register_graph("norm_adj", scipy_to_torch(adjacency))
        self.register_graph("norm_adj_t", scipy_to_torch(adjacency.T))
        self._train_graph: Callable[[Tensor], Tensor] | None = None  # S x, S detached, from the first batch
        self._graph_batch: Any = None  # that batch (its mirror pass rebuilds the graph too)

    def item_graph(self) -> tuple[Edges, Tensor]:
        """The learned part of S from the current weights, normalised, as an edge list (rows, cols,
        values) [M n k], and the modality weights w [M]."""
        n, k = self.n_items, min(self.hparams.knn_k, self.n_items)
        weight = torch.softmax(self.modal_weight, dim=0)
        rows = torch.arange(n, device=self.device).repeat_interleave(k)
        cols, values = [], []
        for m, (name, features) in enumerate(self.features.items()):
            projected = self.projections[name](features)
            neighbours, _ = knn_neighbours(projected, k)
            unit = F.normalize(projected, dim=1)
            similarity = (unit.unsqueeze(1) * unit[neighbours]).sum(-1)  # the k similarities, with gradient
            cols.append(neighbours.reshape(-1))
            values.append(weight[m] * similarity.reshape(-1))
        rows = rows.repeat(len(cols))
        cols = torch.cat(cols)
        return (rows, cols, normalize_edges(rows, cols, torch.cat(values), n, "sym")), weight

    def item_spmm(self, learned: Edges, weight: Tensor, detach: bool = False) -> Callable[[Tensor], Tensor]:
        """x -> S x. The learned part as an edge list (differentiable in its values), or `detach`ed as CSR
        (duplicate edges summed) with its transpose, far cheaper for the epoch's later batches; the fixed
        part as one CSR product per modality, weighted after the product."""
        lam = self.hparams.lambda_coeff
        if detach:
            rows, cols, values = learned
            coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values.detach(), (self.n_items,) * 2)
            matrix, transpose = coo.coalesce().to_sparse_csr(), coo.t().coalesce().to_sparse_csr()
            weight = weight.detach()

            def learned_spmm(x: Tensor) -> Tensor:
                return transposed_spmm(matrix, transpose, x)
        else:

            def learned_spmm(x: Tensor) -> Tensor:
                return edge_spmm(*learned, x, self.n_items)

        def spmm(x: Tensor) -> Tensor:
            fixed = [
                weight[m]
                * transposed_spmm(getattr(self, f"fixed_graph_{m}"), getattr(self, f"fixed_graph_{m}_t"), x)
                for m in range(len(weight))
            ]
            return (1.0 - lam) * learned_spmm(x) + lam * torch.stack(fixed).sum(0)

        return spmm

    def refresh_item_graph(self) -> None:
        """Make the next training batch rebuild the item graph (with gradient)."""
        self._train_graph, self._graph_batch = None, None

    @override
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.refresh_item_graph()

    def propagate(self, item_spmm: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings [n_users, d], [n_items, d]; `item_spmm(x)` = S x."""
        item_item = self.item_embedding
        for _ in range(self.hparams.n_layers):
            item_item = item_spmm(item_item)
        layer = torch.cat([self.user_embedding, self.item_embedding])
        total = layer
        for _ in range(self.hparams.n_ui_layers):
            layer = transposed_spmm(self.norm_adj, self.norm_adj_t, layer)
            total = total + layer
        user_final, item_final = (total / (self.hparams.n_ui_layers + 1)).split([self.n_users, self.n_items])
        return user_final, item_final + F.normalize(item_item, dim=1)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        if self._train_graph is None or batch is self._graph_batch:
            learned, weight = self.item_graph()
            self._train_graph, self._graph_batch = self.item_spmm(learned, weight, detach=True), batch
            item_spmm = self.item_spmm(learned, weight)
        else:
            item_spmm = self._train_graph
        user_final, item_final = self.propagate(item_spmm)
        user_e = user_final[users]
        pos_e, neg_e = item_final[torch.cat([pos_items, neg_items])].split(len(pos_items))
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        squares = user_e.square().sum() + pos_e.square().sum() + neg_e.square().sum()
        return ranking + self.hparams.reg_weight * squares / (2 * len(users))

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached(
            "propagate", lambda: self.propagate(self.item_spmm(*self.item_graph()))
        )
        return user_final[users] @ item_final.T
