"""Scoring and generating with the neural cache and dynamic evaluation through
``LanguageModel``: the static scores exactly when they are switched off (λ = 0, lr = 0), the
trained weights untouched, the effects the papers describe on synthetic texts, and every cell
and output layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import seqlm
from seqlm.checkpoint import save_checkpoint
from seqlm.config import ModelConfig
from seqlm.dynamic_eval import DynamicSettings
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.neural_cache import CacheSettings
from seqlm.tokenize import CharTokenizer

TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding"
OFF_CACHE, OFF_DYNAMIC = CacheSettings(200, 0.0, 1.0), DynamicSettings(0.0, "sgd")
CORES = [(cell, "scratch") for cell in ("rnn", "gru", "lstm", "mingru", "minlstm")] + [
    (cell, "fused") for cell in ("rnn", "gru", "lstm")]
FAST = {("gru", "scratch", "full"), ("lstm", "fused", "adaptive"), ("mingru", "scratch", "full")}
MATRIX = [pytest.param(cell, impl, output, marks=() if (cell, impl, output) in FAST
                       else pytest.mark.slow)
          for cell, impl in CORES for output in ("full", "adaptive")]


def saved(directory, *, cell="gru", impl="scratch", output="full", text=TEXT,
          input_scale=1.0, **fields):
    """A run directory with an untrained model: ``<directory>/checkpoints/best``."""
    torch.manual_seed(0)
    tok = CharTokenizer.fit(text)
    fields = {"num_layers": 2, "hidden_size": 24, **fields}
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), cell=cell, impl=impl, output=output,
                              **fields))
    if input_scale != 1.0:
        with torch.no_grad():
            model.embedding.weight *= input_scale
    save_checkpoint(directory / "checkpoints" / "best", model, tok)
    return directory


pytestmark = pytest.mark.usefixtures("single_thread")  # one-row reads of tiny tensors


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return seqlm.load(saved(tmp_path_factory.mktemp("reading") / "run"))


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """An untrained RNN whose input outweighs its state (embeddings scaled up): its state
    after a token is alike wherever the token is, as a trained model's would be."""
    return seqlm.load(saved(tmp_path_factory.mktemp("sharp") / "run", cell="rnn",
                            num_layers=1, embedding_dim=8, input_scale=4.0,
                            text=TEXT + "abcQz!"))


@pytest.mark.parametrize("cell, impl, output", MATRIX)  # every core; a few in the fast subset
def test_switched_off_they_score_as_the_static_model(tmp_path, cell, impl, output):
    lm = seqlm.load(saved(tmp_path, cell=cell, impl=impl, output=output))
    assert lm.model.adaptive == (output == "adaptive")
    static = lm.score(TEXT, top=3)
    assert static.evaluation == "static" and static.static_logprobs is None
    cached = lm.score(TEXT, top=3, cache=OFF_CACHE)
    assert cached.evaluation == "cache"
    np.testing.assert_array_equal(cached.logprobs, static.logprobs)  # exactly
    np.testing.assert_array_equal(cached.static_logprobs, static.logprobs)
    np.testing.assert_array_equal(cached.top_ids, static.top_ids)
    adapted = lm.score(TEXT, dynamic=OFF_DYNAMIC)
    assert adapted.evaluation == "dynamic"
    np.testing.assert_array_equal(adapted.logprobs, adapted.static_logprobs)  # exactly
    # read in 20-token segments instead of one piece: equal to float rounding
    np.testing.assert_allclose(adapted.logprobs, static.logprobs, rtol=0, atol=1e-4)
    both = lm.score(TEXT, cache=CacheSettings(200, 0.2, 1.0),
                    dynamic=DynamicSettings(0.3, "sgd", segment=8))
    assert both.evaluation == "cache+dynamic" and np.isfinite(both.logprobs).all()
    assert not np.allclose(both.logprobs, static.logprobs)
    assert lm.generate("the t", max_new_tokens=12, temperature=0, cache=OFF_CACHE) == \
        lm.generate("the t", max_new_tokens=12, temperature=0)


