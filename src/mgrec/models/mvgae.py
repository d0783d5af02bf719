"""MVGAE (Yi et al., IEEE TMM 2021) as in MMRec: a multimodal variational graph auto-encoder whose
per-modality Gaussian experts are fused by a product of experts."""

from __future__ import annotations

import math
from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import bipartite_adjacency, row_normalize, scipy_to_torch, transposed_spmm
from mgrec.models.base import Recommender
from mgrec.models.multimodal import ModalityFeatures, require_modalities

# MMRec's constants: log-variances are clamped at MAX_LOGVAR before exp() in the sampling and the KL; the
# product of experts adds POE_EPS to every variance
MAX_LOGVAR = 10.0
POE_EPS = 1e-8


def product_of_experts(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """The Gaussian product of the K experts stacked in mu, logvar [K, ...]: precision-weighted mean and
    log of the inverse total precision (MMRec's ``ProductOfExperts``, no prior expert)."""
    precision = 1.0 / (logvar.exp() + POE_EPS)
    total = precision.sum(0)
    return (mu * precision).sum(0) / total, -total.log()


class _MeanConv(nn.Module):
    """MMRec's ``BaseModel`` (a PyG MessagePassing with aggr='mean'): weight [in, out], bias [out]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(in_dim, out_dim)))
        bound = 1.0 / math.sqrt(in_dim)  # PyG's inits.uniform(in_channels, bias)
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))


def _linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(layer.weight)
    return layer


class _Expert(nn.Module):
    """One Gaussian expert (MMRec's ``GCN`` with concate=False): its own user table, feature MLP, graph
    layers and the two heads (index 0: mean, 1: log-variance)."""

    def __init__(
        self, n_users: int, in_dim: int, latent_dim: int, dim: int, n_layers: int, learn_users: bool
    ) -> None:
        super().__init__()
        preference = nn.init.xavier_normal_(torch.empty(n_users, latent_dim))
        if learn_users:
            self.preference = nn.Parameter(preference)
        else:
            self.register_buffer("preference", preference)
        self.mlp = _linear(in_dim, latent_dim)
        self.convs = nn.ModuleList(_MeanConv(latent_dim if i == 0 else dim, dim) for i in range(n_layers))
        self.gates = nn.ModuleList(_linear(dim, dim) for _ in range(n_layers))
        self.head_convs = nn.ModuleList(_MeanConv(dim, dim) for _ in range(2))
        self.head_skips = nn.ModuleList(_linear(dim, dim) for _ in range(2))
        self.head_outs = nn.ModuleList(_linear(dim, dim) for _ in range(2))


class MVGAE(Recommender):
    r"""Multimodal variational graph auto-encoder with a product of Gaussian experts.

    Every expert e (one per modality m with features :math:`x^m`, plus a collaborative one whose item
    input is a free table :math:`C`) encodes all users and items on the user-item graph:

    .. math::
        H^{(0)}_e = \mathrm{rownorm}_2\big([P_e;\ \mathrm{MLP}_e(x^e)]\big), \qquad
        \mathrm{conv}(H) = \mathrm{drop}\big(\mathrm{rownorm}_2(\tilde D^{-1}(A + I) H W + b)\big), \\
        H^{(l+1)}_e = \phi\big(G_l\, \phi(\mathrm{conv}_l(H^{(l)}_e))\big), \qquad
        \mu_e = O_\mu \phi(\mathrm{conv}_\mu(H_e)) + \phi(S_\mu H_e), \quad
        \log\sigma^2_e = O_\sigma \phi(\mathrm{conv}_\sigma(H_e)) + \phi(S_\sigma H_e), \\
        (\mu, \sigma^2) = \mathrm{PoE}\big(\mathrm{PoE}(\{\mu_m, \sigma^2_m\}_m),\ (\mu_c, \sigma^2_c)\big),
        \qquad \mathrm{PoE}: \ \sigma^{-2} = \textstyle\sum_k (\sigma_k^2 + \epsilon)^{-1}, \
        \mu = \sigma^2 \sum_k \mu_k (\sigma_k^2 + \epsilon)^{-1}, \\
        z_e = s\big(\mu_e + 0.1\,\varepsilon \odot \sigma_e\big), \ \varepsilon \sim \mathcal N(0, I), \qquad
        \mathcal L = \sum_{e \in \{\mathrm{PoE}, m_1..m_M, c\}} \Big[ -\sum_b \log_2 \sigma\big(
        \sigma(z_{u_b}^\top z_{i_b}) - \sigma(\max_{b'} z_{u_b}^\top z_{j_{b'}})\big)
        + \beta_{KL}\, \mathrm{KL}_e \Big], \\
        \mathrm{KL}_e = -\tfrac12 \operatorname{mean}_n \textstyle\sum_d
        (1 + \log\sigma^2_e - \mu_e^2 - \sigma^2_e), \qquad \hat y_{ui} = s(\mu_u)^\top s(\mu_i)

    A is the bipartite user-item adjacency; PyG's mean aggregation with self loops (``remove_self_loops``
    then ``add_self_loops``) is the row-normalised :math:`\tilde D^{-1}(A + I)`, :math:`\tilde D = D + I`,
    stored as sparse CSR (messages :math:`x_j W` averaged over the node and its neighbours, then bias,
    L2 row normalisation and dropout as in ``BaseModel.update``). :math:`\phi` is leaky ReLU, s the sigmoid
    (MMRec's hard-coded 'amazon' branch; ``sigmoid_embeddings``), :math:`\sigma_e` uses
    :math:`\log\sigma^2` clamped at 10 (also in the KL), 0.1 is ``noise_scale``. The negative term is
    MMRec's hardest in-batch negative: each user's largest score over all the batch's negative items
    (``hardest_negative=False``: each user's own negative :math:`z_{u_b}^\top z_{j_b}` instead; on dense
    data the hardest one is often a training positive of the user). With ``sigmoid_embeddings`` the
    scores :math:`\sigma(z_u^\top z_i)` of two d = 64 vectors in (0, 1) start near :math:`\sigma(16)`, so
    the reconstruction gradient starts near 1e-7 and never recovers: on ml100k the loss stayed flat
    (6115.77 from epoch 3 to 23) at random-level Recall@20 (0.014). That is a defect of MMRec's 'amazon'
    branch, so the default is ``sigmoid_embeddings=False`` (s = identity); True reproduces MMRec.
    The KL weight is ``kl_weight`` (MMRec's ``beta``; Mirror Gradient's own ``beta`` is an optimiser
    argument and never touches it). For image + text the experts are exactly MMRec's: PoE(v, t), then PoE
    with the collaborative expert, and the loss sums the fused, v, t and c terms; with M modalities the
    first product runs over all M (one modality: its expert with :math:`\epsilon` added to its variance).

    Sampling (only in training mode, torch's global RNG) draws one :math:`\varepsilon` per distinct node
    of the batch per expert, as MMRec's one sample per node; scoring uses the fused means, without
    dropout, from the current weights (MMRec scores from ``result_embed``, the training-mode forward of
    the last batch: stale under MG's second step and taken with dropout on).

    Departures from MMRec: (1) the loss offsets item ids by n_users before indexing the node table
    (MMRec's ``calculate_loss`` does not, so its "items" are user rows: a defect); (2) the experts' user
    tables :math:`P_e` and the collaborative item table :math:`C` are trained (MMRec builds them as plain
    tensors outside its module, so its optimiser never updates them: a defect;
    ``learn_id_embeddings=False`` keeps them frozen, as persistent buffers);
    (3) the unused skip layers of the graph layers (``linear_layer1/2``, dead with concate=False) are
    dropped, as is ``concate``; (4) ``n_layers`` graph layers of any number >= 1 (MMRec: 1 or 2,
    more silently ignored); every weight is Xavier-normal (MMRec leaves ``g_layer2`` at torch's default);
    (5) the hardest negative is one [B, B] product instead of MMRec's [B, B, d] gather, and noise is
    drawn for the batch's nodes only (MMRec draws it for all nodes; the same in distribution);
    (6) ``hardest_negative=False`` is an addition; ``graph_cache_dir`` is unused (no feature graph). The
    reconstruction term is a sum over the batch and the KL a mean over all nodes, as in MMRec.
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 1,
        kl_weight: float = 0.1,
        latent_dim: int = 128,
        dropout: float = 0.1,
        noise_scale: float = 0.1,
        sigmoid_embeddings: bool = False,
        hardest_negative: bool = True,
        learn_id_embeddings: bool = True,
        graph_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.features = ModalityFeatures(require_modalities(type(self).__name__, data), trainable=False)
        collaborative = nn.init.xavier_normal_(torch.empty(self.n_items, embedding_size))
        if learn_id_embeddings:
            self.collaborative = nn.Parameter(collaborative)
        else:
            self.register_buffer("collaborative", collaborative)
        in_dims = {**self.features.dims(), "collaborative": embedding_size}
        self.experts = nn.ModuleDict(
            {
                name: _Expert(self.n_users, dim, latent_dim, embedding_size, n_layers, learn_id_embeddings)
                for name, dim in in_dims.items()
            }
        )
        n_nodes = self.n_users + self.n_items
        mean_graph = row_normalize(bipartite_adjacency(data.train) + sp.identity(n_nodes, format="csr"))
        self.register_graph("mean_graph", scipy_to_torch(mean_graph))
        self.register_graph("mean_graph_t", scipy_to_torch(mean_graph.T))

    def _convolve(self, convs: list[_MeanConv], inputs: list[Tensor], dropout: bool) -> list[Tensor]:
        """Several graph convolutions at once: one sparse product for all of them."""
        messages = torch.cat([x @ conv.weight for conv, x in zip(convs, inputs, strict=True)], dim=1)
        aggregated = transposed_spmm(self.mean_graph, self.mean_graph_t, messages)
        return [
            F.dropout(F.normalize(part + conv.bias, dim=-1), self.hparams.dropout, training=dropout)
            for conv, part in zip(convs, aggregated.split(self.hparams.embedding_size, dim=1), strict=True)
        ]

    def encode(self, dropout: bool) -> tuple[Tensor, Tensor]:
        """Means and log-variances [K, n_users + n_items, d] of the experts: modalities, then collaborative."""
        experts = list(self.experts.values())
        inputs = [*(features for _, features in self.features.items()), self.collaborative]
        xs = [
            F.normalize(torch.cat([expert.preference, expert.mlp(item_input)]), dim=-1)
            for expert, item_input in zip(experts, inputs, strict=True)
        ]
        for layer in range(self.hparams.n_layers):
            hs = self._convolve([expert.convs[layer] for expert in experts], xs, dropout)
            xs = [F.leaky_relu(e.gates[layer](F.leaky_relu(h))) for e, h in zip(experts, hs, strict=True)]
        heads = self._convolve(
            [conv for expert in experts for conv in expert.head_convs],
            [x for x in xs for _ in range(2)],
            dropout,
        )
        mu, logvar = (
            torch.stack(
                [
                    e.head_outs[k](F.leaky_relu(heads[2 * i + k])) + F.leaky_relu(e.head_skips[k](x))
                    for i, (e, x) in enumerate(zip(experts, xs, strict=True))
                ]
            )
            for k in range(2)
        )
        return mu, logvar

    @staticmethod
    def fuse(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """PoE over the modality experts (all but the last), then PoE with the collaborative one (last)."""
        modal_mu, modal_logvar = product_of_experts(mu[:-1], logvar[:-1])
        return product_of_experts(torch.stack([modal_mu, mu[-1]]), torch.stack([modal_logvar, logvar[-1]]))

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, neg_items = batch
        expert_mu, expert_logvar = self.encode(dropout=self.training)
        fused_mu, fused_logvar = self.fuse(expert_mu, expert_logvar)
        mu = torch.cat([fused_mu[None], expert_mu])  # [M + 2, n_nodes, d]: fused, modalities, collaborative
        logvar = torch.cat([fused_logvar[None], expert_logvar]).clamp(max=MAX_LOGVAR)
        nodes = torch.cat([users, pos_items + self.n_users, neg_items + self.n_users])
        distinct, inverse = torch.unique(nodes, return_inverse=True)
        z = mu[:, distinct]
        if self.training:  # one sample per distinct node and expert
            z = z + torch.randn_like(z) * self.hparams.noise_scale * (0.5 * logvar[:, distinct]).exp()
        if self.hparams.sigmoid_embeddings:
            z = torch.sigmoid(z)
        user_z, pos_z, neg_z = z[:, inverse].split(len(users), dim=1)
        pos_scores = torch.sigmoid((user_z * pos_z).sum(-1))
        if self.hparams.hardest_negative:  # each user's largest score over all the batch's negatives
            neg_scores = torch.sigmoid(torch.bmm(user_z, neg_z.transpose(1, 2)).max(-1).values)
        else:  # each user's own negative
            neg_scores = torch.sigmoid((user_z * neg_z).sum(-1))
        # -log2 sigmoid(x) = softplus(-x) / ln 2
        reconstruction = F.softplus(neg_scores - pos_scores).sum(-1) / math.log(2.0)
        kl = -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(-1).mean(-1)
        return (reconstruction + self.hparams.kl_weight * kl).sum()

    def node_embeddings(self) -> Tensor:
        """The scoring embeddings [n_users + n_items, d]: the fused means, without dropout or sampling."""
        fused_mu, _ = self.fuse(*self.encode(dropout=False))
        return torch.sigmoid(fused_mu) if self.hparams.sigmoid_embeddings else fused_mu

    @override
    def score(self, users: Tensor) -> Tensor:
        embeddings = self.cached("propagate", self.node_embeddings)
        return embeddings[users] @ embeddings[self.n_users :].T
