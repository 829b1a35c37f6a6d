"""What the playground knows from a run's corpus: the bigram baseline token by token, the
baselines' perplexities, the splits' sizes and texts of the validation split.

``seqlm train`` reports the unigram and add-k bigram perplexities of the validation split
(:func:`seqlm.metrics.ngram_baselines`, k chosen there on a small grid). The score tab needs
the same bigram's probability of each token of any text, so this fits the counts once on the
run's training split and looks bigrams up in them; the model card shows the perplexities and
the page's default texts come from the validation split, which the model never trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from seqlm.config import DataConfig
from seqlm.data import load_corpus
from seqlm.errors import CorpusError
from seqlm.metrics import BASELINE_TOKENS, ngram_baselines

EXAMPLE_CHARS = {"prefix": 40, "state": 160, "time": 260, "score": 400}  # per tab
SENTENCE_END = re.compile(r"[.!?。！？…]+[\"'”’」』)）]*\s*")


class Bigram:
    """P(b | a) = (c(a, b) + k) / (c(a) + k·V) with counts from ``train``; the first token of a
    text, which has no token before it, by the add-one unigram (c(b) + 1) / (n + V), as
    :func:`seqlm.metrics.ngram_nlls` scores it.

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
        counts = np.bincount(ids, minlength=vocab_size)
        self.unigram = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)

    def logprobs(self, ids: np.ndarray) -> np.ndarray:
        """(n,) natural-log probability of each token given the one before (the first by
        the unigram)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(len(ids), np.nan)
        if not len(ids):
            return out
        out[0] = self.unigram[ids[0]]
        if len(ids) < 2:
            return out
        query = ids[:-1] * self.vocab_size + ids[1:]
        c_ab = np.zeros(len(query), dtype=np.int64)
        if len(self.keys):
            pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
            c_ab = np.where(self.keys[pos] == query, self.pairs[pos], 0)
        out[1:] = (np.log(c_ab + self.k)
                   - np.log(self.context[ids[:-1]] + self.k * self.vocab_size))
        return out


@dataclass
class CorpusFacts:
    """A run's corpus as the playground uses it.

    Attributes:
        bigram: the per-token bigram baseline.
        baselines: :func:`seqlm.metrics.ngram_baselines` of the run's splits.
        sizes: tokens per split.
        examples: text of the validation split for each tab (:data:`EXAMPLE_CHARS`).
    """

    bigram: Bigram
    baselines: dict
    sizes: dict[str, int]
    examples: dict[str, str]


def corpus_facts(config: dict, tokenizer) -> CorpusFacts:
    """The corpus facts of a run, from the corpus named in its saved config.

    Raises:
        CorpusError: the corpus cannot be read any more (moved), or the config does not
            name one (a checkpoint saved without a data section).
        TypeError: the config has no data section a :class:`DataConfig` accepts.
    """
    if not isinstance(config.get("data"), dict):
        raise CorpusError("the checkpoint does not say which corpus it was trained on")
    data = DataConfig(**config["data"])
    splits = load_corpus(data, tokenizer=tokenizer).splits  # the run's split, its vocabulary
    train, val = splits["train"], splits.get("val", np.zeros(0, np.int64))
    vocab_size = len(tokenizer.vocab)
    baselines = ngram_baselines(train[:BASELINE_TOKENS], val[:BASELINE_TOKENS], vocab_size)
    source = val if len(val) > 1 else train
    text = tokenizer.decode([int(i) for i in source[:4000]])
    return CorpusFacts(Bigram(train[:BASELINE_TOKENS], vocab_size,
                              baselines["bigram"]["k"]), baselines,
                       {name: int(len(ids)) for name, ids in splits.items()},
                       examples(text, word_spaced=tokenizer.kind != "char" or " " in text))


def examples(text: str, *, word_spaced: bool = True) -> dict[str, str]:
    """A text for each tab, cut from ``text``: from the start of its first whole sentence,
    at most :data:`EXAMPLE_CHARS` characters, ended at a space where the text has spaces."""
    first = SENTENCE_END.search(text[:400])
    start = text[first.end():] if first and len(text) - first.end() > 100 else text
    start = start.lstrip()
    out = {}
    for tab, limit in EXAMPLE_CHARS.items():
        piece = start[:limit]
        if word_spaced and len(start) > limit and " " in piece[limit // 2:]:
            piece = piece[:piece.rindex(" ")]
        out[tab] = piece if tab != "prefix" else piece.rstrip() + (" " if word_spaced else "")
    return out