def test_the_cache_expects_a_rare_token_the_second_time(sharp):
    base = "the time traveller (for so it will be convenient to speak of him) "
    text = base + "zQ! " + base + "zQ! "
    lm = sharp
    q = [i for i, t in enumerate(lm.score(text).tokens) if t == "Q"]
    static = lm.score(text).logprobs
    cached = lm.score(text, cache=CacheSettings(1000, 0.3, 1.0))
    assert cached.logprobs[q[0]] < static[q[0]]  # nothing remembered it: (1 − λ) p_model
    assert cached.logprobs[q[1]] > static[q[1]] + 1.0  # over e times likelier the second time
    np.testing.assert_array_equal(cached.static_logprobs, static)


def test_dynamic_evaluation_learns_a_repetitive_text_and_leaves_the_weights(tmp_path):
    text = "abcabdabcabe" * 15
    run = saved(tmp_path, text=text)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    on_disk = weights.read_bytes()
    lm = seqlm.load(run)
    in_memory = copy.deepcopy(lm.model.state_dict())
    static = lm.score(text).nll
    adapted = lm.score(text, dynamic=DynamicSettings(0.5, "sgd", decay=0.0, segment=10))
    assert adapted.nll < static - 0.3
    np.testing.assert_allclose(adapted.static_logprobs, lm.score(text).logprobs, atol=1e-4)
    lm.generate("abcab", max_new_tokens=5, dynamic=DynamicSettings(0.5, "sgd"))
    assert weights.read_bytes() == on_disk
    assert all(torch.equal(t, in_memory[k]) for k, t in lm.model.state_dict().items())
    assert all(p.grad is None for p in lm.model.parameters())


def test_the_cache_can_repeat_a_prompt_and_dynamic_evaluation_adapt_to_it(sharp):
    lm = sharp
    prompt = "abcabcabcabcabcabcabcabcabcabcabcabc"  # no such text in its training
    plain = lm.generate(prompt, max_new_tokens=9, temperature=0)
    copied = lm.generate(prompt, max_new_tokens=9, temperature=0,
                         cache=CacheSettings(100, 0.9, 10.0))
    assert copied == prompt + "abcabcabc" != plain
    adapted = lm.generate(prompt, max_new_tokens=9, temperature=0,
                          dynamic=DynamicSettings(1.0, "sgd", segment=6))
    assert adapted.count("abc") > plain.count("abc")
    sampled = lm.generate(prompt, max_new_tokens=9, seed=1, cache=CacheSettings(100, 0.5, 1.0),
                          dynamic=DynamicSettings(0.5, "sgd"))
    assert sampled.startswith(prompt) and len(sampled) == len(prompt) + 9
    stopped = lm.generate(prompt, max_new_tokens=9, temperature=0, stop="ca",
                          cache=CacheSettings(100, 0.9, 10.0))
    assert stopped == prompt + "ab"


def test_stored_settings_are_asked_for_with_true(lm):
    with pytest.raises(ConfigError, match="`cache` True asks for settings chosen on the "
                       "validation split, and none are stored .*seqlm evaluate RUN --cache"):
        lm.score(TEXT, cache=True)
    with pytest.raises(ConfigError, match="`dynamic` must be None, True"):
        lm.score(TEXT, dynamic=0.1)
    with pytest.raises(ConfigError, match="the 'rms' rule needs the mean squared gradients"):
        lm.score(TEXT, dynamic=DynamicSettings(1e-4, "rms"))
    with pytest.raises(ConfigError, match="no tokens"):
        lm.score("", cache=OFF_CACHE)
    one = lm.score("t", cache=OFF_CACHE, dynamic=OFF_DYNAMIC)
    assert one.logprobs.tolist() == lm.score("t").logprobs.tolist()
