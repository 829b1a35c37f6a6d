"""The book's exercise on gradient clipping, trained for real (needs The Time Machine)."""

import pytest

from seqlm.exercises import clipping_exercise, preset_configs
from seqlm.presets import PRESETS


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_thread):
    """Batch 32 x 512 units: a second thread only adds waits when the other core is busy."""


def test_the_exercise_runs_the_d2l_scratch_preset_with_overrides():
    data, model, train = preset_configs({"lr": 2.0, "corpus": "my.txt"})
    assert data.corpus == "my.txt" and data.max_tokens == PRESETS["d2l-scratch"]["max_tokens"]
    assert model["hidden_size"] == 512 and model["init"] == "d2l" and "vocab_size" not in model
    assert train.optimizer == "sgd" and train.lr == 2.0 and train.clip == 1.0


@pytest.mark.slow
def test_clipping_exercise_spikes_and_blows_up_only_without_the_clip(data_env):
    result = clipping_exercise(steps=10)
    off, on = result["runs"]["off"], result["runs"]["on"]
    assert off["clip"] == 0 and on["clip"] == 1.0 and len(off["grad_norm"]) == 10
    first = next(i for i, n in enumerate(on["grad_norm"]) if n > 1.0)  # the clip acts here
    # Identical runs up to and including the first step whose pre-clip norm exceeds 1 ...
    assert off["grad_norm"][: first + 1] == on["grad_norm"][: first + 1]
    # ... then the unclipped run's gradients and perplexity explode; the clipped one learns.
    assert min(off["grad_norm"][first + 1:]) > 10 * max(on["grad_norm"][first + 1:])
    assert off["ppl"][-1] > 1e6 and on["ppl"][-1] < on["ppl"][0]
    assert off["val_ppl"] > 1e6 > 30 > on["val_ppl"]
