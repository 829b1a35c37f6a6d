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


BASELINE_TOKENS = 1 << 24  # baselines fit and score at most this many tokens of a split
_COUNT_CHUNK = 1 << 20  # training tokens counted at a time


class _Counts:
    """What the n-gram baselines need from ``train``, counted a chunk at a time (a
    memory-mapped split is never copied whole): unigram counts, the context counts c(a) over
    ``train[:-1]``, and c(a, b) for each distinct bigram of ``test`` (the only pairs scored).
    """

    def __init__(self, train: np.ndarray, test: np.ndarray, vocab_size: int) -> None:
        V, test = vocab_size, np.asarray(test, dtype=np.int64)
        self.keys, self.inverse = np.unique(test[:-1] * V + test[1:], return_inverse=True)
        self.unigram = np.zeros(V, dtype=np.int64)
        self.context = np.zeros(V, dtype=np.int64)
        self.pairs = np.zeros(len(self.keys), dtype=np.int64)
        for start in range(0, len(train), _COUNT_CHUNK):
            block = np.asarray(train[start:start + _COUNT_CHUNK + 1], dtype=np.int64)
            self.unigram += np.bincount(block[:_COUNT_CHUNK], minlength=V)
            a, b = block[:-1], block[1:]  # the pairs that start in this chunk
            self.context += np.bincount(a, minlength=V)
            if len(self.keys):
                keys = a * V + b
                pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
                hit = self.keys[pos] == keys
                self.pairs += np.bincount(pos[hit], minlength=len(self.keys))

    def unigram_logp(self) -> np.ndarray:
        counts = self.unigram + 1.0
        return np.log(counts) - np.log(counts.sum())

    def bigram_nll(self, test: np.ndarray, k: float) -> float:
        V = len(self.context)
        test = np.asarray(test, dtype=np.int64)
        logp = (np.log(self.pairs[self.inverse] + k)
                - np.log(self.context[test[:-1]].astype(np.float64) + k * V))
        first = -float(self.unigram_logp()[test[0]]) if len(test) else 0.0
        return float((first - logp.sum()) / max(len(test), 1))


def unigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Mean NLL on ``test`` of add-one-smoothed unigram frequencies fitted on ``train``."""
    logp = _Counts(train, test[:0], vocab_size).unigram_logp()
    return float(-logp[np.asarray(test, dtype=np.int64)].mean())


def bigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int, k: float) -> float:
    """Mean NLL on ``test`` of an add-``k`` bigram model fitted on ``train``:
    P(b | a) = (c(a, b) + k) / (c(a) + k·V). The first test token is scored by the unigram."""
    return _Counts(train, test, vocab_size).bigram_nll(test, k)


def ngram_baselines(train: np.ndarray, val: np.ndarray, vocab_size: int, *,
                    max_tokens: int = BASELINE_TOKENS) -> dict:
    """Unigram and add-k bigram perplexities on ``val`` (k picked from a small grid on
    ``val``, which flatters the baseline: a network that beats it has learned more than
    counting). Falls back to the training split when ``val`` is empty.

    Both models are fitted on the first ``max_tokens`` training tokens and scored on the
    first ``max_tokens`` tokens of the target (every token of ordinary corpora), so a
    memory-mapped corpus of any size costs bounded time and memory; ``"fit_tokens"`` says
    how many were fitted on and each model's ``"tokens"`` how many were scored.
    """
    target = val if len(val) > 1 else train
    split = "val" if target is val else "train"
    fit, target = train[:max_tokens], np.asarray(target[:max_tokens], dtype=np.int64)
    counts = _Counts(fit, target, vocab_size)
    uni = float(-counts.unigram_logp()[target].mean())
    best_k, best = min(((k, counts.bigram_nll(target, k))
                        for k in (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)), key=lambda kv: kv[1])
    return {
        "split": split,
        "fit_tokens": len(fit),
        "unigram": summary(uni, len(target)),
        "bigram": {**summary(best, len(target)), "k": best_k},
    }
