"""Corpus statistics: n-gram frequency tables and Zipf's law, as in the chapter's figure.

Counting is done on token indices with numpy (an n-gram is one integer key), so a large corpus
is counted in seconds rather than through a Python ``Counter`` of tuples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqlm.vocab import Vocab


@dataclass
class NgramTable:
    """Counts of the ``n``-grams of a token stream, most frequent first."""

    n: int
    keys: np.ndarray  # (K, n) token indices
    counts: np.ndarray  # (K,) descending

    def top(self, vocab: Vocab, k: int = 10) -> list[tuple[list[str], int]]:
        return [(vocab.decode(key), int(c)) for key, c in zip(self.keys[:k], self.counts[:k])]


def ngram_counts(ids: np.ndarray, n: int, vocab_size: int) -> NgramTable:
    """Counts every ``n``-gram of ``ids`` (ties in first-index order of the key)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < n:
        return NgramTable(n, np.zeros((0, n), np.int64), np.zeros(0, np.int64))
    key = ids[: len(ids) - n + 1].copy()
    for j in range(1, n):
        key = key * vocab_size + ids[j: len(ids) - n + 1 + j]
    uniq, counts = np.unique(key, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    uniq, counts = uniq[order], counts[order]
    digits = np.empty((len(uniq), n), dtype=np.int64)
    for j in range(n - 1, -1, -1):
        digits[:, j] = uniq % vocab_size
        uniq = uniq // vocab_size
    return NgramTable(n, digits, counts)


def zipf_exponent(counts: np.ndarray, min_count: int = 2) -> float:
    """The exponent ``s`` of Zipf's law ``f(r) ∝ r^(-s)``, from a least-squares line through
    ``(log r, log f)`` over the ranks whose count is at least ``min_count`` (the single-count
    tail is a flat step that would bias the slope)."""
    counts = np.asarray(counts, dtype=np.float64)
    ranks = np.arange(1, len(counts) + 1, dtype=np.float64)
    keep = counts >= min_count
    if keep.sum() < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(ranks[keep]), np.log(counts[keep]), 1)
    return float(-slope)


def corpus_stats(ids: np.ndarray, vocab: Vocab, *, top: int = 10) -> dict:
    """Token and type counts, the most frequent 1/2/3-grams and their Zipf exponents.

    Returns:
        A JSON-serialisable dict; ``tables`` holds the :class:`NgramTable` objects for plotting
        under the key ``"_tables"`` (remove it before serialising).
    """
    V = len(vocab)
    tables = {n: ngram_counts(ids, n, V) for n in (1, 2, 3)}
    names = {1: "unigrams", 2: "bigrams", 3: "trigrams"}
    out: dict = {"tokens": int(len(ids)), "vocab_size": V,
                 "types_seen": int(len(tables[1].counts)),
                 "unk_rate": float(np.mean(np.asarray(ids) == 0)) if len(ids) else 0.0}
    for n, table in tables.items():
        out[names[n]] = {
            "distinct": int(len(table.counts)),
            "zipf_exponent": zipf_exponent(table.counts),
            "top": [{"tokens": toks, "count": c} for toks, c in table.top(vocab, top)],
        }
    out["_tables"] = tables
    return out


def plot_frequencies(tables: dict[int, NgramTable], path, *, title: str = "") -> None:
    """The chapter's figure: n-gram frequency against rank on log-log axes, n = 1, 2, 3."""
    from seqlm.plots import new_figure, save_figure

    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for n, table in sorted(tables.items()):
        ranks = np.arange(1, len(table.counts) + 1)
        ax.loglog(ranks, table.counts, label=f"{n}-gram")
    ax.set_xlabel("rank (log)")
    ax.set_ylabel("frequency (log)")
    ax.set_title(title or "n-gram frequencies")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
