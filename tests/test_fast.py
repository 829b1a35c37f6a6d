"""The CPU fast paths of training (seqlm.models.fast) against the plain torch calls."""

import pytest
import torch

from seqlm.config import ModelConfig
from seqlm.models import RNNLM, fast


def test_onednn_decoder_matches_nn_linear_forward_and_backward():
    """The word model's decoder fast path (oneDNN products) against nn.Linear."""
    if not fast.ONEDNN:
        pytest.skip("this torch build has no oneDNN linear")
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=1100, hidden_size=240, impl="fused"))
    assert model.decoder.weight.numel() >= fast.ONEDNN_MIN_WEIGHT
    h = torch.randn(3, 4, 240, requires_grad=True)
    g = torch.randn(3, 4, 1100)
    model.decode(h).backward(g)
    got = [h.grad.clone(), model.decoder.weight.grad.clone(), model.decoder.bias.grad.clone()]
    h.grad = None
    model.zero_grad()
    want_out = model.decoder(h)
    want_out.backward(g)
    torch.testing.assert_close(model.decode(h), want_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, [h.grad, model.decoder.weight.grad, model.decoder.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps nn.Linear's path
        assert model.decode(h).dtype == torch.bfloat16
