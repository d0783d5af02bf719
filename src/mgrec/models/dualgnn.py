"""DualGNN (Wang et al., IEEE TMM 2021) as in MMRec: per-modality user-item convolution and a sampled user
co-occurrence graph; `DualGraphRecommender` holds the parts DRAGON shares with it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import (
    bipartite_adjacency,
    cached_graph,
    neighbour_table,
    row_normalize,
    sample_neighbours,
    scipy_to_torch,
    symmetric_normalize,
    transposed_spmm,
    user_cooccurrence_graph,
)
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss
from mgrec.models.multimodal import ModalityFeatures, require_modalities

AGGREGATIONS = ("add", "mean")


def convolution_graph(train: sp.csr_matrix, aggr_mode: str) -> sp.csr_matrix:
    """MMRec's ``Base_gcn`` (a PyG ``MessagePassing`` on the symmetric user-item edge list, self-loops removed
    and none added) as a sparse matrix S over users + items, out = S x: with ``aggr='add'`` its ``message``
    scales x_j by d_i^{-1/2} d_j^{-1/2}, S = D^{-1/2} A D^{-1/2}; with ``'mean'`` messages are x_j averaged
    over the neighbours, S = D^{-1} A. A node without edges gets a zero row (PyG aggregates nothing)."""
    adjacency = bipartite_adjacency(train)
    if aggr_mode == "add":
        return symmetric_normalize(adjacency)
    if aggr_mode == "mean":
        return row_normalize(adjacency)
    raise ValueError(f"aggr_mode must be one of {AGGREGATIONS}, got {aggr_mode!r}")


def dropped_item_sets(n_items: int, n_modalities: int, drop_rate: float) -> list[Tensor]:
    """The items whose edges each modality's graph drops: int(drop_rate n_items) items drawn without
    replacement from torch's global RNG, cut into 2M - 1 equal runs; modality m gets run 2m. For image +
    text that is MMRec's split: the first third to image, the last third to text, the middle to neither."""
    n_drop = int(n_items * drop_rate)
    drawn = torch.randperm(n_items)[:n_drop]
    runs = 2 * n_modalities - 1
    bounds = [int(n_drop * j / runs) for j in range(runs + 1)]
    return [drawn[bounds[2 * m] : bounds[2 * m + 1]] for m in range(n_modalities)]


