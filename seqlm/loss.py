"""Cross-entropy of next-token logits, computed a block of rows at a time.

For a word model the logits are large (35 x 32 positions x 5,000 words = 22 MB of float32),
and torch's ``F.cross_entropy`` passes over them several times: ``log_softmax`` writes a
second tensor as large, the backward pass first fills a zero tensor as large for the NLL
gradient, then ``log_softmax``'s backward reads both. This function reads the logits once
for the loss (a log-sum-exp per row) and writes the gradient once (softmax minus the one-hot
target, scaled), each over blocks of rows small enough to stay in cache, and equals
``F.cross_entropy`` to float rounding. With few classes the rows are short and torch's fused
kernel wins, so below ``BLOCKWISE_MIN_VOCAB`` classes the call goes to torch (the timings
behind both choices are in docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_ELEMENTS = 1 << 20  # logits per block: 256 rows of a 4,096-word vocabulary
BLOCKWISE_MIN_VOCAB = 2048  # fewer classes: F.cross_entropy is as fast or faster


class _CrossEntropy(torch.autograd.Function):
    """Summed cross-entropy; the gradient is softmax(logits) − onehot(targets) per row."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        rows = max(1, BLOCK_ELEMENTS // logits.shape[1])
        lse = logits.new_empty(logits.shape[0])
        for start in range(0, logits.shape[0], rows):
            torch.logsumexp(logits[start:start + rows], dim=1, out=lse[start:start + rows])
        picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(logits, targets)
        ctx.rows = rows
        return (lse - picked).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        logits, targets = ctx.saved_tensors
        out = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            block = out[start:start + ctx.rows]
            torch.softmax(logits[start:start + ctx.rows], dim=1, out=block)
            block.mul_(grad)
        rows = torch.arange(logits.shape[0], device=logits.device)
        out[rows, targets] -= grad
        return out, None


def cross_entropy(logits: Tensor, targets: Tensor, *, reduction: str = "mean") -> Tensor:
    """``F.cross_entropy(logits, targets, reduction=...)`` for 2-D float logits.

    Args:
        logits: (N, V) unnormalised scores (float32 or float64).
        targets: (N,) int64 class ids in ``[0, V)``.
        reduction: ``'mean'`` or ``'sum'``.

    Raises:
        ValueError: another reduction, or shapes that do not pair up.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: use 'mean' or 'sum'")
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if logits.shape[1] < BLOCKWISE_MIN_VOCAB:
        return F.cross_entropy(logits, targets, reduction=reduction)
    total = _CrossEntropy.apply(logits, targets)
    return total / logits.shape[0] if reduction == "mean" else total
