"""Language-model data: the corpus as token arrays, its splits, and prepared corpora.

A corpus is read and cleaned (:mod:`seqlm.text`), split contiguously into train / validation /
test, and encoded with a tokenizer fitted on the training part only (:func:`build_corpus`,
:func:`load_corpus`); a prepared corpus is the same arrays on disk, memory-mapped. The
minibatches cut from the arrays are :mod:`seqlm.batches`'.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqlm import atomic
from seqlm.errors import ConfigError, CorpusError
from seqlm.tokenize import Tokenizer, fit_tokenizer, tokenizer_from_state

SPLITS = ("train", "val", "test")


def _cut_targets(length: int, fractions: tuple[float, ...]) -> list[int]:
    """Where the cuts between parts would fall before moving to whitespace."""
    targets, total = [], 0.0
    for frac in fractions[:-1]:
        total += frac
        targets.append(min(round(total * length), length))
    return targets


def split_text(text: str, fractions: tuple[float, ...]) -> list[str]:
    """Cuts ``text`` into contiguous parts of the given fractions, each cut moved forward to
    just after the next whitespace so that no word is split across two parts."""
    parts, start = [], 0
    for end in _cut_targets(len(text), fractions):
        while 0 < end < len(text) and not text[end - 1].isspace():
            end += 1
        parts.append(text[start:end])
        start = max(start, end)
    parts.append(text[start:])
    return parts


_SPACE = re.compile(r"\s")  # the characters str.isspace accepts


def split_pieces(pieces: Iterable[str], length: int, fractions: tuple[float, ...]
                 ) -> Iterator[tuple[int, str]]:
    """:func:`split_text` for a text of ``length`` characters that arrives in pieces.

    Yields:
        ``(part, text)`` pairs in order; the texts of part ``i`` joined equal
        ``split_text("".join(pieces), fractions)[i]`` (empty parts yield nothing).
    """
    targets = _cut_targets(length, fractions)
    part, cut, pos = 0, 0, 0  # cut: where the current part began
    for piece in pieces:
        emitted = 0  # characters of this piece already handed out
        while part < len(targets):
            target = targets[part]
            if target <= cut or target >= length:  # the cut is the previous one, or the end
                end = max(cut, min(target, length)) if target <= cut else length
            else:  # just after the first whitespace at target - 1 or later
                found = _SPACE.search(piece, max(target - 1 - pos, emitted))
                if found is None:
                    break
                end = pos + found.end()
            if end > pos + len(piece):
                break
            if end - pos > emitted:
                yield part, piece[emitted:end - pos]
                emitted = end - pos
            part, cut = part + 1, max(cut, end)
        if emitted < len(piece):
            yield part, piece[emitted:]
        pos += len(piece)


@dataclass
class Corpus:
    """An encoded corpus: the token arrays of each split and the tokenizer that made them."""

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    oov_rate: dict[str, float] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer.vocab)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Writes the corpus as a prepared corpus (see :func:`write_prepared`)."""
        write_prepared(directory, self.tokenizer, ((name, tokens) for name, tokens
                                                    in self.splits.items()), overwrite=overwrite)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Corpus:
        """Opens a prepared corpus; the token arrays are memory-mapped, not read.

        Raises:
            CorpusError: the directory is not a prepared corpus.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / "corpus.json").read_text(encoding="utf-8"))
            splits = {name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                      for name in meta["tokens"]}
        except (OSError, ValueError, KeyError) as exc:
            raise CorpusError(f"{directory}: not a prepared corpus ({exc}); make one with "
                              "seqlm prepare") from None
        return cls(tokenizer_from_state(meta["tokenizer"]), splits, meta.get("oov_rate", {}))


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / "corpus.json").is_file()


def check_prepared_target(directory: str | Path, *, overwrite: bool = False) -> None:
    """Raises:
        ConfigError: ``directory`` exists and is not empty (without ``overwrite``), or is
            not a prepared corpus (``overwrite`` only ever replaces prepared corpora).
    """
    path = Path(directory)
    if path.is_file():
        raise ConfigError(f"{path} is a file; choose a directory for the prepared corpus")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"{path} already exists; pass `overwrite` to replace the prepared "
                              "corpus, or choose another path")
        if not is_prepared(path):
            raise ConfigError(f"{path} exists and is not a prepared corpus; `overwrite` only "
                              "replaces prepared corpora; choose another path")


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """A .npy (format 1.0) header of a 1-D array, always 128 bytes long, so it can be written
    before the data and rewritten once the length is known."""
    text = (f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, "
            f"'fortran_order': False, 'shape': ({length},), }}")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + text.ljust(117).encode() + b"\n"


def write_prepared(directory: str | Path, tokenizer: Tokenizer,
                   arrays: Iterable[tuple[str, np.ndarray]], *, overwrite: bool = False,
                   max_tokens: int | None = None) -> dict:
    """Writes a prepared corpus: ``<split>.npy`` for each of train, val and test and
    ``corpus.json`` (the tokenizer, token counts and out-of-vocabulary rates).

    The token ids come as ``(split, ids)`` pairs, splits in order, and go straight to disk,
    so memory holds one array at a time. Everything is written in a temporary sibling that
    is renamed into place, so ``directory`` is never half-written.

    Args:
        directory: where the corpus goes.
        tokenizer: the tokenizer that made the ids.
        arrays: ``(split name, 1-D ids)`` pairs, grouped by split in the order of ``SPLITS``.
        overwrite: replace an existing prepared corpus.
        max_tokens: keep only the first ``max_tokens`` ids of the training split.

    Returns:
        The contents of ``corpus.json``.

    Raises:
        ConfigError: as :func:`check_prepared_target`.
        CorpusError: the directory cannot be written (the previous one, if any, is kept).
    """
    target = Path(directory)
    check_prepared_target(target, overwrite=overwrite)
    tmp = None
    try:
        tmp = atomic.temp_sibling(target)
        counts, zeros = _write_arrays(tmp, tokenizer.dtype, arrays, max_tokens)
        meta = {"format": "seqlm-prepared", "version": 1, "tokenizer": tokenizer.state(),
                "oov_rate": {k: zeros[k] / counts[k] if counts[k] else 0.0 for k in SPLITS},
                "tokens": counts}
        atomic.write_durably(tmp / "corpus.json", json.dumps(meta, ensure_ascii=False))
        atomic.swap_into_place(tmp, target)
    except OSError as exc:
        if tmp is not None:
            atomic.abandon(tmp, target)
        raise CorpusError(f"cannot write the prepared corpus {target} ({exc.strerror or exc}); "
                          "choose a writable directory or free some disk space") from None
    return meta


def _write_arrays(directory: Path, dtype, arrays: Iterable[tuple[str, np.ndarray]],
                  max_tokens: int | None) -> tuple[dict[str, int], dict[str, int]]:
    """Streams the ``(split, ids)`` pairs into ``<split>.npy`` files; returns the token and
    ``<unk>`` counts of each split."""
    counts, zeros = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    files = {name: open(directory / f"{name}.npy", "wb") for name in SPLITS}
    try:
        for handle in files.values():
            handle.write(_npy_header(dtype, 0))
        for name, ids in arrays:
            if name == "train" and max_tokens is not None:
                ids = ids[: max(max_tokens - counts[name], 0)]
            ids = np.ascontiguousarray(ids, dtype=dtype)
            files[name].write(ids.tobytes())
            counts[name] += len(ids)
            zeros[name] += int(np.count_nonzero(ids == 0))
        for name, handle in files.items():
            handle.seek(0)
            handle.write(_npy_header(dtype, counts[name]))
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in files.values():
            handle.close()
    return counts, zeros


def build_corpus(text: str, *, tokenizer: str = "char",
                 split: tuple[float, float, float] = (0.9, 0.05, 0.05),
                 max_tokens: int | None = None, tokenizer_options: dict | None = None,
                 fitted: Tokenizer | None = None) -> Corpus:
    """Splits ``text`` contiguously, fits the tokenizer on the training part only, and encodes
    every part.

    Args:
        text: the cleaned corpus.
        tokenizer: 'char', 'word' or 'bpe'.
        split: train / validation / test fractions (summing to 1; zeros allowed for the last two).
        max_tokens: keep only the first ``max_tokens`` tokens of the training split (the book
            trains on the first 10,000 characters); the other splits are kept whole.
        tokenizer_options: passed to the tokenizer's ``fit`` (min_freq, max_size, ...).
        fitted: encode with this tokenizer instead of fitting one (a trained model's).

    Returns:
        A :class:`Corpus` whose ``oov_rate`` gives, for each split, the fraction of tokens that
        map to ``<unk>`` under the training vocabulary.

    Raises:
        CorpusError: the training split is empty.
    """
    parts = dict(zip(SPLITS, split_text(text, split)))
    if not parts["train"].strip():
        raise empty_training_split()
    tok = fitted or fit_tokenizer(tokenizer, parts["train"], **(tokenizer_options or {}))
    splits = {name: tok.encode(part) for name, part in parts.items()}
    if max_tokens is not None:
        splits["train"] = splits["train"][:max_tokens]
    oov = {name: float(np.mean(ids == 0)) if len(ids) else 0.0 for name, ids in splits.items()}
    return Corpus(tok, splits, oov)


def load_corpus(cfg, *, tokenizer: Tokenizer | None = None) -> Corpus:
    """The corpus a :class:`~seqlm.config.DataConfig` describes: a prepared directory as it
    is (memory-mapped), or text read, cleaned, split and encoded (with ``tokenizer`` when
    given, else with one fitted on the training split).

    Raises:
        CorpusError: as :func:`seqlm.text.read_corpus`, or the cleaning left nothing.
    """
    from seqlm.text import clean, read_corpus

    if is_prepared(cfg.corpus):
        corpus = Corpus.load(cfg.corpus)
        if cfg.max_tokens is not None:
            corpus.splits["train"] = corpus.splits["train"][: cfg.max_tokens]
        return corpus
    text = clean(read_corpus(cfg.corpus, encoding=cfg.encoding), cfg.clean)
    if not text.strip():
        raise nothing_left(cfg)
    return build_corpus(text, tokenizer=cfg.tokenizer, split=cfg.split_fractions(),
                        max_tokens=cfg.max_tokens, tokenizer_options=cfg.tokenizer_options(),
                        fitted=tokenizer)


def nothing_left(cfg) -> CorpusError:
    return CorpusError(f"{cfg.corpus}: nothing is left after `clean` {cfg.clean}; use "
                       "`clean` none or a corpus with letters in it")


def empty_training_split() -> CorpusError:
    return CorpusError("the training split is empty; use a longer corpus or a larger "
                       "training fraction")
