"""The hand-written BPTT engine and the truncation policies, against autograd references."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlm.errors import ConfigError
from seqlm.models.bptt import Truncation, rnn_recurrence, scale_grad, unroll
from seqlm.models.truncation import keep_scales

DT = torch.float64
ACT = {"tanh": torch.tanh, "relu": torch.relu}


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_thread):
    """These tensors are tiny; a second thread only adds waits when the other core is busy."""


def make_problem(T, B, H, seed, *, h0_grad=True, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    xw = torch.randn(T, B, H, generator=g, dtype=DT).requires_grad_()
    h0 = torch.randn(B, H, generator=g, dtype=DT).requires_grad_(h0_grad)
    w = (torch.randn(H, H, generator=g, dtype=DT) * scale / math.sqrt(H)).requires_grad_()
    go = torch.randn(T, B, H, generator=g, dtype=DT)  # dL/d outputs
    gh = torch.randn(B, H, generator=g, dtype=DT)  # dL/d h_T
    return xw, h0, w, go, gh


def grads(loss, *tensors):
    wanted = [t for t in tensors if t.requires_grad]
    got = iter(torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True))
    return [next(got) if t.requires_grad else None for t in tensors]


def textbook_loop(xw, h0, w, act):
    """The chapter's RNN as a plain Python loop through autograd: the reference."""
    h, outs = h0, []
    for t in range(xw.shape[0]):
        h = act(xw[t] + h @ w.t())
        outs.append(h)
    return torch.stack(outs), h


def assert_close(a, b, tol=1e-10):
    if a is None or b is None:
        assert a is None and b is None
        return
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- Truncation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("window", Truncation("window")),
        ("full", Truncation("full")),
        ("tau:1", Truncation("tau", k=1)),
        ("tau:35", Truncation("tau", k=35)),
        ("random:0.25", Truncation("random", p=0.25)),
        ("random:1", Truncation("random", p=1.0)),
    ],
)
def test_parse_accepted_forms(text, expected):
    assert Truncation.parse(text) == expected


@given(k=st.integers(1, 10_000))
def test_tau_text_round_trips(k):
    t = Truncation("tau", k=k)
    assert str(t) == f"tau:{k}" and Truncation.parse(str(t)) == t


@given(p=st.floats(min_value=1e-9, max_value=1.0))
def test_random_text_round_trips(p):
    t = Truncation("random", p=p)
    assert Truncation.parse(str(t)) == t


def test_default_is_the_books_window():
    assert str(Truncation()) == "window"


@pytest.mark.parametrize(
    "text",
    ["", "tau", "tau:", "tau:0", "tau:-2", "tau:1.5", "tau: 3", "random:0", "random:1.5",
     "random:nan", "random:", "random:x", "window:3", "Full", "tbptt"],
)
def test_parse_rejects_other_text_and_lists_the_forms(text):
    with pytest.raises(ConfigError, match=r"'tau:K'.*'random:P'"):
        Truncation.parse(text)


@pytest.mark.parametrize(
    "kwargs",
    [dict(kind="tau"), dict(kind="tau", k=0), dict(kind="tau", k=True), dict(kind="window", k=3),
     dict(kind="random", p=0.0), dict(kind="random"), dict(kind="full", p=0.5), dict(kind="tbptt")],
)
def test_constructor_validates(kwargs):
    with pytest.raises(ConfigError):
        Truncation(**kwargs)


# ----------------------------------------------------------------------------- the engine


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(1, 9), B=st.integers(1, 4), H=st.integers(1, 6), seed=st.integers(0, 10**6),
    nonlinearity=st.sampled_from(["tanh", "relu"]), h0_grad=st.booleans(),
    scale=st.sampled_from([0.3, 1.0, 2.5]),
)
def test_engine_matches_autograd_loop(T, B, H, seed, nonlinearity, h0_grad, scale):
    xw, h0, w, go, gh = make_problem(T, B, H, seed, h0_grad=h0_grad, scale=scale)
    out, h_t = rnn_recurrence(xw, h0, w, nonlinearity=nonlinearity)
    ref_out, ref_h = textbook_loop(xw, h0, w, ACT[nonlinearity])
    assert_close(out, ref_out)
    assert_close(h_t, ref_h)
    got = grads((out * go).sum() + (h_t * gh).sum(), xw, h0, w)
    want = grads((ref_out * go).sum() + (ref_h * gh).sum(), xw, h0, w)
    for a, b in zip(got, want):
        assert_close(a, b)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("truncation", ["window", "random:0.5"])
