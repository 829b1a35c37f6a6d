"""Language-model data: token arrays, splits, prepared corpora and the two sampling strategies.

Every minibatch is a pair ``(X, Y)`` of int64 tensors of shape ``(batch_size, num_steps)``
with ``Y`` the tokens that follow ``X``: ``Y[b, t] == tokens[s_b + t + 1]`` when
``X[b, t] == tokens[s_b + t]``. The two strategies differ in where the windows start:

* :func:`random_batches` (random sampling): windows from a random offset, shuffled,
  each used at most once per epoch, minibatches independent (``contiguous = False``).
* :func:`sequential_batches` (sequential partitioning): the stream cut into ``batch_size``
  rows; row ``i`` of minibatch ``k+1`` continues row ``i`` of minibatch ``k``
  (``contiguous = True``), so a trainer may carry the hidden state across minibatches.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import secrets
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqlm.errors import ConfigError, CorpusError
from seqlm.tokenize import Tokenizer, fit_tokenizer, tokenizer_from_state

SPLITS = ("train", "val", "test")


def check_fits(tokens: np.ndarray, batch_size: int, num_steps: int) -> None:
    """Raises:
        CorpusError: ``tokens`` cannot fill one minibatch of either strategy (the message
            gives the numbers), which needs ``batch_size * num_steps + num_steps`` tokens.
    """
    need = batch_size * num_steps + num_steps
    if len(tokens) < need:
        raise CorpusError(
            f"corpus too short for one minibatch: {len(tokens)} tokens, but batch_size "
            f"{batch_size} × num_steps {num_steps} needs at least {need}; use a longer corpus "
            "or a smaller `batch_size` / `num_steps`")


def _gather(tokens: np.ndarray, starts: np.ndarray, num_steps: int) -> tuple[torch.Tensor, ...]:
    """Rows ``tokens[s : s+num_steps]`` and ``tokens[s+1 : s+num_steps+1]`` for each start."""
    index = starts[:, None] + np.arange(num_steps + 1)
    window = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))
    release_pages(tokens)
    return window[:, :-1], window[:, 1:]


def release_pages(tokens: np.ndarray) -> None:
    """Unmaps the pages a memory-mapped token array has touched (they stay in the OS page
    cache, so reading them again costs no I/O). Windows read at random, or a whole epoch
    read in order, would otherwise map all of a large prepared corpus into the process's
    resident memory. A no-op for arrays in memory or where the OS has no ``madvise``."""
    base = tokens
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def _offset(num_steps: int, generator: torch.Generator | None) -> int:
    # Uniform in [0, num_steps): d2l's sequential iterator drew from [0, num_steps], which
    # could waste a whole window (d2l-zh PRs #1301, #1337).
    return int(torch.randint(num_steps, (1,), generator=generator))


def random_plan(n_tokens: int, batch_size: int, num_steps: int,
                generator: torch.Generator | None = None) -> np.ndarray:
    """The window starts of one epoch of random sampling, shape ``(num_batches, batch_size)``."""
    offset = _offset(num_steps, generator)
    num_windows = (n_tokens - offset - 1) // num_steps
    order = torch.randperm(num_windows, generator=generator).numpy()
    num_batches = num_windows // batch_size
    starts = offset + order[: num_batches * batch_size] * num_steps
    return starts.reshape(num_batches, batch_size)


def sequential_plan(n_tokens: int, batch_size: int, num_steps: int,
                    generator: torch.Generator | None = None) -> np.ndarray:
    """The row starts of each minibatch of one epoch of sequential partitioning."""
    offset = _offset(num_steps, generator)
    row_len = (n_tokens - offset - 1) // batch_size
    num_batches = row_len // num_steps
    rows = offset + np.arange(batch_size) * row_len
    return rows[None, :] + (np.arange(num_batches) * num_steps)[:, None]


def random_batches(tokens: np.ndarray, batch_size: int, num_steps: int, *,
                   generator: torch.Generator | None = None, start: int = 0
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random sampling: one epoch of independent minibatches.

    A random offset in ``[0, num_steps)`` is dropped, the rest is cut into non-overlapping
    windows of ``num_steps`` (+1 for the targets), and the windows are shuffled::

        tokens   0 1 | 2 3 4 5 6 | 7 8 9 10 11 | 12 13 14 15 16 | ...   (offset 2, T = 5)
        windows        w0          w1            w2
        batches  [w2, w0], [w1, ...]   (shuffled; leftovers dropped)

    With the chapter's corpus ``0..34``, batch 2 and 5 steps, an epoch is 3 minibatches whose
    rows are windows such as ``[11..15]`` and ``[21..25]`` (targets ``[12..16]``, ``[22..26]``).

    Args:
        tokens: 1-D token indices (numpy, memory-mapped arrays work).
        batch_size, num_steps: ``B`` and ``T``.
        generator: the source of the offset and the shuffle; the same seed gives the same epoch.
        start: minibatches to skip (resuming in the middle of an epoch).

    Yields:
        ``(X, Y)`` int64 tensors of shape ``(B, T)``.

    Raises:
        CorpusError: fewer tokens than one minibatch needs (the message gives the numbers).
    """
    check_fits(tokens, batch_size, num_steps)
    for starts in random_plan(len(tokens), batch_size, num_steps, generator)[start:]:
        yield _gather(tokens, starts, num_steps)


