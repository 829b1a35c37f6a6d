r"""The neural cache (Grave, Joulin & Usunier 2017, "Improving neural language models with a
continuous cache"): a trained model's recent hidden states, with the tokens that followed
them, mixed into its next-token distribution.

The top layer's hidden state :math:`h_i` (the decoder's input) after each token is remembered
with the token :math:`x_{i+1}` that followed it, for the last ``size`` positions. The token
after :math:`h_t` then has the cache distribution and the mixture

.. math::

    p_\mathrm{cache}(w) \propto \sum_{i \in [t - \mathrm{size}, t)} 1[x_{i+1} = w]\,
        \exp(\theta\, h_t \cdot h_i), \qquad
    p(w) = (1 - \lambda)\, p_\mathrm{model}(w) + \lambda\, p_\mathrm{cache}(w).

A token seen after a state like the present one becomes likelier: a name the model finds
surprising the first time is expected the second. θ sets how sharply the cache prefers the
most similar states (θ = 0 would count every remembered token alike); λ how much it is
trusted. Every position of a segment sees the earlier positions of the same segment, so the
result does not depend on how the text is cut. While the cache is empty (the first token
read), :math:`p = p_\mathrm{model}`. Nothing is learned: no weight changes.

Shapes: B rows read side by side, T positions of a segment, H hidden units, V the
vocabulary, K values of θ, S ≤ ``size`` remembered positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seqlm.errors import check_positive_int, check_range, field_error

QUERY_BLOCK = 512  # positions scored against the cache at a time: bounds the (B, block, S)


@dataclass(frozen=True)
class CacheSettings:
    """The neural cache: ``size`` positions remembered, mixing weight ``lam`` (λ) and
    flatness ``theta`` (θ).

    Raises:
        ConfigError: ``size`` not a positive integer, ``lam`` outside [0, 1), ``theta`` not
            a positive finite number.
    """

    size: int
    lam: float
    theta: float

    def __post_init__(self) -> None:
        check_positive_int("cache", self.size)
        check_range("lam", self.lam, "in [0, 1) (the cache's share of the mixture)",
                     below=1.0)
        check_range("theta", self.theta, "a positive number (the cache's flatness)",
                     below=math.inf)
        if self.theta == 0:
            raise field_error("theta", self.theta, "a positive number (the cache's flatness)")


class NeuralCache:
    """The remembered ``(h_i, x_{i+1})`` pairs of B rows: keys (B, S, H) and values (B, S),
    S ≤ ``size`` (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.values is None else self.values.shape[1]

    def _blocks(self, h: Tensor, targets: Tensor) -> Iterator[tuple]:
        """For each block of queries that has keys: ``(start, stop, scores (B, n, k),
        visible (n, k), values (B, k))``: the dot products of h_t with the keys position t
        may see."""
        q = h.transpose(0, 1)  # (B, T, H)
        keys, values = self._joined(q, targets.t())
        M, T = len(self), h.shape[0]
        for start in range(0, T, QUERY_BLOCK):
            stop = min(T, start + QUERY_BLOCK)
            lo, hi = max(0, M + start - self.size), M + stop - 1
            if hi <= lo:
                continue  # nothing remembered yet
            pos = torch.arange(M + start, M + stop, device=h.device)[:, None]
            key = torch.arange(lo, hi, device=h.device)[None, :]
            visible = (key < pos) & (key >= pos - self.size)
            scores = torch.bmm(q[:, start:stop], keys[:, lo:hi].transpose(1, 2))
            yield start, stop, scores, visible, values[:, lo:hi]

    def _joined(self, q: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys is None:
            return q, targets
        return torch.cat([self.keys, q], 1), torch.cat([self.values, targets], 1)

    def filled(self, T: int) -> Tensor:
        """(T,) bool: position t of the next segment finds the cache non-empty."""
        return torch.arange(len(self), len(self) + T) > 0

    def target_logprobs(self, h: Tensor, targets: Tensor, thetas: tuple[float, ...]) -> Tensor:
        """log p_cache(targets_t | h_t) for each θ: (K, T, B) float32 (−inf where no
        visible entry holds the target, and where the cache is empty).

        Args:
            h: (T, B, H) the segment's top-layer states; targets: (T, B) the tokens after.
        """
        T, B = targets.shape
        out = h.new_full((len(thetas), B, T), -math.inf, dtype=torch.float32)
        for start, stop, scores, visible, values in self._blocks(h, targets):
            match = values[:, None, :] == targets.t()[:, start:stop, None]  # (B, n, k)
            scores = scores.float().masked_fill(~visible, -math.inf)
            top = scores.amax(-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
            for j, theta in enumerate(thetas):
                weights = torch.exp(theta * (scores - top))  # 0 where not visible
                total, hit = weights.sum(-1), (weights * match).sum(-1)
                out[j, :, start:stop] = torch.where(total > 0, hit.log() - total.log(),
                                                    -math.inf)
        return out.transpose(1, 2)

    def log_distribution(self, h: Tensor, targets: Tensor, theta: float,
                         vocab_size: int) -> Tensor:
        """(T, B, V) float64 log p_cache over the vocabulary at each position (−inf for
        tokens no visible entry holds; all −inf where the cache is empty)."""
        T, B = targets.shape
        probs = torch.zeros(B, T, vocab_size, dtype=torch.float64, device=h.device)
        for start, stop, scores, visible, values in self._blocks(h, targets):
            z = (theta * scores.double()).masked_fill(~visible, -math.inf)
            weights = torch.softmax(z, -1).nan_to_num(0.0)  # an empty cache: all zero
            index = values[:, None, :].expand(-1, stop - start, -1)
            probs[:, start:stop].scatter_add_(-1, index, weights)
        return probs.log().transpose(0, 1)

    def append(self, h: Tensor, targets: Tensor) -> None:
        """Remember the (T, B, H) states with the (T, B) tokens that followed them."""
        keys, values = self._joined(h.detach().transpose(0, 1), targets.t())
        self.keys, self.values = keys[:, -self.size:], values[:, -self.size:]



def mix(model_logprobs: np.ndarray, cache_logprobs: np.ndarray, filled: np.ndarray,
        lam: float) -> np.ndarray:
    """log((1 − λ) p_model + λ p_cache), elementwise; the model's own where the cache was
    empty (``filled`` False). λ = 0 returns the model's log-probabilities exactly."""
    if lam == 0:
        return np.array(model_logprobs, dtype=np.float64)
    mixed = np.logaddexp(math.log1p(-lam) + model_logprobs, math.log(lam) + cache_logprobs)
    return np.where(filled, mixed, model_logprobs)
