"""The sampling strategies and the evaluation pass (seqlm.batches)."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlm.batches import (CHAPTER_EXAMPLE_SEED, SAMPLERS, min_batches_per_epoch,
                           random_batches, random_start_batches, random_start_plan,
                           sequential_batches)
from seqlm.config import DataConfig
from seqlm.errors import CorpusError

shapes = st.tuples(st.integers(20, 400), st.integers(1, 6), st.integers(1, 9), st.integers(0, 99))


def _epoch(sampler, n, B, T, seed):
    tokens = np.arange(n, dtype=np.int64)
    return list(sampler(tokens, B, T, generator=torch.Generator().manual_seed(seed)))


def _fits(n, B, T):
    return n >= B * T + T


@settings(max_examples=80, deadline=None)
@given(shapes, st.sampled_from(list(SAMPLERS.values())))
def test_shapes_shift_and_bounds(shape, sampler):
    n, B, T, seed = shape
    if not _fits(n, B, T):
        with pytest.raises(CorpusError, match=f"{n} tokens.*{B}.*{T}"):
            _epoch(sampler, n, B, T, seed)
        return
    batches = _epoch(sampler, n, B, T, seed)
    assert len(batches) >= min_batches_per_epoch(n, B, T) >= 1
    for X, Y in batches:
        assert X.shape == Y.shape == (B, T) and X.dtype == torch.int64
        assert torch.equal(Y[:, :-1], X[:, 1:]) and torch.equal(Y, X + 1)  # shifted by one
        assert int(Y.max()) < n and int(X.min()) >= 0


@settings(max_examples=80, deadline=None)
@given(shapes)
def test_random_windows_disjoint_each_token_used_once(shape):
    n, B, T, seed = shape
    if not _fits(n, B, T):
        return
    starts = [int(x) for X, _ in _epoch(random_batches, n, B, T, seed) for x in X[:, 0]]
    assert len(set(starts)) == len(starts)
    used = np.concatenate([np.arange(s, s + T) for s in starts])
    assert len(np.unique(used)) == len(used)  # windows do not overlap
    assert len({s % T for s in starts}) == 1  # one offset per epoch, in [0, T)


@settings(max_examples=80, deadline=None)
@given(shapes)
def test_sequential_rows_continue(shape):
    n, B, T, seed = shape
    if not _fits(n, B, T):
        return
    batches = _epoch(sequential_batches, n, B, T, seed)
    for (X0, _), (X1, _) in zip(batches, batches[1:]):
        assert torch.equal(X1[:, 0], X0[:, -1] + 1)  # row i of k+1 continues row i of k
    assert int(batches[0][0][0, 0]) < T  # offset in [0, num_steps): d2l allowed num_steps
    all_x = torch.cat([X for X, _ in batches], 1).flatten()
    assert len(torch.unique(all_x)) == len(all_x)


@settings(max_examples=30, deadline=None)
@given(shapes, st.sampled_from(list(SAMPLERS.values())))
def test_seeded_generator_reproduces_and_start_resumes(shape, sampler):
    n, B, T, seed = shape
    if not _fits(n, B, T):
        return
    a, b = _epoch(sampler, n, B, T, seed), _epoch(sampler, n, B, T, seed)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    tail = list(sampler(np.arange(n), B, T, generator=torch.Generator().manual_seed(seed),
                        start=1))
    assert len(tail) == len(a) - 1
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a[1:], tail))


def test_contiguity_flags():
    assert sequential_batches.contiguous is True
    assert random_batches.contiguous is False
    assert random_start_batches.contiguous is False


@settings(max_examples=80, deadline=None)
@given(shapes)
def test_random_start_epoch_has_the_partitions_window_count_and_starts_in_range(shape):
    n, B, T, seed = shape
    if not _fits(n, B, T):
        return
    batches = _epoch(random_start_batches, n, B, T, seed)
    assert len(batches) == (n - 1) // T // B  # as many windows as the partition at offset 0
    starts = torch.cat([X[:, 0] for X, _ in batches])
    assert int(starts.min()) >= 0 and int(starts.max()) <= n - T - 1  # the target still fits


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(1, 8), st.integers(0, 10 ** 6))
def test_random_start_covers_every_valid_start_uniformly(positions, T, seed):
    n = positions + T  # valid starts 0 … positions − 1, the last one n − T − 1
    gen = torch.Generator().manual_seed(seed)
    draws = np.concatenate([random_start_plan(n, 1, T, gen).ravel()
                            for _ in range(400 * positions // ((n - 1) // T) + 1)])
    counts = np.bincount(draws, minlength=positions)  # epochs in a row, as a trainer runs them
    expected = len(draws) / positions
    sigma = np.sqrt(len(draws) * (1 / positions) * (1 - 1 / positions))
    assert len(counts) == positions and counts.min() > 0  # the last valid start is drawn too
    assert np.abs(counts - expected).max() < 6 * sigma  # uniform (fails ~1e-7 by chance)


def test_random_start_batches_read_their_plans_windows():
    n, B, T = 50, 3, 4
    plan = random_start_plan(n, B, T, torch.Generator().manual_seed(5))
    batches = _epoch(random_start_batches, n, B, T, 5)
    assert [X[:, 0].tolist() for X, _ in batches] == plan.tolist()


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 60), st.integers(2, 6), st.integers(0, 10 ** 6))
def test_random_start_windows_can_overlap_and_leave_the_partition_grid(extra, T, seed):
    n = 3 * T + extra
    gen = torch.Generator().manual_seed(seed)
    starts = [int(X[0, 0]) for _ in range(30)
              for X, _ in random_start_batches(np.arange(n), 1, T, generator=gen)]
    assert any(0 < abs(a - b) < T for a in starts for b in starts)  # two windows share tokens
    assert len({s % T for s in starts}) > 1  # not one offset's grid, as d2l's partition is


def test_random_start_seed_reproduces_the_chapters_example():
    gen = torch.Generator().manual_seed(CHAPTER_EXAMPLE_SEED)
    pairs = [(X.tolist(), Y.tolist())
             for X, Y in random_start_batches(np.arange(10), 1, 4, generator=gen)]
    assert pairs == [([[2, 3, 4, 5]], [[3, 4, 5, 6]]), ([[0, 1, 2, 3]], [[1, 2, 3, 4]])]
    earlier = [list(random_start_batches(np.arange(10), 1, 4,
                                         generator=torch.Generator().manual_seed(seed)))
               for seed in range(CHAPTER_EXAMPLE_SEED)]
    assert all([X.tolist() for X, _ in epoch] != [[[2, 3, 4, 5]], [[0, 1, 2, 3]]]
               for epoch in earlier)  # the smallest such seed, as its comment says


def test_book_example_sequential_offset_one():
    gen = torch.Generator()
    # find a seed whose first draw in [0, 5) is 1, then check the book's printed batches
    for seed in range(100):
        gen.manual_seed(seed)
        if int(torch.randint(5, (1,), generator=gen)) == 1:
            break
    X = [x.tolist() for x, _ in sequential_batches(np.arange(35), 2, 5,
                                                   generator=torch.Generator().manual_seed(seed))]
    assert X == [[[1, 2, 3, 4, 5], [17, 18, 19, 20, 21]], [[6, 7, 8, 9, 10], [22, 23, 24, 25, 26]],
                 [[11, 12, 13, 14, 15], [27, 28, 29, 30, 31]]]


def test_the_configs_sampler_choices_are_the_strategies_here():
    choices = next(f.metadata["choices"] for f in dataclasses.fields(DataConfig)
                   if f.name == "sampler")
    assert set(choices) == set(SAMPLERS)
