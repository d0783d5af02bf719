"""SELFCF_ed with a LightGCN encoder (Zhou et al., "SelfCF: A Simple Framework for Self-supervised
Collaborative Filtering", 2021), as MMRec's SELFCFED_LGN."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import bipartite_mean_propagation, normalized_bipartite, transposed_spmm
from mgrec.models.base import Recommender

# the four CSR matrices of one propagation: P = user <- item block, its transpose, Q = item <- user, its
# transpose
DroppedGraph = tuple[Tensor, Tensor, Tensor, Tensor]


def _negative_cosine(online: Tensor, target: Tensor) -> Tensor:
    """- mean cosine similarity of the rows (the target is already detached)."""
    return -F.cosine_similarity(online, target, dim=-1).mean()


class SELFCFED_LGN(Recommender):
    r"""Self-supervised collaborative filtering without negatives: a LightGCN encoder, an online predictor
    and embedding-dropout targets.

    Encoder (LightGCN on :math:`\hat A = D^{-1/2} A D^{-1/2}`): :math:`[H_u; H_i] = \frac{1}{L+1}
    \sum_{l=0}^{L} \hat A_t^l [E_u; E_i]`. In training :math:`\hat A_t` is :math:`\hat A` with edge
    dropout drawn anew on every loss call (MMRec's LightGCN_Encoder, from BUIR): a rate
    :math:`r \sim U[0, \rho_{max})`, then every stored entry of :math:`\hat A` (each direction of an edge
    separately) kept with probability :math:`1 - r` and scaled by :math:`1/(1 - r)`. Scores use
    :math:`\hat A`. With the predictor :math:`p(x) = W x + b`, target views
    :math:`\tilde x = \operatorname{dropout}_\rho(\operatorname{sg}(x))` (stop-gradient, then dropout),
    :math:`h_u = H_u[u]` and :math:`h_i = H_i[i]` for a batch of interactions :math:`(u, i)`:

    .. math::
        \mathcal L = -\tfrac12 \operatorname{mean}\cos\big(p(h_u), \tilde h_i\big)
        - \tfrac12 \operatorname{mean}\cos\big(p(h_i), \tilde h_u\big)
        + \lambda\, \tfrac12 \big(\lVert h_u\rVert^2 + \lVert h_i\rVert^2\big), \qquad
        \hat y_{ui} = p(H_u[u])^\top H_i[i] + H_u[u]^\top p(H_i[i])

    (MMRec's L2Loss on the batch's propagated rows, not divided by the batch size). The negatives of the
    framework's (users, positives, negatives) batches are ignored. Initialisation as MMRec: embeddings
    Xavier-uniform, the predictor PyTorch's default.

    Compared with BM3, its descendant: BM3 drops no edges, adds the item ID embedding to :math:`H_i`,
    uses :math:`1 - \cos` without the halves, a norm (not squared) regulariser on the full tables, one
    target mask per distinct row, and scores :math:`p(h_u)^\top p(h_i)`.

    Departures from MMRec, none changing the loss or its distribution: the rate and both masks come from
    torch's global RNG (MMRec draws the rate from numpy), so a seed reproduces a run; dropped entries keep
    a zero value in the sparse layout instead of being removed; the graph is propagated as its two
    bipartite blocks, each with its transpose for the backward pass (after dropout :math:`\hat A_t` is no
    longer symmetric); the two score products are one product of concatenated tables; nodes without
    edges get zero rows (MMRec's 1e-7 degree offset leaves those rows zero too). MMRec's maximal rate is
    hard-coded (``drop_ratio = 1.0``); here it is ``edge_drop_ratio``. Scores come from the current
    weights (MMRec's ``get_embedding`` also recomputes them).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 2,
        dropout: float = 0.5,
        reg_weight: float = 0.0,
        edge_drop_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= edge_drop_ratio <= 1.0:
            raise ValueError(f"edge_drop_ratio must be in [0, 1], got {edge_drop_ratio}")
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        self.predictor = nn.Linear(embedding_size, embedding_size)
        if data is not None:
            norm_r, norm_rt = normalized_bipartite(data.train)
            self.register_graph("norm_r", norm_r)
            self.register_graph("norm_rt", norm_rt)
            # entry k of norm_rt (item i, user u) is entry transpose_index[k] of norm_r (user u, item i),
            # and entry k of norm_r is entry inverse_index[k] of norm_rt
            transpose_index = self._transpose_index(norm_r, norm_rt)
            inverse_index = torch.empty_like(transpose_index)
            inverse_index[transpose_index] = torch.arange(len(transpose_index))
            self.register_buffer("transpose_index", transpose_index, persistent=False)
            self.register_buffer("inverse_index", inverse_index, persistent=False)

    def _transpose_index(self, norm_r: Tensor, norm_rt: Tensor) -> Tensor:
        def rows(graph: Tensor) -> Tensor:
            return torch.repeat_interleave(torch.arange(graph.shape[0]), graph.crow_indices().diff().long())

        keys = rows(norm_r) * self.n_items + norm_r.col_indices().long()  # increasing in CSR order
        return torch.searchsorted(keys, norm_rt.col_indices().long() * self.n_items + rows(norm_rt))

    def dropped_graph(self) -> DroppedGraph:
        """A fresh edge-dropout view of the graph: (P, P^T, Q, Q^T) with P the user <- item block and Q the
        item <- user block, masked independently, kept entries scaled by 1 / (1 - r)."""
        rate = float(torch.rand(())) * self.hparams.edge_drop_ratio
        values_r, values_rt = self.norm_r.values(), self.norm_rt.values()
        if rate > 0.0:
            keep = torch.rand(len(values_r) + len(values_rt), device=values_r.device) >= rate
            keep_r, keep_rt = keep.split([len(values_r), len(values_rt)])
            values_r = values_r * keep_r / (1.0 - rate)
            values_rt = values_rt * keep_rt / (1.0 - rate)

        def like(graph: Tensor, values: Tensor) -> Tensor:
            return torch.sparse_csr_tensor(
                graph.crow_indices(), graph.col_indices(), values, graph.shape, device=values.device
            )

        return (
            like(self.norm_r, values_r),
            like(self.norm_rt, values_r[self.transpose_index]),
            like(self.norm_rt, values_rt),
            like(self.norm_r, values_rt[self.inverse_index]),
        )

    def propagate_dropped(self, graph: DroppedGraph) -> tuple[Tensor, Tensor]:
        """H_u, H_i on an edge-dropout view: the mean of layers 0..L."""
        p, p_t, q, q_t = graph
        layer_u, layer_i = self.user_embedding, self.item_embedding
        total_u, total_i = layer_u, layer_i
        for _ in range(self.hparams.n_layers):
            layer_u, layer_i = transposed_spmm(p, p_t, layer_i), transposed_spmm(q, q_t, layer_u)
            total_u, total_i = total_u + layer_u, total_i + layer_i
        return total_u / (self.hparams.n_layers + 1), total_i / (self.hparams.n_layers + 1)

    def _target(self, rows: Tensor) -> Tensor:
        """The target view: stop-gradient, then dropout (always on, as MMRec's F.dropout)."""
        return F.dropout(rows.detach(), self.hparams.dropout, training=True)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, items = batch[0], batch[1]  # no negatives
        user_all, item_all = self.propagate_dropped(self.dropped_graph())
        user_e, item_e = user_all[users], item_all[items]
        user_target, item_target = self._target(user_e), self._target(item_e)
        l2 = user_e.square().sum() + item_e.square().sum()
        user_online, item_online = self.predictor(torch.cat([user_e, item_e])).split(len(users))
        loss = (_negative_cosine(user_online, item_target) + _negative_cosine(item_online, user_target)) / 2
        return loss + self.hparams.reg_weight * 0.5 * l2

    def _score_tables(self) -> tuple[Tensor, Tensor]:
        """[p(H_u), H_u] and [H_i, p(H_i)]: their product is p(H_u) H_i^T + H_u p(H_i)^T."""
        user_all, item_all = bipartite_mean_propagation(
            self.norm_r, self.norm_rt, self.user_embedding, self.item_embedding, self.hparams.n_layers
        )
        return (
            torch.cat([self.predictor(user_all), user_all], dim=1),
            torch.cat([item_all, self.predictor(item_all)], dim=1),
        )

    @override
    def score(self, users: Tensor) -> Tensor:
        user_table, item_table = self.cached("score_tables", self._score_tables)
        return user_table[users] @ item_table.T


__all__ = ["SELFCFED_LGN"]