def sequential_batches(tokens: np.ndarray, batch_size: int, num_steps: int, *,
                       generator: torch.Generator | None = None, start: int = 0
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential partitioning: minibatch ``k+1`` row ``i`` continues minibatch ``k`` row ``i``.

    A random offset in ``[0, num_steps)`` is dropped and the stream is cut into ``B`` equal
    rows; minibatch ``k`` is columns ``[k·T, (k+1)·T)`` of every row::

        row 0:  | k=0: 1 2 3 4 5 | k=1: 6 7 8 9 10 | k=2: 11 12 13 14 15 | ...
        row 1:  | k=0: 17 ... 21 | k=1: 22 ... 26  | k=2: 27 ... 31      | ...

    That is the chapter's example: corpus ``0..34``, batch 2, 5 steps, offset 1.

    Args and yields as :func:`random_batches`.

    Raises:
        CorpusError: fewer tokens than one minibatch needs.
    """
    check_fits(tokens, batch_size, num_steps)
    for starts in sequential_plan(len(tokens), batch_size, num_steps, generator)[start:]:
        yield _gather(tokens, starts, num_steps)


random_batches.contiguous = False
sequential_batches.contiguous = True
SAMPLERS = {"random": random_batches, "sequential": sequential_batches}


def min_batches_per_epoch(n_tokens: int, batch_size: int, num_steps: int) -> int:
    """Minibatches in an epoch of either strategy at the largest offset (``num_steps - 1``);
    an epoch never has fewer."""
    usable = max(n_tokens - num_steps, 0)
    return min(usable // num_steps // batch_size, usable // batch_size // num_steps)


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
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    dtype = tokenizer.dtype
    counts, zeros = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    try:
        tmp.mkdir(parents=True)
        files = {name: open(tmp / f"{name}.npy", "wb") for name in SPLITS}
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
        finally:
            for handle in files.values():
                handle.close()
        meta = {"format": "seqlm-prepared", "version": 1, "tokenizer": tokenizer.state(),
                "oov_rate": {k: zeros[k] / counts[k] if counts[k] else 0.0 for k in SPLITS},
                "tokens": counts}
        (tmp / "corpus.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        aside = target.parent / f".{target.name}.replaced-{secrets.token_hex(4)}"
        if target.exists():
            os.replace(target, aside)
        os.replace(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(f"cannot write the prepared corpus {target} ({exc.strerror or exc}); "
                          "choose a writable directory or free some disk space") from None
    return meta


def build_corpus(text: str, *, tokenizer: str = "char",
                 split: tuple[float, float, float] = (0.9, 0.05, 0.05),
                 max_tokens: int | None = None, tokenizer_options: dict | None = None) -> Corpus:
    """Splits ``text`` contiguously, fits the tokenizer on the training part only, and encodes
    every part.

    Args:
        text: the cleaned corpus.
        tokenizer: 'char', 'word' or 'bpe'.
        split: train / validation / test fractions (summing to 1; zeros allowed for the last two).
        max_tokens: keep only the first ``max_tokens`` tokens of the training split (the book
            trains on the first 10,000 characters); the other splits are kept whole.
        tokenizer_options: passed to the tokenizer's ``fit`` (min_freq, max_size, ...).

    Returns:
        A :class:`Corpus` whose ``oov_rate`` gives, for each split, the fraction of tokens that
        map to ``<unk>`` under the training vocabulary.

    Raises:
        CorpusError: the training split is empty.
    """
    parts = dict(zip(SPLITS, split_text(text, split)))
    if not parts["train"].strip():
        raise empty_training_split()
    tok = fit_tokenizer(tokenizer, parts["train"], **(tokenizer_options or {}))
    splits = {name: tok.encode(part) for name, part in parts.items()}
    if max_tokens is not None:
        splits["train"] = splits["train"][:max_tokens]
    oov = {name: float(np.mean(ids == 0)) if len(ids) else 0.0 for name, ids in splits.items()}
    return Corpus(tok, splits, oov)


def load_corpus(cfg) -> Corpus:
    """The corpus a :class:`~seqlm.config.DataConfig` describes: a prepared directory as it
    is (memory-mapped), or text read, cleaned, split and encoded.

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
                        max_tokens=cfg.max_tokens, tokenizer_options=cfg.tokenizer_options())


def nothing_left(cfg) -> CorpusError:
    return CorpusError(f"{cfg.corpus}: nothing is left after `clean` {cfg.clean}; use "
                       "`clean` none or a corpus with letters in it")


def empty_training_split() -> CorpusError:
    return CorpusError("the training split is empty; use a longer corpus or a larger "
                       "training fraction")
