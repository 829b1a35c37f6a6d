"""The neural cache against its definition, written out position by position."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqlm.errors import ConfigError
from seqlm.neural_cache import CacheSettings, NeuralCache, mix


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors

def reference(h: torch.Tensor, targets: torch.Tensor, size: int, theta: float) -> np.ndarray:
    """log p_cache(targets_t | h_t) by the paper's sum, one position and one row at a time:
    (T, B) with nan where nothing is remembered yet."""
    T, B = targets.shape
    out = np.full((T, B), np.nan)
    for b in range(B):
        for t in range(T):
            keys = range(max(0, t - size), t)
            if not keys:
                continue
            w = np.array([math.exp(theta * float(h[t, b] @ h[i, b])) for i in keys])
            hit = sum(wi for wi, i in zip(w, keys) if targets[i, b] == targets[t, b])
            out[t, b] = math.log(hit / w.sum()) if hit else -math.inf
    return out


def read_in_pieces(h, targets, size, thetas, cut):
    cache, parts = NeuralCache(size), []
    for start in range(0, len(targets), cut):
        hp, yp = h[start:start + cut], targets[start:start + cut]
        parts.append(cache.target_logprobs(hp, yp, thetas))
        cache.append(hp, yp)
    return torch.cat(parts, 1).double().numpy()


@pytest.mark.parametrize("cut", [1, 4, 7, 40])
def test_target_logprobs_follow_the_definition_however_the_text_is_cut(cut):
    torch.manual_seed(0)
    T, B, H, size = 40, 2, 8, 9
    h = torch.randn(T, B, H) * 0.5
    targets = torch.randint(0, 5, (T, B))
    got = read_in_pieces(h, targets, size, (0.3, 1.0), cut)
    for k, theta in enumerate((0.3, 1.0)):
        want = reference(h, targets, size, theta)
        seen = ~np.isnan(want)
        assert np.isneginf(got[k][~seen]).all()  # the first position: nothing remembered
        np.testing.assert_allclose(got[k][seen], want[seen], rtol=1e-4, atol=1e-5)
    assert np.isneginf(got[0]).any()  # some targets were not among the last `size` tokens


def test_the_distribution_sums_to_one_and_holds_the_targets_probability():
    torch.manual_seed(1)
    T, B, H, V = 12, 1, 6, 7
    h, targets = torch.randn(T, B, H), torch.randint(0, V, (T, B))
    cache = NeuralCache(5)
    cache.append(torch.randn(3, B, H), torch.randint(0, V, (3, B)))
    full = cache.log_distribution(h, targets, 0.5, V)  # (T, B, V)
    np.testing.assert_allclose(full.exp().sum(-1).numpy(), 1.0, rtol=1e-9)
    picked = full.gather(-1, targets[..., None])[..., 0]
    np.testing.assert_allclose(picked.numpy(), cache.target_logprobs(h, targets, (0.5,))[0]
                               .double().numpy(), rtol=1e-4, atol=1e-5)


def test_the_memory_keeps_the_last_size_positions():
    cache = NeuralCache(4)
    for t in range(6):
        cache.append(torch.full((1, 1, 2), float(t)), torch.tensor([[t]]))
    assert len(cache) == 4 and cache.values.tolist() == [[2, 3, 4, 5]]
    assert cache.filled(3).tolist() == [True] * 3 and not NeuralCache(4).filled(2)[0]


def test_mix_is_the_model_exactly_at_lambda_zero_and_where_the_cache_is_empty():
    model = np.log(np.array([0.2, 0.5, 0.3]))
    cache = np.array([-np.inf, 0.0, np.log(0.5)])
    assert mix(model, cache, np.ones(3, bool), 0.0).tolist() == model.tolist()
    assert mix(model, cache, np.zeros(3, bool), 0.4).tolist() == model.tolist()
    np.testing.assert_allclose(np.exp(mix(model, cache, np.ones(3, bool), 0.25)),
                               [0.15, 0.625, 0.35])


@pytest.mark.parametrize("fields, match", [
    ((0, 0.1, 1.0), "`cache` must be a positive integer"),
    ((10, 1.0, 1.0), r"`lam` must be in \[0, 1\)"),
    ((10, -0.1, 1.0), r"`lam` must be in \[0, 1\)"),
    ((10, 0.1, 0.0), "`theta` must be a positive number"),
    ((10, 0.1, float("nan")), "`theta` must be a positive number"),
])
def test_bad_settings_name_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        CacheSettings(*fields)
