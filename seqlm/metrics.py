"""Token-weighted metrics and the n-gram baselines a network must beat.

Perplexity = exp(Σ NLL / Σ tokens) over every predicted token of a split, never a mean of
per-batch perplexities. 1 is perfect; a uniform guess over V tokens scores V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


@dataclass
class LossMeter:
    """Accumulates summed NLL and token counts; reports the token-weighted mean."""

    nll: float = 0.0
    tokens: int = 0

    def add(self, nll_sum: float, tokens: int) -> None:
        self.nll += float(nll_sum)
        self.tokens += int(tokens)

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    def report(self) -> dict:
        return summary(self.loss, self.tokens)


def perplexity(loss: float) -> float:
    """exp(mean NLL per token), ``inf`` past float range instead of an overflow error."""
    return math.exp(loss) if loss < 700 else float("inf")


def summary(loss: float, tokens: int) -> dict:
    """``loss`` (nats/token), ``ppl``, ``bits`` (bits/token) and ``tokens``."""
    return {"loss": loss, "ppl": perplexity(loss), "bits": loss / LN2, "tokens": tokens}


def unigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Mean NLL on ``test`` of add-one-smoothed unigram frequencies fitted on ``train``."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size) + 1.0
    logp = np.log(counts) - np.log(counts.sum())
    return float(-logp[np.asarray(test, dtype=np.int64)].mean())


def bigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int, k: float) -> float:
    """Mean NLL on ``test`` of an add-``k`` bigram model fitted on ``train``:
    P(b | a) = (c(a, b) + k) / (c(a) + k·V). The first test token is scored by the unigram."""
    V = vocab_size
    train = np.asarray(train, dtype=np.int64)
    test = np.asarray(test, dtype=np.int64)
    keys, pair_counts = np.unique(train[:-1] * V + train[1:], return_counts=True)
    context = np.bincount(train[:-1], minlength=V).astype(np.float64)
    query = test[:-1] * V + test[1:]
    pos = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
    found = (keys[pos] == query) if len(keys) else np.zeros(len(query), bool)
    c_ab = np.where(found, pair_counts[pos] if len(keys) else 0, 0)
    logp = np.log(c_ab + k) - np.log(context[test[:-1]] + k * V)
    first = unigram_nll(train, test[:1], V) if len(test) else 0.0
    return float((first - logp.sum()) / max(len(test), 1))


def ngram_baselines(train: np.ndarray, val: np.ndarray, vocab_size: int) -> dict:
    """Unigram and add-k bigram perplexities on ``val`` (k picked from a small grid on
    ``val``, which flatters the baseline: a network that beats it has learned more than
    counting). Falls back to the training split when ``val`` is empty."""
    target = val if len(val) > 1 else train
    uni = unigram_nll(train, target, vocab_size)
    best_k, best = min(((k, bigram_nll(train, target, vocab_size, k))
                        for k in (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)), key=lambda kv: kv[1])
    return {
        "split": "val" if target is val else "train",
        "unigram": summary(uni, len(target)),
        "bigram": {**summary(best, len(target)), "k": best_k},
    }
