"""Losses shared by the recommenders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """BPR: the mean of -log sigmoid(s_pos - s_neg), computed stably as softplus(s_neg - s_pos)."""
    return F.softplus(neg_scores - pos_scores).mean()


def embedding_norm_loss(*embeddings: Tensor) -> Tensor:
    """MMRec's EmbLoss: sum of the Frobenius norms (not squared) of the embeddings / batch size."""
    return torch.stack([torch.linalg.norm(e) for e in embeddings]).sum() / embeddings[-1].shape[0]
