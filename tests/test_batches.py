"""The two sampling strategies and the evaluation pass (seqlm.batches)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlm.batches import min_batches_per_epoch, random_batches, sequential_batches
from seqlm.errors import CorpusError

shapes = st.tuples(st.integers(20, 400), st.integers(1, 6), st.integers(1, 9), st.integers(0, 99))


def _epoch(sampler, n, B, T, seed):
    tokens = np.arange(n, dtype=np.int64)
    return list(sampler(tokens, B, T, generator=torch.Generator().manual_seed(seed)))


def _fits(n, B, T):
    return n >= B * T + T


@settings(max_examples=80, deadline=None)
@given(shapes, st.sampled_from([random_batches, sequential_batches]))
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
@given(shapes, st.sampled_from([random_batches, sequential_batches]))
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