class DualGraphRecommender(Recommender):
    r"""The parts of DualGNN and DRAGON: per-modality convolution, the sampled user graph, the loss.

    For modality m, :math:`x^m = \widehat{[P_m;\ \mathrm{MLP}_m(X_m)]}` (rows L2-normalised,
    :math:`P_m` a free user preference table, MLP = Linear, LeakyReLU, Linear) and
    :math:`r^m = \sum_{l=0}^{L} S_m^l x^m` with S from `convolution_graph`. The user graph G holds, per
    user, ``user_knn_k`` co-occurrence neighbours weighted by the softmax of their counts, re-sampled every
    epoch (`sample_neighbours`). Loss, with :math:`w_u` the per-user modality weights (M > 1 only):

    .. math::
        \mathcal L = \frac{1}{\ln 2} \mathrm{BPR}(e_u, e_i, e_j)
            + \lambda \Big( \sum_m \overline{P_m[u]^2} + \overline{w^2} \Big)

    (bars: means over the batch's users and dimensions, and over all users and modalities).
    """

    def __init__(
        self,
        data: InteractionData | None,
        embedding_size: int,
        n_layers: int,
        aggr_mode: str,
        reg_weight: float,
        user_knn_k: int,
        hidden_factor: int,
        item_drop_rate: float,
        graph_cache_dir: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        if aggr_mode not in AGGREGATIONS:
            raise ValueError(f"aggr_mode must be one of {AGGREGATIONS}, got {aggr_mode!r}")
        if not 0.0 <= item_drop_rate < 1.0:
            raise ValueError(f"item_drop_rate must be in [0, 1), got {item_drop_rate}")
        modalities = require_modalities(type(self).__name__, data)
        self.features = ModalityFeatures(modalities, trainable=False)
        names, size, hidden = self.features.names, embedding_size, hidden_factor * embedding_size
        self.preferences = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, size))) for m in names}
        )
        self.encoders = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, size))
                for m, dim in self.features.dims().items()
            }
        )
        # MMRec: xavier_normal_ of a [n_users, 2, 1] tensor, then a softmax over the modalities
        weights = nn.init.xavier_normal_(torch.empty(self.n_users, len(names), 1))
        self.weight_u = nn.Parameter(torch.softmax(weights, dim=1)) if len(names) > 1 else None
        self._symmetric = aggr_mode == "add"
        self._graph_of: dict[str, str] = {}
        if item_drop_rate > 0.0:
            for j, (m, items) in enumerate(
                zip(names, dropped_item_sets(self.n_items, len(names), item_drop_rate), strict=True)
            ):
                keep = np.ones(self.n_items, dtype=np.float32)
                keep[items.numpy()] = 0.0
                kept = (data.train @ sp.diags(keep)).tocsr()
                kept.eliminate_zeros()
                self._graph_of[m] = self._register_convolution(f"conv_graph_{j}", kept, aggr_mode)
        else:
            shared = self._register_convolution("conv_graph", data.train, aggr_mode)
            self._graph_of = dict.fromkeys(names, shared)
        k = user_knn_k
        user_graph = cached_graph(
            graph_cache_dir,
            "user-cooccurrence",
            {"interactions": self._split_fingerprint, "k": k},
            lambda: user_cooccurrence_graph(data.train, k),
        )
        neighbours, counts, lengths = neighbour_table(user_graph, k)
        self.register_buffer("user_neighbours", neighbours, persistent=False)
        self.register_buffer("user_counts", counts, persistent=False)
        self.register_buffer("user_lengths", lengths, persistent=False)
        # the current sample is saved with the weights, so a reloaded model scores with the same user graph
        self.register_buffer("user_sample", torch.zeros_like(neighbours))
        self.register_buffer("user_sample_weights", torch.zeros_like(counts))
        self.register_load_state_dict_post_hook(DualGraphRecommender._rebuild_after_load)
        self.sample_user_graph()  # scoring before the first training epoch uses this sample

    def _register_convolution(self, name: str, train: sp.csr_matrix, aggr_mode: str) -> str:
        graph = convolution_graph(train, aggr_mode)
        self.register_graph(name, scipy_to_torch(graph))
        if not self._symmetric:
            self.register_graph(f"{name}_t", scipy_to_torch(graph.T))
        return name

    def _convolve(self, name: str, x: Tensor) -> Tensor:
        graph = getattr(self, name)
        return transposed_spmm(graph, graph if self._symmetric else getattr(self, f"{name}_t"), x)

    # ----------------------------------------------------------------- the user graph
    def sample_user_graph(self) -> None:
        """MMRec's ``topk_sample``: a fresh draw, from a generator seeded by torch's global RNG."""
        seed = int(torch.randint(torch.iinfo(torch.int64).max, ()))
        index, weights = sample_neighbours(
            self.user_neighbours,
            self.user_counts,
            self.user_lengths,
            torch.Generator().manual_seed(seed),
        )
        self.user_sample.copy_(index)
        self.user_sample_weights.copy_(weights)
        self._build_user_graph()

    def _build_user_graph(self) -> None:
        """G (and G^T) as sparse matrices from the sample: G[u, v] = summed weight of v's slots of u."""
        n, k = self.user_sample.shape
        rows = np.repeat(np.arange(n), k)
        values = self.user_sample_weights.detach().cpu().numpy().ravel()
        graph = sp.csr_matrix((values, (rows, self.user_sample.cpu().numpy().ravel())), shape=(n, n))
        graph.eliminate_zeros()
        options = {"device": self.user_sample.device, "dtype": self.user_sample_weights.dtype}
        self.register_graph("user_graph", scipy_to_torch(graph).to(**options))
        self.register_graph("user_graph_t", scipy_to_torch(graph.T).to(**options))

    @staticmethod
    def _rebuild_after_load(module: nn.Module, incompatible_keys: Any) -> None:
        module._build_user_graph()

    def aggregate_users(self, user_rep: Tensor) -> Tensor:
        """G user_rep: each user's softmax-weighted sum of its sampled neighbours' representations."""
        return transposed_spmm(self.user_graph, self.user_graph_t, user_rep)

    @override
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.sample_user_graph()

    # ----------------------------------------------------------------- propagation, loss, scores
    def modality_representations(self) -> tuple[list[Tensor], list[Tensor]]:
        """r^m split into users [n_users, d] and items [n_items, d], one per modality, in data order.
        Modalities sharing a graph are propagated together, concatenated along the features."""
        groups: dict[str, list[str]] = {}
        for m in self.features.names:
            groups.setdefault(self._graph_of[m], []).append(m)
        reps: dict[str, Tensor] = {}
        for graph, members in groups.items():
            x = torch.cat(
                [
                    F.normalize(torch.cat([self.preferences[m], self.encoders[m](self.features[m])]))
                    for m in members
                ],
                dim=1,
            )
            total, layer = x, x
            for _ in range(self.hparams.n_layers):
                layer = self._convolve(graph, layer)
                total = total + layer
            reps.update(zip(members, total.split(self.hparams.embedding_size, dim=1), strict=True))
        users, items = zip(
            *(reps[m].split([self.n_users, self.n_items]) for m in self.features.names), strict=True
        )
        return list(users), list(items)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Final user and item representations from the current weights."""
        raise NotImplementedError

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        user_final, item_final = self.propagate()
        user_e = user_final[users]
        pos_scores = (user_e * item_final[pos_items]).sum(1)
        neg_scores = (user_e * item_final[neg_items]).sum(1)
        ranking = bpr_loss(pos_scores, neg_scores) / math.log(2.0)  # MMRec's -mean(log2 sigmoid(.))
        reg = sum((self.preferences[m][users] ** 2).mean() for m in self.features.names)
        if self.weight_u is not None:
            reg = reg + (self.weight_u**2).mean()
        return ranking + self.hparams.reg_weight * reg

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("propagate", self.propagate)
        return user_final[users] @ item_final.T


class DualGNN(DualGraphRecommender):
    r"""Per-modality user-item convolution fused per user, plus the sampled user co-occurrence graph.

    .. math::
        r^m = \sum_{l=0}^{L} S^l\, \widehat{[P_m;\ \mathrm{MLP}_m(X_m)]}, \qquad
        \bar u = \sum_m w_{um}\, r^m_u, \qquad e_u = \bar u + \sum_{v \in N_t(u)} g_{uv}\, \bar u_v, \qquad
        e_i = \sum_m r^m_i, \qquad \hat y_{ui} = e_u^\top e_i

    with S MMRec's ``Base_gcn`` (`convolution_graph`: :math:`D^{-1/2} A D^{-1/2}` for ``aggr_mode='add'``,
    :math:`D^{-1} A` for ``'mean'``), :math:`w_u` [n_users, M, 1] per-user modality weights (softmax at
    init, then free), :math:`N_t(u)` the ``user_knn_k`` neighbours sampled at epoch t and
    :math:`g_{uv}` the softmax of their co-occurrence counts. The loss is `DualGraphRecommender`'s. With
    one modality :math:`\bar u = r_u` and there is no :math:`w` (MMRec's single-modality branch); with
    image + text everything is MMRec's two-modality code.

    Departures from MMRec, and MMRec defects fixed:

    - MMRec adds the text representation in place into the image one (``representation += t_rep`` with
      ``representation`` aliasing ``v_rep``), so its users get :math:`w_{u0}(r^v + r^t) + w_{u1} r^t`;
      here :math:`\sum_m w_{um} r^m` as the paper and the code's intent (the same function class).
    - MMRec scores from ``result_embed`` stored by the last training batch; scores here come from the
      current weights. The user graph is built block-wise from the training split (`graphs.py`) instead
      of MMRec's preprocessed ``user_graph_dict.npy``; k (40, hard-coded) is ``user_knn_k``.
    - Dead code not ported: ``weight_i`` (it enters only its own L2 penalty, never a score), ``MLP_user``,
      ``MLP_v``, ``MLP_t`` and ``result_embed`` (never in the loss). MMRec draws per-modality item sets
      whose edges it drops (``dropv``/``dropt``, 10% of the items) but ``GCN.forward`` ignores the dropped
      graphs, so its models train on the full graph: ``item_drop_rate=0`` (default) is that;
      ``item_drop_rate > 0`` applies the drop (`dropped_item_sets`, torch's global RNG).
    - ``n_layers`` (MMRec's config value 2, unused there) counts the convolutions MMRec hard-codes as
      :math:`x + h + h_1`; MMRec's ``dim_latent = 64`` is ``embedding_size``, its 4x MLP width
      ``hidden_factor``. The regulariser already averages over the actual batch.
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 2,
        aggr_mode: str = "add",
        reg_weight: float = 1e-3,
        user_knn_k: int = 40,
        hidden_factor: int = 4,
        item_drop_rate: float = 0.0,
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

    @override
    def propagate(self) -> tuple[Tensor, Tensor]:
        users, items = self.modality_representations()
        user = users[0] if self.weight_u is None else (torch.stack(users, dim=1) * self.weight_u).sum(1)
        return user + self.aggregate_users(user), sum(items[1:], items[0])
