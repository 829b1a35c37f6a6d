"""``seqlm prepare``: encode a corpus once into memory-mappable arrays, in bounded memory.

The text is never held whole. Files are read a block at a time, three times over:

1. cleaning and counting the characters (the split fractions need the length);
2. fitting the tokenizer on the training part, chunk by chunk;
3. encoding every part, each chunk's ids written straight to its split's ``.npy``.

Memory is bounded by the block and chunk sizes and the tokenizer's tables, not by the
corpus; the result equals :func:`seqlm.data.build_corpus` of the whole text (the same
vocabulary, ids and out-of-vocabulary rates). Standard input, named corpora and UTF-16/32
files are read whole (stdin cannot be read twice; the named ones are small).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import groupby, takewhile
from pathlib import Path

from seqlm.config import DataConfig
from seqlm.data import (SPLITS, Corpus, check_prepared_target, empty_training_split,
                        is_prepared, nothing_left, split_pieces, write_prepared)
from seqlm.text import CORPORA, clean_pieces, read_corpus, read_pieces
from seqlm.tokenize import fit_tokenizer

_COPY_TOKENS = 1 << 24  # ids copied at a time when the source is already prepared


def prepare_corpus(cfg: DataConfig, out: str | Path, *, overwrite: bool = False,
                   block: int | None = None) -> Corpus:
    """Writes the corpus ``cfg`` describes to ``out`` as a prepared corpus.

    Args:
        cfg: corpus, encoding, cleaning, tokenizer options, split and max_tokens.
        out: the directory to write (see :func:`seqlm.data.write_prepared`).
        overwrite: replace an existing prepared corpus at ``out``.
        block: bytes of a file read at a time (default: :func:`seqlm.text.read_pieces`'s).

    Returns:
        The prepared corpus, memory-mapped from ``out``.

    Raises:
        ConfigError: ``out`` exists (without ``overwrite``) or is not a prepared corpus.
        CorpusError: as :func:`seqlm.text.read_corpus`; nothing is left after cleaning; the
            training part is empty; ``out`` cannot be written.
    """
    check_prepared_target(out, overwrite=overwrite)
    if is_prepared(cfg.corpus):  # already prepared: copy its arrays a slice at a time
        source = Corpus.load(cfg.corpus)
        arrays = ((name, ids[i:i + _COPY_TOKENS]) for name, ids in source.splits.items()
                  for i in range(0, len(ids), _COPY_TOKENS))
        write_prepared(out, source.tokenizer, arrays, overwrite=overwrite,
                       max_tokens=cfg.max_tokens)
        return Corpus.load(out)
    text = _source(cfg, block)
    length = _cleaned_length(cfg, text)
    fractions = cfg.split_fractions()

    def parts() -> Iterator[tuple[int, str]]:
        return split_pieces(clean_pieces(text(), cfg.clean), length, fractions)

    train = _NonBlank(piece for _, piece in takewhile(lambda p: p[0] == 0, parts()))
    tokenizer = fit_tokenizer(cfg.tokenizer, train, **cfg.tokenizer_options())
    if not train.seen:
        raise empty_training_split()
    arrays = ((SPLITS[part], ids) for part, pieces in groupby(parts(), key=lambda p: p[0])
              for ids in tokenizer.encode_pieces(piece for _, piece in pieces))
    write_prepared(out, tokenizer, arrays, overwrite=overwrite, max_tokens=cfg.max_tokens)
    return Corpus.load(out)


def _source(cfg: DataConfig, block: int | None) -> Callable[[], Iterable[str]]:
    """A function that reads the text again each time it is called."""
    if cfg.corpus == "-" or cfg.corpus in CORPORA:
        whole = read_corpus(cfg.corpus, encoding=cfg.encoding)
        return lambda: (whole,)
    size = {} if block is None else {"block": block}
    return lambda: read_pieces(cfg.corpus, encoding=cfg.encoding, **size)


def _cleaned_length(cfg: DataConfig, text: Callable[[], Iterable[str]]) -> int:
    """Characters of the cleaned text (the first pass).

    Raises:
        CorpusError: as :func:`seqlm.data.load_corpus` when the cleaning left nothing.
    """
    cleaned = _NonBlank(clean_pieces(text(), cfg.clean))
    length = sum(len(piece) for piece in cleaned)
    if not cleaned.seen:
        raise nothing_left(cfg)
    return length


class _NonBlank:
    """Passes pieces of text through and notes whether any was more than whitespace."""

    def __init__(self, pieces: Iterable[str]) -> None:
        self.pieces, self.seen = pieces, False

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces:
            self.seen = self.seen or (bool(piece) and not piece.isspace())
            yield piece
