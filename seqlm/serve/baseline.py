"""The bigram baseline, token by token: where a network beats counting and where it loses.

``seqlm train`` reports the add-k bigram perplexity of the validation split
(:func:`seqlm.metrics.ngram_baselines`, k chosen there on a small grid). The score tab needs
the same model's probability of each token of any text, so this fits the counts once on the
run's training split and looks bigrams up in them.
"""

from __future__ import annotations

import numpy as np

from seqlm.config import DataConfig
from seqlm.data import load_corpus
from seqlm.errors import CorpusError
from seqlm.metrics import BASELINE_TOKENS, ngram_baselines


class Bigram:
    """P(b | a) = (c(a, b) + k) / (c(a) + k·V) with counts from ``train``.

    Args:
        train: (n,) token ids the counts come from.
        vocab_size: V.
        k: the add-k smoothing constant.
    """

    def __init__(self, train: np.ndarray, vocab_size: int, k: float) -> None:
        ids = np.asarray(train, dtype=np.int64)
        self.vocab_size, self.k = vocab_size, k
        self.keys, self.pairs = np.unique(ids[:-1] * vocab_size + ids[1:], return_counts=True)
        self.context = np.bincount(ids[:-1], minlength=vocab_size)

    def logprobs(self, ids: np.ndarray) -> np.ndarray:
        """(n,) natural-log probability of each token given the one before; NaN for the first."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(len(ids), np.nan)
        if len(ids) < 2 or not len(self.keys):
            return out
        query = ids[:-1] * self.vocab_size + ids[1:]
        pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        c_ab = np.where(self.keys[pos] == query, self.pairs[pos], 0)
        out[1:] = (np.log(c_ab + self.k)
                   - np.log(self.context[ids[:-1]] + self.k * self.vocab_size))
        return out


def fit_bigram(config: dict, tokenizer) -> Bigram:
    """The bigram baseline of a run, from the corpus named in its saved config.

    Raises:
        CorpusError: the corpus cannot be read any more (moved), or the checkpoint does not
            name one (saved without a data section).
        TypeError: the config has no data section a :class:`DataConfig` accepts.
    """
    if not isinstance(config.get("data"), dict):
        raise CorpusError("the checkpoint does not say which corpus it was trained on")
    data = DataConfig(**config["data"])
    splits = load_corpus(data, tokenizer=tokenizer).splits  # the run's split, its vocabulary
    train, val = splits["train"], splits.get("val", np.zeros(0, np.int64))
    train, val = train[:BASELINE_TOKENS], val[:BASELINE_TOKENS]
    vocab_size = len(tokenizer.vocab)
    k = ngram_baselines(train, val, vocab_size)["bigram"]["k"]
    return Bigram(train, vocab_size, k)
