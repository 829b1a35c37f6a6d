r"""The output layer for large vocabularies: an adaptive softmax (Grave et al., 2017).

A full decoder costs :math:`H \cdot V` multiply-adds for every predicted token, forward and
backward; with a 4,000-symbol Chinese text or a 19,000-word vocabulary that product outweighs
the recurrent cell several times over. The vocabulary ids are frequency-ranked
(:class:`seqlm.vocab.Vocab`), so the adaptive softmax splits them at ``cutoffs`` into a
*head* (the frequent ids plus one entry per tail cluster) and tail clusters of rarer ids,
each scored through a projection to ``H / 4^k`` dimensions. A token's probability is
``p(head entry) × p(token | its cluster)``: an exact, normalised distribution, so the
perplexity stays exact. Training scores only the head and the cluster each target is in.

:class:`AdaptiveDecoder` wraps :class:`torch.nn.AdaptiveLogSoftmaxWithLoss`;
:func:`choose_cutoffs` picks the cutoffs from the training counts and :func:`wants_adaptive`
is the ``output='auto'`` rule (both measured in docs/quality.md).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

HEAD_COVERAGE = 0.9  # the head holds the ids that make up this share of the training tokens
TAIL_COVERAGE = 0.99  # the first tail cluster ends where this share is reached
MIN_CLUSTER = 256  # no cluster (head or tail) smaller than this many ids
DIV_VALUE = 4.0  # cluster k is scored through an H / 4^k projection (torch's default)


def wants_adaptive(vocab_size: int, hidden_size: int, core_weights: int) -> bool:
    """The ``output='auto'`` rule: adaptive when a full decoder's ``H · V`` weights (its
    multiply-adds per token) outnumber the recurrent core's and the vocabulary can be split
    into a head and a tail of at least :data:`MIN_CLUSTER` ids each."""
    return vocab_size >= 2 * MIN_CLUSTER and hidden_size * vocab_size > core_weights


def choose_cutoffs(counts: np.ndarray | None, vocab_size: int) -> tuple[int, ...]:
    """Cluster boundaries for ``vocab_size`` frequency-ranked ids.

    Args:
        counts: (V,) occurrences of each id in the training split, or None to split by rank
            alone (as if the counts fell off as 1/rank).

    Returns:
        Increasing cutoffs in ``(0, V - 1)``: the head ends where :data:`HEAD_COVERAGE` of the
        tokens are covered, one tail cluster more ends at :data:`TAIL_COVERAGE` when both the
        cluster and the rest hold :data:`MIN_CLUSTER` ids or more.
    """
    if vocab_size < 2 * MIN_CLUSTER:  # an explicit 'adaptive' on a small vocabulary
        return (vocab_size // 2,) if vocab_size >= 4 else ()
    if counts is None:
        counts = 1.0 / np.arange(1, vocab_size + 1)
    counts = np.asarray(counts, dtype=np.float64)[:vocab_size]
    # ranked by the counts given (the vocabulary's own order, <unk> and reserved tokens first,
    # is already by frequency apart from them)
    share = np.cumsum(np.sort(counts)[::-1]) / max(counts.sum(), 1.0)
    head = int(np.searchsorted(share, HEAD_COVERAGE)) + 1
    head = min(max(head, MIN_CLUSTER), vocab_size - MIN_CLUSTER)
    cutoffs = [head]
    tail = int(np.searchsorted(share, TAIL_COVERAGE)) + 1
    if tail - head >= MIN_CLUSTER and vocab_size - tail >= MIN_CLUSTER:
        cutoffs.append(tail)
    return tuple(cutoffs)


class AdaptiveDecoder(nn.Module):
    """Hidden states → log-probabilities over V ids, through an adaptive softmax.

    Args:
        hidden_size: H.
        vocab_size: V.
        cutoffs: increasing cluster boundaries in ``(0, V)`` (:func:`choose_cutoffs`).
    """

    def __init__(self, hidden_size: int, vocab_size: int, cutoffs: tuple[int, ...]) -> None:
        super().__init__()
        self.cutoffs = tuple(cutoffs)
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, list(cutoffs),
                                                     div_value=DIV_VALUE, head_bias=True)

    def forward(self, h: Tensor) -> Tensor:
        """(..., V) log-probabilities of hidden states (..., H): every cluster scored."""
        flat = h.reshape(-1, h.shape[-1])
        return self.softmax.log_prob(flat).view(*h.shape[:-1], -1)

    def nll(self, h: Tensor, targets: Tensor) -> Tensor:
        """Summed negative log-likelihood of (N,) ``targets`` under (N, H) hidden states,
        scoring only the head and each target's cluster."""
        return -self.softmax(h, targets).output.sum()

    @property
    def reference(self) -> Tensor:
        """A parameter, for the layer's device and dtype."""
        return self.softmax.head.weight

