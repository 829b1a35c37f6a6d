"""Minibatches of a token array: the chapter's sampling strategies, and evaluation's pass.

Every minibatch is a pair ``(X, Y)`` of int64 tensors of shape ``(batch_size, num_steps)``
with ``Y`` the tokens that follow ``X``: ``Y[b, t] == tokens[s_b + t + 1]`` when
``X[b, t] == tokens[s_b + t]``. The strategies differ in where the windows start:

* :func:`random_batches` (random sampling as d2l's code does it): windows from a random
  offset, shuffled, each used at most once per epoch, minibatches independent
  (``contiguous = False``).
* :func:`random_start_batches` (random sampling as the chapter's text says it): every
  window's start drawn anew from every valid position, so windows may overlap
  (``contiguous = False``).
* :func:`sequential_batches` (sequential partitioning): the stream cut into ``batch_size``
  rows; row ``i`` of minibatch ``k+1`` continues row ``i`` of minibatch ``k``
  (``contiguous = True``), so a trainer may carry the hidden state across minibatches.
* :func:`eval_batches`: every token once, in order, in carried-state pieces, for evaluation.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np
import torch

from seqlm.errors import CorpusError


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


def check_validation(tokens: np.ndarray, fraction: float, num_steps: int) -> None:
    """Raises:
        CorpusError: the text asks for a validation split (``fraction`` > 0) whose
            ``tokens`` are fewer than one window of ``num_steps + 1``: no evaluation, best
            checkpoint, patience or perplexity could come of it.
    """
    need = num_steps + 1
    if fraction > 0 and len(tokens) < need:
        raise CorpusError(
            f"corpus too short for a validation split: {fraction:g} of the text is "
            f"{len(tokens)} tokens, but one evaluation window (`num_steps` {num_steps}) "
            f"needs {need}; use a longer corpus, a larger validation fraction in `split`, or "
            "`split` 1,0,0 to train without validation")


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


def random_start_plan(n_tokens: int, batch_size: int, num_steps: int,
                      generator: torch.Generator | None = None) -> np.ndarray:
    """The window starts of one epoch of random-start sampling, shape ``(num_batches,
    batch_size)``: each independent and uniform on ``[0, n_tokens - num_steps - 1]``, as many
    windows as :func:`random_plan` cuts at offset 0 (``(n_tokens - 1) // num_steps``), whole
    minibatches only."""
    num_batches = (n_tokens - 1) // num_steps // batch_size
    shape = (num_batches, batch_size)
    return torch.randint(n_tokens - num_steps, shape, generator=generator).numpy()


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


def random_start_batches(tokens: np.ndarray, batch_size: int, num_steps: int, *,
                         generator: torch.Generator | None = None, start: int = 0
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random-start sampling, the chapter's words taken literally: "each time, take a window of
    ``num_steps`` tokens from any position". Every start is drawn independently and uniformly
    from all ``len(tokens) - num_steps`` valid positions (the last one still leaves a target
    for the window's last input), so windows may overlap and a token may be read twice or never
    in an epoch::

        tokens   0 1 2 3 4 5 6 7 8 9      T = 4: valid starts 0 … 5
        X1           2 3 4 5              Y1 = 3 4 5 6
        X2       0 1 2 3                  Y2 = 1 2 3 4   (overlaps X1)

    That is the chapter's example: ``random_start_batches(np.arange(10), 1, 4,
    generator=torch.Generator().manual_seed(64))`` (:data:`CHAPTER_EXAMPLE_SEED`) yields exactly
    these two minibatches (an epoch is as many windows as :func:`random_batches` cuts at
    offset 0: here two). Minibatches are independent (``contiguous = False``): a trainer
    resets the hidden state for every one.

    Args and yields as :func:`random_batches`; the generator draws every start.

    Raises:
        CorpusError: fewer tokens than one minibatch needs.
    """
    check_fits(tokens, batch_size, num_steps)
    for starts in random_start_plan(len(tokens), batch_size, num_steps, generator)[start:]:
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
random_start_batches.contiguous = False
sequential_batches.contiguous = True
SAMPLERS = {"random": random_batches, "random-start": random_start_batches,
            "sequential": sequential_batches}
# The seed under which random_start_batches(np.arange(10), 1, 4) starts with the chapter's
# two windows [2, 3, 4, 5] and [0, 1, 2, 3] (found by trying seeds 0, 1, 2, ... in order).
CHAPTER_EXAMPLE_SEED = 64


def min_batches_per_epoch(n_tokens: int, batch_size: int, num_steps: int) -> int:
    """Minibatches in an epoch of the partitions at the largest offset (``num_steps - 1``);
    an epoch of any strategy never has fewer."""
    usable = max(n_tokens - num_steps, 0)
    return usable // (num_steps * batch_size)


def eval_batches(tokens: np.ndarray, batch_size: int, num_steps: int):
    """Every token of a split once, in order: the stream cut into ``batch_size`` rows read
    ``num_steps`` columns at a time (the last piece shorter), for a carried-state evaluation.
    Each piece is gathered when it is needed, so a memory-mapped split is never copied
    whole."""
    rows = max(1, min(batch_size, (len(tokens) - 1) // max(num_steps, 1)))
    row_len = (len(tokens) - 1) // rows
    if row_len < 1:
        return
    starts = np.arange(rows)[:, None] * row_len
    for col in range(0, row_len, num_steps):
        width = min(num_steps, row_len - col)
        window = torch.from_numpy(np.asarray(tokens[starts + col + np.arange(width + 1)],
                                             dtype=np.int64))
        release_pages(tokens)
        yield window[:, :-1], window[:, 1:]
