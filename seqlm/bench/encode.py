"""Data-pipeline throughput: encode MB/s and peak memory on a synthetic English-like text.

The text is built block by block with numpy, reproducibly from a seed: 20,000 word types of
1–10 lowercase letters drawn with Zipf-like frequencies (p ∝ 1/rank), separated by a space,
", ", ". " or a newline. Every block is drawn afresh, so no tokenizer can profit from
repetition.
"""

from __future__ import annotations

import time

import numpy as np

from seqlm.bench.timing import PeakMemory
from seqlm.tokenize import fit_tokenizer

WORD_TYPES = 20_000
SEPARATORS = (" ", ", ", ". ", "\n")
SEPARATOR_P = (0.86, 0.06, 0.04, 0.04)
BLOCK_BYTES = 1 << 22
FIT_CHARS = 2_000_000  # the vocabulary is built on the first 2 M characters


def _pieces(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (word, separator) pair as bytes in one array, with offsets and lengths."""
    lengths = rng.integers(1, 11, size=WORD_TYPES)
    letters = rng.integers(ord("a"), ord("z") + 1, size=int(lengths.sum()), dtype=np.uint8)
    words = np.split(letters, np.cumsum(lengths)[:-1])
    seps = [np.frombuffer(s.encode(), dtype=np.uint8) for s in SEPARATORS]
    pieces = [np.concatenate([w, s]) for s in seps for w in words]  # index: sep * W + word
    sizes = np.array([len(p) for p in pieces])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.concatenate(pieces), offsets, sizes


def synthetic_text(n_bytes: int, seed: int = 0) -> str:
    """About ``n_bytes`` of ASCII text (see the module docstring); deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    table, offsets, sizes = _pieces(rng)
    rank_p = 1.0 / np.arange(1, WORD_TYPES + 1)
    rank_p /= rank_p.sum()
    mean_piece = float((sizes[:WORD_TYPES] * rank_p).sum()) + 1.2
    blocks, total = [], 0
    while total < n_bytes:
        count = max(1, int(min(BLOCK_BYTES, n_bytes - total) / mean_piece))
        piece = (rng.choice(len(SEPARATORS), size=count, p=SEPARATOR_P) * WORD_TYPES
                 + rng.choice(WORD_TYPES, size=count, p=rank_p))
        lens = sizes[piece]
        starts = np.repeat(np.cumsum(lens) - lens, lens)
        index = np.repeat(offsets[piece], lens) + np.arange(int(lens.sum())) - starts
        blocks.append(table[index].tobytes().decode("ascii"))
        total += len(blocks[-1])
    return "".join(blocks)


def encode_throughput(kind: str, text: str) -> dict:
    """Encode ``text`` once with a ``kind`` tokenizer fitted on its first 2 M characters.

    Returns:
        ``{"tokenizer", "text_mb", "tokens", "vocab_size", "seconds", "mb_per_s", "peak_mb",
        "peak_ratio"}``: ``peak_mb`` is the memory the encoding needed above what was
        resident before it (its output included; Linux only, else None), and
        ``peak_ratio`` = (text + ``peak_mb``) / text, the quantity the issue bounds by 4.
    """
    tokenizer = fit_tokenizer(kind, text[:FIT_CHARS])
    text_mb = (len(text) if text.isascii() else len(text.encode("utf-8"))) / 1e6
    with PeakMemory() as watch:
        start = time.perf_counter()
        ids = tokenizer.encode(text)
        seconds = time.perf_counter() - start
    return {"tokenizer": kind, "text_mb": text_mb, "tokens": int(len(ids)),
            "vocab_size": len(tokenizer.vocab), "seconds": seconds,
            "mb_per_s": text_mb / seconds, "peak_mb": watch.mb,
            "peak_ratio": None if watch.mb is None else (text_mb + watch.mb) / text_mb}
