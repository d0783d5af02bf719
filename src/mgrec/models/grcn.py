"""GRCN (Wei et al., ACM MM 2020, "Graph-Refined Convolutional Network for Multimedia Recommendation with
Implicit Feedback") as in MMRec."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import edge_softmax, edge_spmm
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss
from mgrec.models.multimodal import ModalityFeatures, require_modalities


class GRCN(Recommender):
    r"""Per-modality attention refines the user-item graph; ID embeddings are convolved on the refined graph.

    Nodes are users then items (n = |U| + |I|); the E training edges are taken in both directions, an edge
    (j -> i) carrying x_j to i. For modality m with fixed features X_m and a trainable preference table
    P_m:

    .. math::
        f_m = \mathrm{normalize}(\phi(X_m W_m + b_m)), \qquad x_m = [\mathrm{normalize}(P_m);\ f_m],

        \alpha^m_{j \to i} = \mathrm{softmax}_{j \in N(i)}\, x_{m,i}^\top x_{m,j}, \qquad
        c_m = x_m + \sum_{j \in N(i)} \alpha^m_{j \to i}\, x_{m,j},

        w_{j \to i} = \mathrm{relu}\big(\max_m \alpha^m_{j \to i}\, \kappa_{j,m}\big), \qquad
        e = \mathrm{normalize}(E), \quad e' = W e, \quad e'' = W e', \qquad
        z = [e + e' + e'';\ c_1; \dots; c_M],

        \hat y_{ui} = z_u^\top z_i, \qquad \mathcal L = \mathrm{BPR} + \lambda\Big(\overline{E_u^2}
        + \overline{E_{\{i,j\}}^2} + \sum_{m \in \mathcal R} \overline{P_m^2} + \sum_m \overline{P_{m,u}^2}\Big)

    with \phi = leaky ReLU, normalize = row-wise L2, \kappa [n, M] the trainable per-node modality
    confidences (of the edge's source node), W the sparse matrix of the edge weights w (row i = target),
    :math:`\overline{\cdot}` the mean of the squared entries (batch users, positive and negative items;
    the whole preference table of each modality in ``preference_reg_modalities``, MMRec's image only; the
    batch users' preference rows of every modality). This is MMRec's PyG code exactly: GATConv
    (``aggr='add'``, self loops removed, none added; message :math:`\alpha x_j`, softmax over the edges
    into the same target), SAGEConv with ``aggr='add'`` (message :math:`w x_j`, no normalisation), and
    ``weight_mode='confid'``, ``fusion_mode='concat'``, pruning on, no activations, normalisation on.
    For image + text, z = [id; image; text] as MMRec's; any non-empty set of modalities adds one block.

    MMRec's routing (``n_layers`` = 3 iterations of :math:`P \leftarrow \mathrm{normalize}(P + \hat x_U)`)
    runs a GATConv on the user -> item edges only, so every message lands on an item and the users' rows
    :math:`\hat x_U` are zero: the routing leaves the preferences at normalize(P), a defect.
    ``user_routing=True`` (default) routes as the paper describes, each iteration adding to a user the
    attention-weighted sum of its items' features (softmax over its items of :math:`p_u^\top f_i`);
    ``user_routing=False`` reproduces MMRec's behaviour without computing the no-op.

    Departures from MMRec: scores are computed from the current weights (MMRec ranks with the
    representation cached by the last training forward); MMRec's edge dropout is fixed at p = 0, a no-op,
    and is left out; MMRec computes an L2 term on the confidences but does not add it to the loss, and
    neither do we; with one modality MMRec fails (a typo leaves the content representation unset), here
    it works.
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        latent_embedding: int = 64,
        n_layers: int = 3,
        reg_weight: float = 1e-5,
        user_routing: bool = True,
        preference_reg_modalities: Sequence[str] = ("image",),
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        modalities = require_modalities(type(self).__name__, data)
        self.features = ModalityFeatures(modalities, trainable=False)
        n_nodes = self.n_users + self.n_items
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, embedding_size)))
        self.preference = nn.ParameterDict(
            {
                name: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, latent_embedding)))
                for name in self.features.names
            }
        )
        self.mlp = nn.ModuleDict(
            {name: nn.Linear(dim, latent_embedding) for name, dim in self.features.dims().items()}
        )
        for layer in self.mlp.values():
            nn.init.xavier_normal_(layer.weight)
        n_modalities = len(self.features.names)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, n_modalities)))
        coo = data.train.tocoo()
        users = torch.from_numpy(coo.row.astype(np.int64))
        items = torch.from_numpy(coo.col.astype(np.int64)) + self.n_users
        # the E user -> item edges, then the E item -> user edges (MMRec's cat with edge_index[[1, 0]])
        self.register_graph("source", torch.cat([users, items]))
        self.register_graph("target", torch.cat([items, users]))

    def _route(self, preference: Tensor, features: Tensor) -> Tensor:
        """The paper's user routing (``user_routing=True``): users gather their items' features."""
        n_edges = len(self.source) // 2
        users = self.source[:n_edges]
        item_features = features.index_select(
            0, self.target[:n_edges] - self.n_users
        )  # fixed across iterations
        for _ in range(self.hparams.n_layers):
            scores = (preference.index_select(0, users) * item_features).sum(1)
            alpha = edge_softmax(users, scores, self.n_users)
            messages = alpha.unsqueeze(1) * item_features
            preference = F.normalize(preference.index_add(0, users, messages))
        return preference

    def propagate(self) -> Tensor:
        """The final representations z [n_users + n_items, embedding_size + M * latent_embedding]."""
        n_nodes = self.n_users + self.n_items
        n_edges = len(self.source) // 2
        source, target = self.source, self.target
        content, attention = [], []
        for name, features in self.features.items():
            items = F.normalize(F.leaky_relu(self.mlp[name](features)))
            preference = F.normalize(self.preference[name])
            if self.hparams.user_routing:
                preference = self._route(preference, items)
            x = torch.cat([preference, items])
            # one gather per side serves both directions: x_i . x_j is the same for an edge and its reverse
            x_users, x_items = x.index_select(0, source[:n_edges]), x.index_select(0, target[:n_edges])
            half = (x_users * x_items).sum(1)
            alpha = edge_softmax(target, torch.cat([half, half]), n_nodes)
            to_items, to_users = alpha.unsqueeze(1).split(n_edges)
            content.append(x.index_add(0, target, torch.cat([to_items * x_users, to_users * x_items])))
            attention.append(alpha)
        weights = (torch.stack(attention, dim=1) * self.confidence.index_select(0, source)).max(dim=1).values
        weights = weights.relu()
        ids = F.normalize(self.id_embedding)
        first = edge_spmm(target, source, weights, ids, n_nodes)
        second = edge_spmm(target, source, weights, first, n_nodes)
        return torch.cat([ids + first + second, *content], dim=1)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        out = self.propagate()
        items = torch.cat([pos_items, neg_items]) + self.n_users
        # index_select, whose backward is deterministic on CPU (out[idx]'s index_put backward is not)
        user_e = out.index_select(0, users)
        pos_e, neg_e = out.index_select(0, items).split(len(pos_items))
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        # MMRec's means over the 2B (user, item) rows: each user appears twice
        reg = (
            self.id_embedding.index_select(0, users).square().mean()
            + self.id_embedding.index_select(0, items).square().mean()
        )
        for name, preference in self.preference.items():
            if name in self.hparams.preference_reg_modalities:
                reg = reg + preference.square().mean()
            reg = reg + preference.index_select(0, users).square().mean()
        return ranking + self.hparams.reg_weight * reg

    @override
    def score(self, users: Tensor) -> Tensor:
        out = self.cached("propagate", self.propagate)
        return out[users] @ out[self.n_users :].T
