"""The generation steppers (seqlm.models.stepper): both backends equal forward, one token at a
time, behind one interface."""

import numpy as np
import pytest
import torch

from seqlm.config import ModelConfig
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.models.stepper import NumpyStepper, Stepper, TorchStepper


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "rnn-relu"])
@pytest.mark.parametrize("impl,embedding_dim,num_layers", [("scratch", None, 1),
                                                           ("fused", None, 2),
                                                           ("scratch", 6, 2)])
def test_stepper_equals_forward_one_token_at_a_time(cell, impl, embedding_dim, num_layers,
                                                    backend):
    """The generation fast paths (RNNLM.stepper, torch and numpy) compute forward's logits and
    states."""
    torch.manual_seed(0)
    cell, _, nonlinearity = cell.partition("-")
    model = RNNLM(ModelConfig(vocab_size=11, cell=cell, impl=impl, hidden_size=8,
                              num_layers=num_layers, embedding_dim=embedding_dim,
                              nonlinearity=nonlinearity or "tanh", dropout=0.3)).eval()
    step = model.stepper(backend=backend)
    tokens = torch.randint(0, 11, (3, 6))
    want, want_state = model(tokens)
    state = model.begin_state(3)
    with torch.inference_mode():
        for t in range(tokens.shape[1]):
            logits, state = step(tokens[:, t], state)
            torch.testing.assert_close(logits, want[:, t], rtol=1e-5, atol=1e-6)
    for got, ref in zip(state if cell == "lstm" else (state,),
                        want_state if cell == "lstm" else (want_state,)):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_stepper_backend_choice():
    """'auto' takes numpy only for one float32 CPU row; 'numpy' refuses what it cannot run."""
    model = RNNLM(ModelConfig(vocab_size=11, cell="gru", hidden_size=8))
    assert isinstance(model.stepper(batch_size=1), NumpyStepper)
    assert not isinstance(model.stepper(batch_size=3), NumpyStepper)
    assert not isinstance(model.stepper(), NumpyStepper)
    with pytest.raises(ConfigError, match="backend"):
        model.stepper(backend="jax")
    model.to(torch.bfloat16)
    assert not isinstance(model.stepper(batch_size=1), NumpyStepper)
    with pytest.raises(ConfigError, match="float32 model on the CPU"):
        model.stepper(backend="numpy")


def test_numpy_stepper_takes_a_state_that_requires_grad_and_copies_the_weights():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=5, cell="lstm", hidden_size=4))
    step = model.stepper(backend="numpy")
    state = tuple(s.requires_grad_() for s in model.begin_state(1))
    logits, _ = step(torch.tensor([2]), state)
    with torch.no_grad():
        model.decoder.bias.add_(1.0)  # read when the stepper was built, not now
    again, _ = step(torch.tensor([2]), state)
    torch.testing.assert_close(logits, again)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_steps_is_the_decoding_loop_on_either_backend(backend):
    """Stepper.steps: greedy picks equal the argmax of stepping by hand, in the backend's own
    arrays; the caller can stop the loop early."""
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=9, cell="gru", hidden_size=6)).eval()
    stepper = model.stepper(batch_size=1, backend=backend)
    assert isinstance(stepper, Stepper)
    assert isinstance(stepper, NumpyStepper if backend == "numpy" else TorchStepper)
    state = model.begin_state(1)
    logits = model.next_logits(state)
    steps = list(stepper.steps(logits, state, 7, lambda x: x.argmax(-1), greedy=True))
    assert all(isinstance(t, np.ndarray if backend == "numpy" else torch.Tensor)
               for t, _ in steps)
    want, l, s = [], logits, state
    for _ in range(7):
        token = l.argmax(-1)
        want.append(int(token))
        l, s = stepper(token, s)
    assert [int(t[0]) for t, _ in steps] == want
    first = []
    for token, _ in stepper.steps(logits, state, 7, lambda x: x.argmax(-1), greedy=True):
        first.append(int(token[0]))
        if len(first) == 3:
            break
    assert first == want[:3]