def test_float32_engine_matches_the_float64_one(nonlinearity, truncation):
    """float32 CPU tensors take the oneDNN products (seqlm.models.fast) where torch has them;
    they agree with the float64 engine to float32 tolerance, random:P scales included."""
    xw, h0, w, go, gh = make_problem(9, 5, 16, 3, scale=1.0)
    results = []
    for dtype in (torch.float64, torch.float32):
        args = [t.detach().to(dtype).requires_grad_() for t in (xw, h0, w)]
        out, h_t = rnn_recurrence(*args, nonlinearity=nonlinearity, truncation=truncation,
                                  generator=torch.Generator().manual_seed(5))
        loss = (out * go.to(dtype)).sum() + (h_t * gh.to(dtype)).sum()
        results.append([out, *grads(loss, *args)])
    for want, got in zip(*results):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_only_the_inputs_that_require_grad_get_one():
    xw, h0, w, go, _ = make_problem(6, 3, 4, 1, h0_grad=False)
    xw.requires_grad_(False)
    out, _ = rnn_recurrence(xw, h0, w)
    (out * go).sum().backward()
    ref_out, _ = textbook_loop(xw, h0, w, torch.tanh)
    (want,) = torch.autograd.grad((ref_out * go).sum(), w)
    assert xw.grad is None and h0.grad is None
    assert_close(w.grad, want)


def test_window_and_full_are_the_same_inside_one_call():
    xw, h0, w, go, _ = make_problem(7, 2, 3, 2)
    a = grads((rnn_recurrence(xw, h0, w, truncation="window")[0] * go).sum(), xw, h0, w)
    b = grads((rnn_recurrence(xw, h0, w, truncation="full")[0] * go).sum(), xw, h0, w)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_engine_rejects_bad_arguments():
    xw, h0, w, _, _ = make_problem(3, 2, 4, 0)
    with pytest.raises(ConfigError, match="nonlinearity 'sigmoid'"):
        rnn_recurrence(xw, h0, w, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="weight_hh must be"):
        rnn_recurrence(xw, h0, w[:, :3])
    with pytest.raises(ValueError, match="h0 must be"):
        rnn_recurrence(xw, h0[:1], w)
    with pytest.raises(ValueError, match="T >= 1"):
        rnn_recurrence(xw[:0], h0, w)
    with pytest.raises(ConfigError):
        rnn_recurrence(xw, h0, w, truncation="tau:0")


def test_zero_initial_state_by_default():
    xw, _, w, _, _ = make_problem(4, 2, 3, 5)
    out, _ = rnn_recurrence(xw, None, w)
    ref, _ = textbook_loop(xw, torch.zeros(2, 3, dtype=DT), w, torch.tanh)
    assert_close(out, ref)


# ----------------------------------------------------------------------------- tau:K


def tau_reference(xw, h0, w, go, k, act):
    """For each t, recompute h_t from the detached h_{t-k} and sum the per-term gradients.

    h_{t-k} for t-k < 0 is the start of the sequence: the initial state h_0 itself (t = k-1
    included), which is an input of a reached step and so receives the gradient.
    """
    with torch.no_grad():
        states, _ = textbook_loop(xw, h0, w, act)
    wrt = [xw, h0, w]
    total = [torch.zeros_like(t) for t in wrt]
    for t in range(xw.shape[0]):
        start = t - k + 1
        h = h0 if start <= 0 else states[start - 1].detach()
        for i in range(max(start, 0), t + 1):
            h = act(xw[i] + h @ w.t())
        for acc, g in zip(total, grads((h * go[t]).sum(), *wrt)):
            acc += g
    return total


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 7, 9])
def test_tau_engine_unroll_and_reference_agree(k, nonlinearity):
    xw, h0, w, go, _ = make_problem(7, 3, 4, 10 + k, scale=1.5)
    act = ACT[nonlinearity]
    want = tau_reference(xw, h0, w, go, k, act)
    out, _ = rnn_recurrence(xw, h0, w, nonlinearity=nonlinearity, truncation=f"tau:{k}")
    engine = grads((out * go).sum(), xw, h0, w)
    out_u, _ = unroll(lambda x, h: act(x + h @ w.t()), xw, h0, truncation=f"tau:{k}")
    via_unroll = grads((out_u * go).sum(), xw, h0, w)
    for a, b, c in zip(engine, via_unroll, want):
        assert_close(a, c)
        assert_close(b, c)


