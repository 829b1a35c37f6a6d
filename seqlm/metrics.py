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
BIGRAM_K = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)  # the add-k grid of the bigram baseline
_CHUNK = 1 << 20  # tokens counted or scored at a time


def _chunks(tokens: np.ndarray):
    """``(block, own)``: ``tokens`` a chunk at a time as int64, each block with the next
    one's first token (so every bigram lies in exactly one block) and ``own`` the tokens
    that are its alone; a memory-mapped split is never copied whole."""
    for start in range(0, max(len(tokens) - 1, 1), _CHUNK):
        block = np.asarray(tokens[start:start + _CHUNK + 1], dtype=np.int64)
        yield block, block if start + _CHUNK >= len(tokens) - 1 else block[:-1]


def ngram_nlls(train: np.ndarray, test: np.ndarray, vocab_size: int,
               ks: tuple[float, ...] = BIGRAM_K) -> tuple[float, dict[float, float]]:
    """Mean NLL on ``test`` of the add-one unigram model and of the add-``k`` bigram models
    P(b | a) = (c(a, b) + k) / (c(a) + k·V) fitted on ``train`` (the bigram scores the first
    test token with the unigram), in one pass over each split, a chunk at a time.

    Returns:
        ``(unigram NLL, {k: bigram NLL})``.
    """
    V = vocab_size
    keys = np.zeros(0, dtype=np.int64)  # the distinct bigrams of test: the only ones scored
    for block, _ in _chunks(test):
        keys = np.union1d(keys, block[:-1] * V + block[1:])
    unigram, context = np.zeros(V, dtype=np.int64), np.zeros(V, dtype=np.int64)
    pairs = np.zeros(len(keys), dtype=np.int64)
    for block, own in _chunks(train):
        unigram += np.bincount(own, minlength=V)
        a, b = block[:-1], block[1:]
        context += np.bincount(a, minlength=V)
        if len(keys):
            query = a * V + b
            pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
            hit = keys[pos] == query
            pairs += np.bincount(pos[hit], minlength=len(keys))
    logp_unigram = np.log(unigram + 1.0) - np.log(unigram.sum() + V)
    uni_sum, bigram_sum = 0.0, dict.fromkeys(ks, 0.0)
    for block, own in _chunks(test):
        uni_sum -= float(logp_unigram[own].sum())
        if len(block) < 2:
            continue
        c_ab = pairs[np.searchsorted(keys, block[:-1] * V + block[1:])]
        c_a = context[block[:-1]].astype(np.float64)
        for k in ks:
            bigram_sum[k] += float((np.log(c_ab + k) - np.log(c_a + k * V)).sum())
    n = len(test)
    first = -float(logp_unigram[int(test[0])]) if n else 0.0
    return (uni_sum / n if n else float("nan"),
            {k: (first - total) / max(n, 1) for k, total in bigram_sum.items()})


def unigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Mean NLL on ``test`` of add-one-smoothed unigram frequencies fitted on ``train``."""
    return ngram_nlls(train, test, vocab_size, ks=())[0]


def bigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int, k: float) -> float:
    """Mean NLL on ``test`` of an add-``k`` bigram model fitted on ``train``:
    P(b | a) = (c(a, b) + k) / (c(a) + k·V). The first test token is scored by the unigram."""
    return ngram_nlls(train, test, vocab_size, ks=(k,))[1][k]


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
    fit, target = train[:max_tokens], target[:max_tokens]
    uni, bigram = ngram_nlls(fit, target, vocab_size)
    best_k = min(bigram, key=bigram.get)
    return {
        "split": split,
        "fit_tokens": len(fit),
        "unigram": summary(uni, len(target)),
        "bigram": {**summary(bigram[best_k], len(target)), "k": best_k},
    }
