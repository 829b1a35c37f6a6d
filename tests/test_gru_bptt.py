"""The hand-written GRU BPTT engine against autograd, torch.nn.GRU and gradcheck."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from seqlm.errors import ConfigError
from seqlm.models.bptt import gru_recurrence
from seqlm.config import ModelConfig
from seqlm.models.scratch import ScratchGRU, make_core

DT = torch.float64
NAMES = ("xw", "h0", "weight_hh", "bias_hh")


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_thread):
    """These tensors are tiny; a second thread only adds waits when the other core is busy."""


def make_problem(T, B, H, seed, *, dtype=DT, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)
    xw = draw(T, B, 3 * H).requires_grad_()
    h0 = draw(B, H).requires_grad_()
    w = (draw(3 * H, H) * scale / H ** 0.5).requires_grad_()
    b = (draw(3 * H) * 0.5).requires_grad_()
    return [xw, h0, w, b], draw(T, B, H), draw(B, H)  # inputs, dL/d outputs, dL/d h_T


def autograd_loop(xw, h0, w, b):
    """ScratchGRU's own step function over time, through autograd: the reference."""
    step = ScratchGRU(1, h0.shape[-1]).step
    h, outs = h0, []
    for t in range(xw.shape[0]):
        h = step(w, b, xw[t], h)
        outs.append(h)
    return torch.stack(outs), h


def grads(loss, tensors):
    wanted = [t for t in tensors if t.requires_grad]
    got = iter(torch.autograd.grad(loss, wanted))
    return [next(got) if t.requires_grad else None for t in tensors]


def check_against(run, inputs, go, gh, tol):
    out, h_t = gru_recurrence(*inputs)
    ref_out, ref_h = run(*inputs)
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(h_t, ref_h, rtol=tol, atol=tol)
    got = grads((out * go).sum() + (h_t * gh).sum(), inputs)
    want = grads((ref_out * go).sum() + (ref_h * gh).sum(), inputs)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 8), B=st.integers(1, 4), H=st.integers(1, 6),
       seed=st.integers(0, 10**6), scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_engine_matches_the_autograd_step_loop(T, B, H, seed, scale):
    inputs, go, gh = make_problem(T, B, H, seed, scale=scale)
    check_against(autograd_loop, inputs, go, gh, 1e-10)


def torch_gru(xw, h0, w, b):
    """``torch.nn.GRU`` fed through an identity input map, so xw is its input projection."""
    H = h0.shape[-1]
    params = {"weight_ih_l0": torch.eye(3 * H, dtype=xw.dtype), "weight_hh_l0": w,
              "bias_ih_l0": torch.zeros(3 * H, dtype=xw.dtype), "bias_hh_l0": b}
    gru = torch.nn.GRU(3 * H, H).to(xw.dtype)
    out, h_n = functional_call(gru, params, (xw, h0.unsqueeze(0)))
    return out, h_n[0]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_engine_matches_torch_gru(dtype, tol):
    # float32 on the CPU runs the loop's products through oneDNN when torch has it
    inputs, go, gh = make_problem(9, 4, 16, 3, dtype=dtype)
    check_against(torch_gru, inputs, go, gh, tol)


def test_scratch_core_with_the_engine_matches_torch_gru_after_load_state_dict():
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 7, 2, batch_first=True).double()
    core = ScratchGRU(5, 7, 2, bptt_engine="manual").double()
    core.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 5, dtype=DT, requires_grad=True)
    hx = torch.randn(2, 3, 7, dtype=DT)
    (out, h), (ref_out, ref_h) = core(x, hx), ref(x, hx)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, ref_h, rtol=1e-10, atol=1e-10)
    loss, ref_loss = out.square().sum() + h.sum(), ref_out.square().sum() + ref_h.sum()
    params, ref_params = dict(core.named_parameters()), dict(ref.named_parameters())
    got = torch.autograd.grad(loss, [x, *params.values()])
    want = torch.autograd.grad(ref_loss, [x, *(ref_params[n] for n in params)])
    for name, a, b in zip(["x", *params], got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_gradcheck():
    inputs, _, _ = make_problem(3, 2, 2, 1)
    assert torch.autograd.gradcheck(lambda *a: gru_recurrence(*a), inputs)


@pytest.mark.parametrize("wanted", [(0,), (1,), (2,), (3,), (0, 2), (1, 3)])
def test_only_the_inputs_that_require_grad_get_one(wanted):
    inputs, go, _ = make_problem(5, 3, 4, 2)
    for i, t in enumerate(inputs):
        t.requires_grad_(i in wanted)
    (gru_recurrence(*inputs)[0] * go).sum().backward()
    ref_inputs = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    want = grads((autograd_loop(*ref_inputs)[0] * go).sum(), ref_inputs)
    for i, (t, ref) in enumerate(zip(inputs, want)):
        if i in wanted:
            torch.testing.assert_close(t.grad, ref, rtol=1e-10, atol=1e-10)
        else:
            assert t.grad is None


def test_zero_initial_state_by_default_and_no_grad_forward():
    (xw, h0, w, b), _, _ = make_problem(4, 2, 3, 5)
    out, _ = gru_recurrence(xw, None, w, b)
    torch.testing.assert_close(out, autograd_loop(xw, torch.zeros_like(h0), w, b)[0])
    with torch.no_grad():
        assert not gru_recurrence(xw, h0, w, b)[0].requires_grad


def test_engine_rejects_bad_shapes_and_dtypes():
    (xw, h0, w, b), _, _ = make_problem(3, 2, 4, 0)
    for args, match in [((xw[..., :-1], h0, w, b), "xw must be"),
                        ((xw[:0], h0, w, b), "T >= 1"),
                        ((xw, h0, w[:, :3], b), "weight_hh must be"),
                        ((xw, h0, w, b[:-3]), "bias_hh must be"),
                        ((xw, h0[:1], w, b), "h0 must be"),
                        ((xw, h0.float(), w, b), "dtype")]:
        with pytest.raises(ValueError, match=match):
            gru_recurrence(*args)


@pytest.mark.parametrize("truncation", ["tau:3", "random:0.5"])
def test_manual_gru_rejects_other_truncations_naming_the_fix(truncation):
    builders = [lambda: ModelConfig(vocab_size=5, cell="gru", bptt_engine="manual",
                                    truncation=truncation),
                lambda: make_core("gru", "scratch", 3, 4, bptt_engine="manual",
                                  truncation=truncation),
                lambda: ScratchGRU(3, 4, bptt_engine="manual", truncation=truncation)]
    for build in builders:
        with pytest.raises(ConfigError, match="use `bptt_engine` 'autograd'") as err:
            build()
        assert "\n" not in str(err.value) and truncation in str(err.value)


def test_manual_gru_accepts_window_and_full():
    for truncation in ("window", "full"):
        ModelConfig(vocab_size=5, cell="gru", bptt_engine="manual", truncation=truncation)
        core = make_core("gru", "scratch", 3, 4, bptt_engine="manual", truncation=truncation)
        assert core.bptt_engine == "manual" and "bptt_engine='manual'" in repr(core)
    with pytest.raises(ConfigError, match="bptt_engine"):
        ScratchGRU(3, 4, bptt_engine="jax")
