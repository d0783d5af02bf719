"""LayerGCN: Layer-refined Graph Convolutional Networks for Recommendation (Zhou et al., ICDE 2023)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import degree_sensitive_prune, normalized_bipartite, transposed_spmm
from mgrec.models.base import Recommender

# F.cosine_similarity's default eps: norms below it are clamped (a zero row gets weight 0)
COSINE_EPS = 1e-8


def uniform_prune(train: sp.csr_matrix, keep_ratio: float) -> sp.csr_matrix:
    """int(keep_ratio * nnz) user-item edges drawn uniformly without replacement (torch's global RNG), as a
    binary scipy CSR matrix of the shape of `train` (the uniform counterpart of `degree_sensitive_prune`)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    coo = train.tocoo()
    n_keep = int(coo.nnz * keep_ratio)
    keep = torch.randperm(coo.nnz)[:n_keep].numpy()
    kept = sp.csr_matrix(
        (np.ones(n_keep, dtype=np.float32), (coo.row[keep], coo.col[keep])), shape=train.shape
    )
    kept.sort_indices()
    return kept


class _CosineRefine(torch.autograd.Function):
    """y = w x with w_v = cos(x_v, e_v) per row (norms clamped at `eps`, as F.cosine_similarity), as one
    autograd node. With a = |x_v|, b = |e_v|, s = x_v . e_v and g_w = G_v . x_v the backward pass is
    dx = w G + g_w (e - (s / a^2) x) / (a b) and de = g_w (x - (s / b^2) e) / (a b): five passes over
    [n, d] tensors, where autograd through F.cosine_similarity makes about fifteen (5x slower on CPU)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, ego: Tensor, eps: float
    ) -> Tensor:
        x_norm = torch.linalg.vector_norm(x, dim=1).clamp_min_(eps)
        ego_norm = torch.linalg.vector_norm(ego, dim=1).clamp_min_(eps)
        dot = torch.linalg.vecdot(x, ego)
        weight = dot / (x_norm * ego_norm)
        ctx.save_for_backward(x, ego, x_norm, ego_norm, dot, weight)
        return x * weight.unsqueeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, Tensor, None]:
        x, ego, x_norm, ego_norm, dot, weight = ctx.saved_tensors
        scaled = torch.linalg.vecdot(grad, x) / (x_norm * ego_norm)  # g_w / (a b)
        grad_x = torch.addcmul(grad * weight.unsqueeze(1), ego, scaled.unsqueeze(1))
        grad_x.addcmul_(x, (-scaled * dot / x_norm.square()).unsqueeze(1))
        grad_ego = torch.addcmul(
            x * scaled.unsqueeze(1), ego, (-scaled * dot / ego_norm.square()).unsqueeze(1)
        )
        return grad_x, grad_ego, None


def cosine_refine(x: Tensor, ego: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Every row of x scaled by its cosine similarity to the same row of ego (differentiable in both)."""
    return _CosineRefine.apply(x, ego, eps)


class LayerGCN(Recommender):
    r"""Layer-refined propagation: every layer's output is re-weighted by its cosine to the ego embeddings.

    .. math::
        E^{(0)} = [E_u; E_i], \qquad \tilde E^{(l+1)} = \hat A E^{(l)}, \qquad
        E^{(l+1)}_v = \cos\big(\tilde E^{(l+1)}_v, E^{(0)}_v\big)\, \tilde E^{(l+1)}_v, \qquad
        E = \sum_{l=1}^{L} E^{(l)}

    with :math:`\hat A = D^{-1/2} A D^{-1/2}` the user-item graph (the ego layer is not in the sum; the
    weights are differentiable). Scores :math:`\hat y_{ui} = e_u^\top e_i` on the full graph. Training
    uses a pruned graph :math:`\hat A_t`, re-drawn every epoch: ``int((1 - dropout) |E|)`` edges drawn
    without replacement, at even epochs (0, 2, ...) with probability proportional to
    :math:`1/\sqrt{d_u d_i}` and at odd epochs uniformly (MMRec alternates the two), then symmetric-
    normalised by the kept graph's own degrees. The loss sums over the batch, as MMRec:

    .. math::
        \mathcal L = \sum_{(u,i,j)} -\log\sigma(e_u^\top e_i - e_u^\top e_j)
        + \lambda\, \tfrac12 \big(\lVert E_u^{(0)}[u]\rVert^2 + \lVert E_i^{(0)}[i]\rVert^2
        + \lVert E_i^{(0)}[j]\rVert^2\big)

    (MMRec's L2Loss on the batch's ego embeddings, not divided by the batch size).

    Departures from MMRec, none changing a loss value or a score: the sampling flavour follows the epoch
    number instead of a flag toggled on every call (the same alternation, and a resumed run continues
    it); draws come from torch's global RNG (MMRec's uniform flavour uses Python's `random`), so a seed
    reproduces a run; degree-sensitive draws use `degree_sensitive_prune` (Efraimidis-Spirakis keys, the
    distribution of MMRec's `torch.multinomial` without replacement); the graph is propagated as its two
    bipartite blocks, and the cosine re-weighting is one autograd node (`cosine_refine`, the gradient of
    F.cosine_similarity in closed form); nodes without edges get zero rows (MMRec adds 1e-7 to every
    degree, which also scales all other entries by a relative ~1e-7). Scores come from the current weights
    on the full graph, as MMRec's `full_sort_predict`.
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 4,
        reg_weight: float = 1e-4,
        dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_size)))
        if data is not None:
            norm_r, norm_rt = normalized_bipartite(data.train)
            self.register_graph("norm_r", norm_r)
            self.register_graph("norm_rt", norm_rt)
            # the training graph until the first epoch prunes it (the full one when loss() is called directly)
            self.register_graph("masked_r", norm_r)
            self.register_graph("masked_rt", norm_rt)

    def sample_training_graph(self, epoch: int) -> None:
        """A fresh pruned, re-normalised training graph: degree-sensitive at even epochs, uniform at odd."""
        if self.hparams.dropout <= 0.0:
            masked_r, masked_rt = self.norm_r, self.norm_rt
        else:
            keep_ratio = 1.0 - self.hparams.dropout
            if epoch % 2 == 0:
                kept = degree_sensitive_prune(self.data.train, keep_ratio)
            else:
                kept = uniform_prune(self.data.train, keep_ratio)
            dtype = self.user_embedding.dtype
            masked_r, masked_rt = (
                graph.to(device=self.device, dtype=dtype) for graph in normalized_bipartite(kept)
            )
        self.register_graph("masked_r", masked_r)
        self.register_graph("masked_rt", masked_rt)

    @override
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.sample_training_graph(self.current_epoch)

    def propagate(self, norm_r: Tensor, norm_rt: Tensor) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings: the sum of the cosine-refined layers 1..L on (norm_r, norm_rt)."""
        ego_u, ego_i = self.user_embedding, self.item_embedding
        layer_u, layer_i = ego_u, ego_i
        total_u = total_i = None
        for _ in range(self.hparams.n_layers):
            next_u = transposed_spmm(norm_r, norm_rt, layer_i)
            next_i = transposed_spmm(norm_rt, norm_r, layer_u)
            layer_u, layer_i = cosine_refine(next_u, ego_u), cosine_refine(next_i, ego_i)
            total_u = layer_u if total_u is None else total_u + layer_u
            total_i = layer_i if total_i is None else total_i + layer_i
        return total_u, total_i

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_final, item_final = self.propagate(self.masked_r, self.masked_rt)
        items = torch.cat([pos_items, neg_items])
        user_e = user_final[users]
        pos_e, neg_e = item_final[items].split(len(pos_items))
        ranking = F.softplus((user_e * neg_e).sum(1) - (user_e * pos_e).sum(1)).sum()
        l2 = self.user_embedding[users].square().sum() + self.item_embedding[items].square().sum()
        return ranking + self.hparams.reg_weight * 0.5 * l2

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("propagate", lambda: self.propagate(self.norm_r, self.norm_rt))
        return user_final[users] @ item_final.T


__all__ = ["LayerGCN"]
