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


class _InBatchInfoNCE(torch.autograd.Function):
    """In-batch InfoNCE: mean over rows a of logsumexp_b(s_ab) - s_aa with s = (anchors / tau) targets^T,
    i.e. MMRec's cross-entropy of the B x B logits against labels 0..B-1.

    One B x B buffer per call: the logits are turned into the softmax in place and, in backward, into
    (softmax - I) / B in place; autograd through `F.cross_entropy(logits / tau, arange)` would allocate the
    logits, their scaled copy, the log-softmax, a zero-filled one-hot gradient and two more B x B
    gradients (most of SLMRec's step time at B = 2048 on CPU). Single-use graph: backward consumes it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, anchors: Tensor, targets: Tensor, temperature: float
    ) -> Tensor:
        scaled = anchors / temperature
        probs = scaled @ targets.T
        positive = probs.diagonal().clone()
        row_max = probs.amax(dim=1, keepdim=True)
        total = probs.sub_(row_max).exp_().sum(dim=1, keepdim=True)
        probs.div_(total)
        ctx.save_for_backward(scaled, targets)
        ctx.probs, ctx.temperature = probs, temperature
        return (row_max.squeeze(1) + total.squeeze(1).log() - positive).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, Tensor, None]:
        scaled, targets = ctx.saved_tensors
        probs, ctx.probs = ctx.probs, None
        if probs is None:
            raise RuntimeError("the in-batch InfoNCE graph was already used for a backward pass")
        probs.diagonal().sub_(1.0)
        probs.mul_(grad / len(probs))
        return (probs @ targets).div_(ctx.temperature), probs.T @ scaled, None


def _infonce(anchors: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE loss of matching rows of `anchors` and `targets` [B, d] (see `_InBatchInfoNCE`)."""
    return _InBatchInfoNCE.apply(anchors, targets, temperature)


def in_batch_infonce(anchors: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE of matching rows of `anchors` and `targets` [B, d]: the mean cross-entropy of the
    logits (anchors / tau) targets^T against labels 0..B-1 (see `_InBatchInfoNCE`)."""
    return _InBatchInfoNCE.apply(anchors, targets, temperature)
