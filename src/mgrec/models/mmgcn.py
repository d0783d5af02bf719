"""MMGCN (Wei et al., ACM MM 2019, "Multi-modal Graph Convolution Network for Personalized Recommendation of
Micro-video") as in MMRec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import bipartite_adjacency, row_normalize, scipy_to_torch, transposed_spmm
from mgrec.models.base import Recommender
from mgrec.models.losses import bpr_loss
from mgrec.models.multimodal import ModalityFeatures, require_modalities

# MMRec's MMGCN projects the image features to a 256-d latent space first (`dim_latent=256`); the text
# branch works on the raw features
MMREC_LATENT_DIMS = {"image": 256}
AGGREGATIONS = ("mean", "add")


class _Layer(nn.Module):
    """One MMGCN layer of one modality: graph convolution, ID-enhanced self transform, combination."""

    def __init__(self, in_dim: int, id_dim: int, concat: bool, first: bool) -> None:
        super().__init__()
        self.concat = concat
        self.conv = nn.Parameter(nn.init.xavier_normal_(torch.empty(in_dim, in_dim)))
        self.linear = nn.Linear(in_dim, id_dim)
        nn.init.xavier_normal_(self.linear.weight)
        self.combine = nn.Linear(in_dim + id_dim if concat else in_dim, id_dim)
        if first:  # MMRec re-initialises g_layer1 only; g_layer2/3 keep PyTorch's default init
            nn.init.xavier_normal_(self.combine.weight)

    def forward(self, x: Tensor, graph: Tensor, graph_t: Tensor, id_embedding: Tensor) -> Tensor:
        h = F.leaky_relu(transposed_spmm(graph, graph_t, x @ self.conv))
        x_hat = F.leaky_relu(self.linear(x)) + id_embedding
        if self.concat:
            return F.leaky_relu(self.combine(torch.cat([h, x_hat], dim=1)))
        return F.leaky_relu(self.combine(h) + x_hat)


class MMGCN(Recommender):
    r"""One graph convolution stack per modality on the user-item graph; the modality outputs are averaged.

    Nodes are users then items (n = |U| + |I|). For modality m with fixed item features X_m, a trainable
    user preference table P_m and the trainable ID embeddings E [n, d] shared by all modalities:

    .. math::
        x^{(0)} = \mathrm{normalize}\big([P_m;\ \mathrm{MLP}_m(X_m)]\big), \qquad
        h^{(l)} = \phi\big(G\, x^{(l)} W^{(l)}_c\big), \qquad
        \hat x^{(l)} = \phi\big(W^{(l)}_s x^{(l)} + b^{(l)}_s\big) + E,

        x^{(l+1)} = \phi\big(W^{(l)}_g [h^{(l)}; \hat x^{(l)}] + b^{(l)}_g\big) \ \text{(concat)} \quad
        \text{or} \quad \phi\big(W^{(l)}_g h^{(l)} + b^{(l)}_g + \hat x^{(l)}\big),

        Z = \frac{1}{M} \sum_m x_m^{(L)}, \qquad \hat y_{ui} = z_u^\top z_i, \qquad
        \mathcal L = \mathrm{BPR} + \lambda \Big(\overline{E_u^2} + \overline{E_{\{i,j\}}^2}
        + \sum_{m \in \mathcal R} \overline{P_m^2}\Big)

    with \phi = leaky ReLU (slope 0.01), normalize = row-wise L2, MLP_m a linear layer to
    ``latent_dims[m]`` (MMRec: 256 for image) or the identity for the other modalities, and
    :math:`\overline{\cdot}` the mean of the squared entries (the batch's users, its positive and
    negative items, and the whole preference table of each modality in ``preference_reg_modalities``,
    MMRec's image only). The graph convolution reproduces MMRec's PyG ``MessagePassing`` (``message`` =
    x_j, no self loops, edges in both directions): ``aggr="mean"`` (MMRec) is G = D^{-1} A, ``"add"`` is
    G = A, with A the binary bipartite adjacency; nodes without edges aggregate zero. For image + text
    this is MMRec's v_gcn + t_gcn over 2; any non-empty set of modalities gets one stack each.

    Departures from MMRec: the ID embeddings and the user preferences are trained (MMRec creates them
    as plain tensors, not Parameters, so they keep their random initial values); scores are computed
    from the current weights (MMRec ranks with the representation cached by the last training forward).
    MMRec sets ``concate = 'False'``, a non-empty string and so true: its layers concatenate, and
    ``concat=True`` is our default; its ``n_layers`` (2) is unused and the network always has 3 layers,
    so ``n_layers`` defaults to 3 here and now sets the depth. The convolution weights have no bias, as
    MMRec's (its ``bias=True`` argument is ignored).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 3,
        reg_weight: float = 1e-5,
        concat: bool = True,
        aggr: str = "mean",
        latent_dims: Mapping[str, int] | None = None,
        preference_reg_modalities: Sequence[str] = ("image",),
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        if aggr not in AGGREGATIONS:
            raise ValueError(f"aggr must be one of {AGGREGATIONS}, got {aggr!r}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        modalities = require_modalities(type(self).__name__, data)
        latent = dict(MMREC_LATENT_DIMS if latent_dims is None else latent_dims)
        self.features = ModalityFeatures(modalities, trainable=False)
        n_nodes = self.n_users + self.n_items
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, embedding_size)))
        self.mlp = nn.ModuleDict(
            {
                name: nn.Linear(dim, latent[name])
                for name, dim in self.features.dims().items()
                if name in latent
            }
        )
        self.preference = nn.ParameterDict()
        self.layers = nn.ModuleDict()
        for name, dim in self.features.dims().items():
            in_dim = latent.get(name, dim)
            self.preference[name] = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, in_dim)))
            self.layers[name] = nn.ModuleList(
                _Layer(in_dim if depth == 0 else embedding_size, embedding_size, concat, first=depth == 0)
                for depth in range(n_layers)
            )
        adjacency = bipartite_adjacency(data.train)
        graph = row_normalize(adjacency) if aggr == "mean" else adjacency
        self.register_graph("graph", scipy_to_torch(graph))
        self.register_graph("graph_t", scipy_to_torch(graph.T))

    def propagate(self) -> Tensor:
        """The final representations Z [n_users + n_items, embedding_size] (users first)."""
        total = None
        for name, features in self.features.items():
            items = self.mlp[name](features) if name in self.mlp else features
            x = F.normalize(torch.cat([self.preference[name], items]))
            for layer in self.layers[name]:
                x = layer(x, self.graph, self.graph_t, self.id_embedding)
            total = x if total is None else total + x
        return total / len(self.features.names)

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        out = self.propagate()
        items = torch.cat([pos_items, neg_items]) + self.n_users
        # index_select: its backward (index_add) is deterministic on CPU, out[idx]'s (index_put with
        # accumulate) is not, and this model's training amplifies the rounding differences
        user_e = out.index_select(0, users)
        pos_e, neg_e = out.index_select(0, items).split(len(pos_items))
        ranking = bpr_loss((user_e * pos_e).sum(1), (user_e * neg_e).sum(1))
        # MMRec's mean over the 2B (user, item) rows of id[u]^2 + id[i]^2: users appear twice each
        reg = (
            self.id_embedding.index_select(0, users).square().mean()
            + self.id_embedding.index_select(0, items).square().mean()
        )
        for name in self.features.names:
            if name in self.hparams.preference_reg_modalities:
                reg = reg + self.preference[name].square().mean()
        return ranking + self.hparams.reg_weight * reg

    @override
    def score(self, users: Tensor) -> Tensor:
        out = self.cached("propagate", self.propagate)
        return out[users] @ out[self.n_users :].T