def test_tau_cuts_each_term_after_k_steps():
    T, k, t = 9, 3, 6
    xw, h0, w, go, _ = make_problem(T, 2, 4, 3, scale=1.5)
    one_term = torch.zeros_like(go)
    one_term[t] = go[t]
    cut = grads((rnn_recurrence(xw, h0, w, truncation=f"tau:{k}")[0] * one_term).sum(), xw)[0]
    full = grads((rnn_recurrence(xw, h0, w)[0] * one_term).sum(), xw)[0]
    assert torch.all(cut[: t - k + 1] == 0)  # steps <= t-k get nothing from l_t
    assert torch.all(full[: t - k + 1].abs().sum((1, 2)) > 0)  # ... which full BPTT reaches
    assert_close(cut[t - k + 1 :], full[t - k + 1 :])


def test_tau_at_least_the_length_is_full_bptt():
    xw, h0, w, go, gh = make_problem(5, 2, 3, 4)
    def loss(tr):
        out, h_t = rnn_recurrence(xw, h0, w, truncation=tr)
        return (out * go).sum() + (h_t * gh).sum()
    for a, b in zip(grads(loss("tau:5"), xw, h0, w), grads(loss("full"), xw, h0, w)):
        assert torch.equal(a, b)


def test_tau_through_unroll_keeps_an_lstm_state_tuple():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 4).double()
    x = torch.randn(6, 2, 3, dtype=DT)
    go = torch.randn(6, 2, 4, dtype=DT)
    out, (h, c) = unroll(lambda x_t, s: cell(x_t, s), x, None, truncation="tau:2")
    ref_out, (ref_h, ref_c) = unroll(lambda x_t, s: cell(x_t, s), x, None)
    assert_close(out, ref_out)
    assert_close(c, ref_c)
    # Per-term reference: term t only sees the cell inputs of steps t-1 and t.
    params = list(cell.parameters())
    want = [torch.zeros_like(p) for p in params]
    hs, cs = _lstm_states(cell, x)
    for t in range(6):
        s = None if t < 2 else (hs[t - 2], cs[t - 2])
        for i in range(max(t - 1, 0), t + 1):
            s = cell(x[i], s)
        for acc, g in zip(want, torch.autograd.grad((s[0] * go[t]).sum(), params)):
            acc += g
    for got, ref in zip(torch.autograd.grad((out * go).sum(), params), want):
        assert_close(got, ref)


def _lstm_states(cell, x):
    hs, cs, s = [], [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            s = cell(x[t], s)
            hs.append(s[0])
            cs.append(s[1])
    return torch.stack(hs), torch.stack(cs)


# ----------------------------------------------------------------------------- random:P


def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 2, dtype=DT, requires_grad=True)
    y = scale_grad(x, 2.5)
    assert torch.equal(y, x)
    (y * torch.arange(6.0, dtype=DT).view(3, 2)).sum().backward()
    assert torch.equal(x.grad, 2.5 * torch.arange(6.0, dtype=DT).view(3, 2))


def test_keep_scales_are_zero_or_inverse_p_and_seeded():
    a = keep_scales(200, 0.3, torch.Generator().manual_seed(1))
    assert set(a) == {0.0, 1 / 0.3}
    assert a == keep_scales(200, 0.3, torch.Generator().manual_seed(1))
    assert a != keep_scales(200, 0.3, torch.Generator().manual_seed(2))


