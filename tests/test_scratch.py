"""Scratch recurrent cores against torch's fused twins, gradcheck, init and the factory."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from seqlm.errors import ConfigError
from seqlm.models.scratch import ScratchGRU, ScratchLSTM, ScratchRNN, make_core

B, T, I, H = 3, 5, 4, 6
CASES = [  # (cell, nonlinearity, num_layers)
    ("rnn", "tanh", 1), ("rnn", "tanh", 2), ("rnn", "relu", 1), ("rnn", "relu", 2),
    ("gru", "tanh", 1), ("gru", "tanh", 2), ("lstm", "tanh", 1), ("lstm", "tanh", 2),
]


def _state(cell, num_layers, dtype, generator):
    def draw():
        return torch.randn(num_layers, B, H, dtype=dtype, generator=generator)
    return (draw(), draw()) if cell == "lstm" else draw()


def _flat(state):
    return torch.cat([s.flatten() for s in state]) if isinstance(state, tuple) else state.flatten()


def _run(core, x, hx):
    """Forward and backward of a loss touching every output and the final state."""
    core.zero_grad()
    x = x.clone().requires_grad_(True)
    out, h_n = core(x, hx)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    ((out * weights).sum() + (_flat(h_n) ** 2).sum()).backward()
    grads = {name: p.grad.clone() for name, p in core.named_parameters()}
    return out, h_n, x.grad, grads


@pytest.mark.parametrize("direction", ["scratch_to_fused", "fused_to_scratch"])
@pytest.mark.parametrize("cell,nonlinearity,num_layers", CASES)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_scratch_matches_fused_twin(cell, nonlinearity, num_layers, direction, dtype, atol):
    gen = torch.Generator().manual_seed(7)
    scratch = make_core(cell, "scratch", I, H, num_layers, nonlinearity=nonlinearity).to(dtype)
    fused = make_core(cell, "fused", I, H, num_layers, nonlinearity=nonlinearity).to(dtype)
    src, dst = (scratch, fused) if direction == "scratch_to_fused" else (fused, scratch)
    assert [n for n, _ in scratch.named_parameters()] == [n for n, _ in fused.named_parameters()]
    dst.load_state_dict(src.state_dict())
    x = torch.randn(B, T, I, dtype=dtype, generator=gen)
    for hx in (None, _state(cell, num_layers, dtype, gen)):
        out_s, h_s, dx_s, g_s = _run(scratch, x, hx)
        out_f, h_f, dx_f, g_f = _run(fused, x, hx)
        assert out_s.shape == (B, T, H)
        torch.testing.assert_close(out_s, out_f, atol=atol, rtol=0)
        torch.testing.assert_close(_flat(h_s), _flat(h_f), atol=atol, rtol=0)
        torch.testing.assert_close(dx_s, dx_f, atol=atol, rtol=0)
        for name in g_f:
            torch.testing.assert_close(g_s[name], g_f[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradcheck_each_scratch_cell(cell):
    core = make_core(cell, "scratch", 3, 4, 2).double()
    names = [n for n, _ in core.named_parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.double, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in core.parameters()]

    def fn(x, h0, c0, *params):
        hx = (h0, c0) if cell == "lstm" else h0
        out, h_n = functional_call(core, dict(zip(names, params)), (x, hx))
        return (out, *h_n) if cell == "lstm" else (out, h_n)

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params))


@pytest.mark.parametrize("cls", [ScratchRNN, ScratchGRU, ScratchLSTM])
def test_integer_input_is_one_hot_lookup(cls):
    core = cls(7, H, 2).double()
    ids = torch.randint(0, 7, (B, T))
    one_hot = nn.functional.one_hot(ids, 7).double()
    out_ids, h_ids = core(ids)
    out_dense, h_dense = core(one_hot)
    torch.testing.assert_close(out_ids, out_dense, atol=1e-12, rtol=0)
    torch.testing.assert_close(_flat(h_ids), _flat(h_dense), atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unbatched_input_matches_batch_of_one(cell):
    core = make_core(cell, "scratch", I, H, 2).double()
    x = torch.randn(T, I, dtype=torch.double)
    out, h_n = core(x)
    out_b, h_b = core(x.unsqueeze(0))
    assert out.shape == (T, H)
    torch.testing.assert_close(out, out_b.squeeze(0))
    torch.testing.assert_close(_flat(h_n), _flat(h_b))


@pytest.mark.parametrize("impl", ["scratch", "fused"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_d2l_init_statistics(cell, impl):
    core = make_core(cell, impl, 200, 100, 2, init="d2l")
    weights = torch.cat([p.flatten() for n, p in core.named_parameters() if "weight" in n])
    assert abs(weights.std().item() - 0.01) < 0.0005
    assert abs(weights.mean().item()) < 0.0005
    assert all(torch.all(p == 0) for n, p in core.named_parameters() if "bias" in n)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_torch_init_is_uniform_in_one_over_sqrt_hidden(cell):
    core = make_core(cell, "scratch", 50, 64, 1)
    bound = 1 / math.sqrt(64)
    values = torch.cat([p.flatten() for p in core.parameters()])
    assert values.abs().max() <= bound
    assert values.max() > 0.95 * bound and values.min() < -0.95 * bound
    assert abs(values.std().item() - bound / math.sqrt(3)) < 0.005  # std of U(-a, a)


def test_dropout_between_layers_only_in_training():
    core = ScratchGRU(I, H, 2, dropout=0.5)
    plain = ScratchGRU(I, H, 2)
    plain.load_state_dict(core.state_dict())
    x = torch.randn(B, T, I)
    core.eval()
    torch.testing.assert_close(core(x)[0], plain(x)[0])
    core.train()
    assert not torch.allclose(core(x)[0], plain(x)[0])


def test_bad_state_shape_raises():
    core = ScratchLSTM(I, H, 2)
    with pytest.raises(ValueError, match="state"):
        core(torch.randn(B, T, I), torch.zeros(2, B, H))
    with pytest.raises(ValueError, match="input_size"):
        ScratchRNN(I, H)(torch.randn(B, T, I + 1))


@pytest.mark.parametrize("kwargs,match", [
    ({"cell": "transformer"}, "cell"),
    ({"impl": "cudnn"}, "impl"),
    ({"cell": "gru", "nonlinearity": "relu"}, "nonlinearity"),
    ({"cell": "lstm", "bptt_engine": "manual"}, "bptt_engine"),
    ({"impl": "fused", "bptt_engine": "manual"}, "bptt_engine"),
    ({"init": "xavier"}, "init"),
    ({"dropout": 1.0}, "dropout"),
    ({"hidden_size": 0}, "hidden_size"),
])
def test_make_core_rejects_bad_choices(kwargs, match):
    args = {"cell": "rnn", "impl": "scratch", "input_size": I, "hidden_size": H}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        make_core(args.pop("cell"), args.pop("impl"), args.pop("input_size"),
                  args.pop("hidden_size"), **args)


def test_fused_core_rejects_scratch_only_truncation():
    for text in ("tau:3", "random:0.5"):
        with pytest.raises(ConfigError, match="scratch"):
            make_core("gru", "fused", I, H, truncation=text)
    assert isinstance(make_core("lstm", "fused", I, H, truncation="full"), nn.LSTM)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_manual_bptt_engine_matches_autograd(nonlinearity):
    auto = ScratchRNN(I, H, 2, nonlinearity=nonlinearity).double()
    manual = ScratchRNN(I, H, 2, nonlinearity=nonlinearity, bptt_engine="manual").double()
    manual.load_state_dict(auto.state_dict())
    x = torch.randn(B, T, I, dtype=torch.double)
    hx = torch.randn(2, B, H, dtype=torch.double)
    out_a, h_a, dx_a, g_a = _run(auto, x, hx)
    out_m, h_m, dx_m, g_m = _run(manual, x, hx)
    torch.testing.assert_close(out_m, out_a)
    torch.testing.assert_close(h_m, h_a)
    torch.testing.assert_close(dx_m, dx_a)
    for name in g_a:
        torch.testing.assert_close(g_m[name], g_a[name], msg=name)


def _grad_of_last_output_wrt_input(core, x):
    x = x.clone().requires_grad_(True)
    out, _ = core(x)
    out[:, -1].sum().backward()
    return x.grad


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_tau_truncation_cuts_gradient_through_unroll(cell):
    x = torch.randn(B, T, I, dtype=torch.double)
    window = make_core(cell, "scratch", I, H).double()
    cut = make_core(cell, "scratch", I, H, truncation="tau:2").double()
    cut.load_state_dict(window.state_dict())
    g_window = _grad_of_last_output_wrt_input(window, x)
    g_cut = _grad_of_last_output_wrt_input(cut, x)
    assert g_window[:, 0].abs().sum() > 0  # without truncation the first step matters
    assert torch.all(g_cut[:, : T - 2] == 0)  # tau:2 reaches back two steps only
    torch.testing.assert_close(g_cut[:, -1], g_window[:, -1])
    with torch.no_grad():  # truncation changes gradients, never values
        torch.testing.assert_close(cut(x)[0], window(x)[0])


def test_random_truncation_with_probability_one_is_full_bptt():
    x = torch.randn(B, T, I, dtype=torch.double)
    full = ScratchLSTM(I, H).double()
    rand = ScratchLSTM(I, H, truncation="random:1").double()
    rand.load_state_dict(full.state_dict())
    torch.testing.assert_close(_grad_of_last_output_wrt_input(rand, x),
                               _grad_of_last_output_wrt_input(full, x))
