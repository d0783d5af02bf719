"""SLMRec (Tao et al., IEEE TMM 2022, "Self-supervised Learning for Multimedia Recommendation") as in MMRec."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from mgrec.data.interactions import InteractionData
from mgrec.graphs import bipartite_mean_propagation, normalized_bipartite
from mgrec.models.base import Recommender
from mgrec.models.losses import in_batch_infonce
from mgrec.models.multimodal import ModalityFeatures, require_modalities


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """nn.Linear with a Xavier-uniform weight (MMRec's init; the bias keeps torch's default init)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    return layer


def fac_hierarchy(n_modalities: int, embedding_size: int) -> tuple[list[int], list[int]]:
    """FAC's hierarchy for M modalities: (the level of each modality in order, the widths of levels 0..L).

    One modality: one level of width d (MMRec's kwai). M >= 2: L = max(M, 3) levels, the first modality at
    level 1, the last at level L (width d // 2), the others in order at levels 2..M-1; all other widths d.
    So (v, a, t) gives the paper's i -> iv -> iva -> ivat and two modalities leave level 2 without an
    alignment, exactly MMRec's image + text code (whose audio term is commented out).
    """
    if n_modalities < 1:
        raise ValueError(f"FAC needs at least one modality, got {n_modalities}")
    if n_modalities == 1:
        return [1], [embedding_size, embedding_size]
    n_levels = max(n_modalities, 3)
    levels = [*range(1, n_modalities), n_levels]
    return levels, [embedding_size] * n_levels + [embedding_size // 2]


class SLMRec(Recommender):
    r"""LightGCN channels for the item IDs and for every modality, fused by concatenation, trained with an
    in-batch InfoNCE loss plus the FAC (fine and coarse) cross-modal self-supervised task.

    With modalities :math:`m_1..m_M` in the data set's order, fixed row-normalised features
    :math:`\bar X_m = X_m / \lVert X_m \rVert_{row}` and projections :math:`P_m = \bar X_m W_m + b_m`:

    .. math::
        [U_c; I_c] = \frac{1}{L+1} \sum_{l=0}^{L} \hat A^l [E_u; E_c], \quad E_{id} = E_i,\ E_{m} = P_m,
        \quad \hat A = D^{-1/2} A D^{-1/2}

        u = [U_{id} \Vert U_{m_1} \Vert \dots \Vert U_{m_M}] W_u + b_u, \quad
        i = [I_{id} \Vert I_{m_1} \Vert \dots \Vert I_{m_M}] W_i + b_i, \qquad \hat y_{ui} = u^\top i

    Every channel starts from the same user ID embeddings :math:`E_u` (MMRec's user side), and all
    channels are propagated as one [n, (M+1) d] product. For a batch of B (user, positive item) pairs:

    .. math::
        \mathcal L = \mathrm{CE}\big(\cos(u_a, i_b) / \tau\big)
        + \alpha \sum_{k=1}^{M} \mathrm{CE}\big(z_{\ell(m_k)}(a)^\top h_{m_k}(I_{m_k}[b]) / \tau_{ssl}\big),
        \qquad z_0 = I_{id}[\text{pos}],\ z_\ell = g_\ell(z_{\ell-1})

    where CE is the mean cross-entropy of each row a of the B x B logits against its own column b = a
    (negatives: the other positives of the batch; the sampled negatives are unused, as in MMRec), and
    :math:`g_\ell, h_m` are affine maps (FAC: ID features projected level by level, aligned with one
    modality per level, logits not normalised). MMRec hard-codes the hierarchy i -> iv -> iva -> ivat
    per data set; here modality k sits at level :math:`\ell(m_k)` of `fac_hierarchy`: the first modality at
    level 1, the last at the last level (width d/2), the others in order between; one modality gives one
    level of width d (kwai), and two modalities keep MMRec's unaligned middle level, so MMRec's image +
    text, kwai's video and the paper's video + audio + text are reproduced exactly.

    The only regulariser is MMRec's Adam weight decay 1e-4 on every parameter, which for Adam (coupled
    L2: the gradient gets wd * theta) equals adding :math:`\tfrac{wd}{2} \sum \theta^2` to the loss: it is
    that term here (`l2_weight`), so the model carries it whatever the optimizer config says. Departures from
    MMRec: scores are not passed through MMRec's sigmoid (monotone: same ranking) and are computed from
    the current weights, not from the embeddings of the last training batch; only the FAC task and
    `concat` fusion exist (MMRec's FD/FM tasks, the only users of dropout, and its `mean` fusion do not run
    there: they read missing config keys or break the fusion layer's shape), so no dropout is applied;
    any modality set runs (MMRec's code needs image + text or kwai, e.g. fails on tiktok's image + audio).
    """

    def __init__(
        self,
        data: InteractionData | None = None,
        embedding_size: int = 64,
        n_layers: int = 3,
        temp: float = 0.2,
        ssl_alpha: float = 0.1,
        ssl_temp: float = 0.2,
        l2_weight: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        modalities = require_modalities("SLMRec", data)
        self.modality_names = list(modalities)
        d = embedding_size
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        # MMRec row-normalises the raw features and keeps them fixed; only the projections learn
        self.features = ModalityFeatures(
            {name: F.normalize(value.float(), dim=1) for name, value in modalities.items()}, trainable=False
        )
        self.projections = nn.ModuleDict({name: _linear(x.shape[1], d) for name, x in modalities.items()})
        fused = d * (len(modalities) + 1)
        self.user_fusion, self.item_fusion = _linear(fused, d), _linear(fused, d)
        levels, widths = fac_hierarchy(len(modalities), d)
        self.fac_chain = nn.ModuleList(_linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.fac_heads = nn.ModuleDict(
            {name: _linear(d, widths[level]) for name, level in zip(self.modality_names, levels, strict=True)}
        )
        # level -> (channel index of the modality, its name); channel 0 is the ID channel
        self.fac_alignments = {
            level: (k + 1, name)
            for k, (name, level) in enumerate(zip(self.modality_names, levels, strict=True))
        }
        norm_r, norm_rt = normalized_bipartite(data.train)
        self.register_graph("norm_r", norm_r)
        self.register_graph("norm_rt", norm_rt)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """All channels propagated at once: users [n_users, (M+1) d] and items [n_items, (M+1) d], the
        concatenation [ID | m_1 | ... | m_M] of each channel's layer mean (the input of the fusion)."""
        items = torch.cat(
            [
                self.item_embedding,
                *(self.projections[name](self.features[name]) for name in self.modality_names),
            ],
            dim=1,
        )
        users = self.user_embedding.repeat(1, len(self.modality_names) + 1)
        return bipartite_mean_propagation(self.norm_r, self.norm_rt, users, items, self.hparams.n_layers)

    def embed(self) -> tuple[Tensor, Tensor]:
        """Final user and item representations [n_users, d], [n_items, d]."""
        user_channels, item_channels = self.propagate()
        return self.user_fusion(user_channels), self.item_fusion(item_channels)

    def fac_loss(self, item_channels: Tensor) -> Tensor:
        """FAC on the batch's positive items: `item_channels` [B, (M+1) d] are their propagated channels."""
        channels = item_channels.split(self.hparams.embedding_size, dim=1)
        z, loss = channels[0], item_channels.new_zeros(())
        for level, layer in enumerate(self.fac_chain, start=1):
            z = layer(z)
            if level in self.fac_alignments:
                index, name = self.fac_alignments[level]
                loss = loss + in_batch_infonce(
                    z, self.fac_heads[name](channels[index]), self.hparams.ssl_temp
                )
        return loss

    @override
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        users, pos_items, _ = batch
        user_channels, item_channels = self.propagate()
        # fuse only the batch's rows (the fusion is row-wise, so this equals fusing everything, then gathering)
        pos_channels = item_channels[pos_items]
        user_e = F.normalize(self.user_fusion(user_channels[users]), dim=1)
        item_e = F.normalize(self.item_fusion(pos_channels), dim=1)
        main = in_batch_infonce(user_e, item_e, self.hparams.temp)
        loss = main + self.hparams.ssl_alpha * self.fac_loss(pos_channels)
        if self.hparams.l2_weight:
            squares = torch.stack([parameter.square().sum() for parameter in self.parameters()]).sum()
            loss = loss + 0.5 * self.hparams.l2_weight * squares
        return loss

    @override
    def score(self, users: Tensor) -> Tensor:
        user_final, item_final = self.cached("embed", self.embed)
        return user_final[users] @ item_final.T


__all__ = ["SLMRec", "fac_hierarchy"]
