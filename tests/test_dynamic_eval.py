"""Dynamic evaluation's update rules against their equations, and its prior."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from seqlm.config import ModelConfig
from seqlm.dynamic_eval import EPS_SHARE, Adaptation, DynamicSettings, gradient_prior
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.reading import split_batches


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors

def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 equality to rounding (torch.testing's own takes seconds to import)."""
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (got - want).abs().max()


def small_model(**fields) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(vocab_size=11, cell="gru", hidden_size=8, embedding_dim=4,
                             **fields)).eval()


def with_gradients(model: RNNLM, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    return grads


def test_sgd_is_a_step_down_the_gradient_and_a_pull_back_to_the_trained_weights():
    model = small_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = Adaptation(model, DynamicSettings(lr=0.1, rule="sgd", decay=0.0), None)
    grads = with_gradients(model)
    step.step()
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in start:
        assert_close(moved[n], start[n] - 0.1 * grads[n])
    step = Adaptation(model, DynamicSettings(lr=0.0, rule="sgd", decay=0.25), None)
    step.start = [start[n] for n, _ in step.params]  # θ0: the weights before the first step
    step.step()  # no gradient: only the decay, a quarter of the way back
    for n, p in model.named_parameters():
        assert_close(p.detach(), moved[n] + 0.25 * (start[n] - moved[n]))
        assert p.grad is None


def test_rms_divides_by_the_priors_root_and_its_decay_is_capped_at_one():
    model = small_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(2)
    prior = {n: torch.rand_like(p) ** 4 for n, p in model.named_parameters()}
    step = Adaptation(model, DynamicSettings(lr=0.01, rule="rms", decay=0.5), prior)
    grads = with_gradients(model)
    step.step()
    roots = {n: ms.sqrt() for n, ms in prior.items()}
    mean = float(sum(r.sum() for r in roots.values()) / sum(r.numel() for r in roots.values()))
    for n, p in model.named_parameters():
        want = start[n] - 0.01 * grads[n] / (roots[n] + EPS_SHARE * mean)
        assert_close(p.detach(), want)  # θ = θ0 before the step: no pull yet
        rate = step.rate[[m for m, _ in step.params].index(n)]
        assert_close(rate, (0.5 * roots[n] / mean).clamp(max=1.0))
    assert max(float(r.max()) for r in step.rate) == 1.0  # the cap is reached somewhere


def test_lr_zero_leaves_every_weight_bit_for_bit():
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    prior = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    for rule in ("sgd", "rms"):
        step = Adaptation(model, DynamicSettings(lr=0.0, rule=rule, decay=0.3), prior)
        with_gradients(model)
        step.step()
        for n, t in model.state_dict().items():
            assert torch.equal(t, before[n]), n


def test_the_rms_rule_needs_this_models_prior():
    model = small_model()
    with pytest.raises(ConfigError, match="the 'rms' rule needs the mean squared gradients"):
        Adaptation(model, DynamicSettings(lr=1e-3), None)
    with pytest.raises(ConfigError, match="another model's"):
        Adaptation(model, DynamicSettings(lr=1e-3), {"decoder.weight": torch.ones(11, 8)})


def test_the_prior_is_a_mean_of_squares_and_leaves_the_model_alone():
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    tokens = np.random.default_rng(0).integers(0, 11, 200)
    prior = gradient_prior(model, split_batches(tokens, 1, 10))
    assert set(prior) == {n for n, _ in model.named_parameters()}
    assert all(v.shape == p.shape and (v >= 0).all() for (n, p), v in
               zip(model.named_parameters(), prior.values()))
    assert all(float(v.sum()) > 0 for v in prior.values())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("fields, match", [
    ({"lr": -1.0}, "`lr` must be a number >= 0"),
    ({"lr": float("inf")}, "`lr` must be a number >= 0"),
    ({"lr": 0.1, "rule": "adam"}, "unknown `rule` 'adam'; choose one of rms, sgd"),
    ({"lr": 0.1, "decay": 1.5}, r"`decay` must be in \[0, 1\]"),
    ({"lr": 0.1, "segment": 0}, "`segment` must be a positive integer"),
])
def test_bad_settings_name_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        DynamicSettings(**fields)