def random_grads(xw, h0, w, go, p, seed, via="engine"):
    gen = torch.Generator().manual_seed(seed)
    if via == "engine":
        out, _ = rnn_recurrence(xw, h0, w, truncation=f"random:{p}", generator=gen)
    else:
        step = lambda x, h: torch.tanh(x + h @ w.t())
        out, _ = unroll(step, xw, h0, truncation=f"random:{p}", generator=gen)
    return grads((out * go).sum(), xw, h0, w)


def test_random_one_is_full_bptt_exactly():
    xw, h0, w, go, _ = make_problem(6, 2, 3, 7)
    engine_full = grads((rnn_recurrence(xw, h0, w)[0] * go).sum(), xw, h0, w)
    step = lambda x, h: torch.tanh(x + h @ w.t())
    unroll_full = grads((unroll(step, xw, h0, truncation="full")[0] * go).sum(), xw, h0, w)
    for via, full in (("engine", engine_full), ("unroll", unroll_full)):
        for a, b in zip(random_grads(xw, h0, w, go, 1.0, 0, via), full):
            assert torch.equal(a, b)


def test_random_is_deterministic_given_the_generator_and_same_in_both_paths():
    xw, h0, w, go, _ = make_problem(12, 2, 3, 8)
    a = random_grads(xw, h0, w, go, 0.5, 3)
    b = random_grads(xw, h0, w, go, 0.5, 3)
    c = random_grads(xw, h0, w, go, 0.5, 3, via="unroll")
    d = random_grads(xw, h0, w, go, 0.5, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for x, y in zip(a, c):
        assert_close(x, y)
    assert not all(torch.equal(x, y) for x, y in zip(a, d))


Z_MAX = 5.0  # with ~60 gradient entries, P(max |z| > 5) < 60 * 5.7e-7 under the CLT


def z_scores(samples, target):
    """|mean - target| / standard error, per entry; entries that never vary must match."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    fixed = se == 0
    assert torch.allclose(mean[fixed], target[fixed], rtol=1e-12, atol=1e-12)
    return ((mean - target).abs() / se)[~fixed]


def test_random_truncation_is_unbiased():
    xw, h0, w, go, _ = make_problem(5, 2, 3, 9, scale=1.2)
    full_grads = grads((rnn_recurrence(xw, h0, w)[0] * go).sum(), xw, h0, w)
    full = torch.cat([g.flatten() for g in full_grads])
    draws = torch.stack([
        torch.cat([g.flatten() for g in random_grads(xw, h0, w, go, 0.5, seed)])
        for seed in range(3000)
    ])
    z = z_scores(draws, full)
    assert z.numel() > 0 and z.max() < Z_MAX
    # The same statistic detects the bias of cutting without the 1/P reweighting.
    biased = torch.stack([
        torch.cat([g.flatten() for g in unweighted_cut_grads(xw, h0, w, go, 0.5, seed)])
        for seed in range(300)
    ])
    assert z_scores(biased, full).max() > Z_MAX


def unweighted_cut_grads(xw, h0, w, go, p, seed):
    """Random cuts with xi_t in {0, 1}: a biased estimator, to show the test has power."""
    keep = [s * p for s in keep_scales(xw.shape[0], p, torch.Generator().manual_seed(seed))]
    h, outs = h0, []
    for t in range(xw.shape[0]):
        h = torch.tanh(xw[t] + scale_grad(h, keep[t]) @ w.t())
        outs.append(h)
    return grads((torch.stack(outs) * go).sum(), xw, h0, w)


def test_unroll_without_autograd_runs_the_plain_loop_once_per_step():
    calls = []
    def step(x, h):
        calls.append(1)
        return torch.tanh(x + h)
    xw, h0 = torch.randn(8, 2, 3, dtype=DT), torch.zeros(2, 3, dtype=DT)
    with torch.no_grad():
        out, _ = unroll(step, xw, h0, truncation="tau:2")
    assert len(calls) == 8
    torch.testing.assert_close(out, textbook_loop(xw, h0, torch.eye(3, dtype=DT), torch.tanh)[0])
    unroll(step, xw.requires_grad_(), h0, truncation="tau:2")
    assert len(calls) == 8 + 2 + 6 * 2  # K plain steps, then K recomputed steps per later term
