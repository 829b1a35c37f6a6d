"""Gradient-flow diagnostics against closed forms and explicit autograd references."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqlm.diagnostics import (
    gradient_flow,
    growth_summary,
    plot_gradient_flow,
    readout_loss,
    set_spectral_radius_,
    sweep,
    truncation_error,
)
from seqlm.diagnostics import cores
from seqlm.diagnostics.cores import mean_derivative, seeded_core
from seqlm.errors import ConfigError
from seqlm.models.bptt import rnn_recurrence

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_thread):
    """These tensors are tiny; a second thread only adds waits when the other core is busy."""


class LinearRNN(torch.nn.Module):
    """h_t = x_t W_ih^T + h_{t-1} W_hh^T with torch's interface: the closed-form case."""

    def __init__(self, input_size, weight_hh):
        super().__init__()
        hidden = weight_hh.shape[0]
        self.weight_ih_l0 = torch.nn.Parameter(torch.randn(hidden, input_size, dtype=DT))
        self.weight_hh_l0 = torch.nn.Parameter(weight_hh.clone())

    def forward(self, input, hx=None):
        hidden = self.weight_hh_l0.shape[0]
        h = hx[0] if hx is not None else input.new_zeros(input.shape[0], hidden)
        outs = []
        for t in range(input.shape[1]):
            h = input[:, t] @ self.weight_ih_l0.t() + h @ self.weight_hh_l0.t()
            outs.append(h)
        return torch.stack(outs, 1), h.unsqueeze(0)


def test_linear_rnn_jacobian_products_are_powers_of_one_half():
    torch.manual_seed(0)
    core = LinearRNN(3, 0.5 * torch.eye(5, dtype=DT))
    flow = gradient_flow(core, torch.randn(4, 60, 3, dtype=DT))
    want = torch.tensor([0.5**k for k in range(60)], dtype=DT)
    jac = torch.tensor(flow["jacobian_norm"], dtype=DT)
    torch.testing.assert_close(jac, want, rtol=1e-12, atol=0)
    # dl_T/dh_{T-k} = dl_T/dh_T (0.5 I)^k, and o_T = h_T: the gradient halves at every lag too.
    grad = torch.tensor(flow["grad_norm"], dtype=DT)
    torch.testing.assert_close(grad / grad[0], want, rtol=1e-12, atol=0)
    assert flow["lag"] == list(range(60)) and flow["norm"] == "spectral"


def test_products_beyond_float_range_are_still_measured():
    core = LinearRNN(2, 3.0 * torch.eye(2, dtype=torch.float32))
    core.float()
    flow = gradient_flow(core, torch.randn(2, 120, 2))
    assert math.isclose(flow["jacobian_norm"][-1], 3.0**119, rel_tol=1e-4)  # 3^119 > 1e56


def explicit_flow(core, inputs, loss_fn, state_of, rebuild):
    """Per-lag norms from one full autograd graph and per-sequence Jacobians multiplied out.

    ``state_of`` flattens a core state to (B, D); ``rebuild`` is its inverse.
    """
    B, T = inputs.shape[:2]
    flat, state = [], None
    for t in range(T):
        out, new_state = core(inputs[:, t : t + 1], state)
        flat.append(state_of(new_state))
        state = rebuild(flat[-1])  # the next step reads the flat tensor: its gradient is dl/dh_t
    grads = torch.autograd.grad(loss_fn(out[:, -1]).sum(), [out] + flat[:-1])
    grad_norm = [grads[0][:, -1].norm(dim=1).mean().item()]
    grad_norm += [grads[T - k].norm(dim=1).mean().item() for k in range(1, T)]  # h_{T-k}
    values = [f.detach() for f in flat]  # values[t] = h_{t+1}
    jac_norm = [1.0] + [0.0] * (T - 1)
    for b in range(B):
        prod = torch.eye(values[0].shape[1], dtype=DT)
        for k in range(1, T):
            j = T - k  # J_{T-k+1}: input index j, previous state h_{T-k} = values[j - 1]
            step = lambda h: state_of(core(inputs[b : b + 1, j : j + 1], rebuild(h))[1])
            jac = torch.autograd.functional.jacobian(step, values[j - 1][b : b + 1])[0, :, 0]
            prod = prod @ jac
            jac_norm[k] += torch.linalg.matrix_norm(prod, ord=2).item() / B
    return grad_norm, jac_norm


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_flow_matches_explicit_autograd(cell):
    torch.manual_seed(1)
    module = torch.nn.RNN if cell == "rnn" else torch.nn.LSTM
    core = module(3, 4, num_layers=2, batch_first=True).double()
    inputs = torch.randn(2, 7, 3, dtype=DT)
    loss_fn = readout_loss(torch.tensor([2, 5]), 4, seed=3)
    L, H = 2, 4
    if cell == "rnn":
        state_of = lambda s: s.permute(1, 0, 2).reshape(s.shape[1], -1)
        rebuild = lambda flat: flat.reshape(-1, L, H).permute(1, 0, 2)
    else:
        state_of = lambda s: torch.cat([p.permute(1, 0, 2).reshape(p.shape[1], -1) for p in s], 1)
        rebuild = lambda flat: tuple(
            f.reshape(-1, L, H).permute(1, 0, 2) for f in flat.split(L * H, 1)
        )
    want_grad, want_jac = explicit_flow(core, inputs, loss_fn, state_of, rebuild)
    flow = gradient_flow(core, inputs, loss_fn=loss_fn)
    assert flow["state_size"] == (1 if cell == "rnn" else 2) * L * H
    for key, want in (("grad_norm", want_grad), ("jacobian_norm", want_jac)):
        torch.testing.assert_close(flow[key], want, rtol=1e-9, atol=1e-14)


def test_flow_leaves_dropout_off_and_restores_training_mode():
    torch.manual_seed(2)
    core = torch.nn.GRU(3, 5, num_layers=2, dropout=0.9, batch_first=True).double()
    inputs = torch.randn(2, 10, 3, dtype=DT)
    a = gradient_flow(core, inputs)
    assert a == gradient_flow(core, inputs)  # dropout at p=0.9 would make every run differ
    b = gradient_flow(core, inputs, jacobian=False)
    assert core.training and b["jacobian_norm"] is None
    torch.testing.assert_close(b["grad_norm"], a["grad_norm"], rtol=1e-12, atol=0)


def test_flow_rejects_bad_inputs_and_losses():
    core = torch.nn.RNN(3, 4, batch_first=True).double()
    with pytest.raises(ConfigError, match="T >= 1"):
        gradient_flow(core, torch.zeros(2, 0, 3, dtype=DT))
    with pytest.raises(ConfigError, match="reduction='none'"):
        gradient_flow(core, torch.randn(2, 5, 3, dtype=DT), loss_fn=lambda o: o.pow(2).mean())


def test_embedding_core_callable_on_tokens():
    torch.manual_seed(3)
    emb = torch.nn.Embedding(11, 4).double()
    rnn = torch.nn.LSTM(4, 6, batch_first=True).double()
    flow = gradient_flow(lambda tokens, hx: rnn(emb(tokens), hx), torch.randint(11, (3, 25)))
    assert len(flow["grad_norm"]) == 25 and flow["state_size"] == 12
    assert all(v > 0 for v in flow["grad_norm"])


def test_sweep_separates_vanishing_from_exploding():
    curves = sweep(num_steps=40, batch_size=2, hidden_size=16, radii=(0.5, 1.5))
    assert set(curves) == {"rnn-linear-rho0.5", "rnn-linear-rho1.5", "rnn-tanh-rho0.5",
                           "rnn-tanh-rho1.5", "rnn-relu-rho0.5", "rnn-relu-rho1.5",
                           "rnn-relu-1.5I", "rnn-tanh-1.5I", "gru", "lstm"}
    jac = {name: c["jacobian_norm"][-1] for name, c in curves.items()}
    assert jac["rnn-tanh-rho0.5"] < 1e-8 and jac["rnn-relu-rho0.5"] < 1e-8
    assert jac["rnn-relu-rho1.5"] > 1e3 * jac["rnn-relu-rho0.5"]
    assert jac["rnn-tanh-rho1.5"] > 1e3 * jac["rnn-tanh-rho0.5"]


def test_sweep_linear_products_follow_rho_to_the_k():
    curves = sweep(num_steps=60, batch_size=2, hidden_size=12, radii=(0.5, 1.0, 1.5))
    for rho in (0.5, 1.0, 1.5):
        c = curves[f"rnn-linear-rho{rho:g}"]
        assert c["rho"] == rho and c["mean_dphi"] == 1.0
        # ||W^k|| = C(k) rho^k with C(k) varying slowly (W is not normal): slope -> log rho.
        assert math.isclose(c["slope"], math.log(rho), abs_tol=0.03)
    assert curves["rnn-linear-rho1.5"]["growth"] > 1e8
    assert curves["rnn-linear-rho0.5"]["growth"] < 1e-12


def test_relu_on_a_scaled_identity_explodes_where_tanh_saturates():
    curves = sweep(num_steps=60, batch_size=2, hidden_size=12, radii=(1.5,))
    relu, tanh = curves["rnn-relu-1.5I"], curves["rnn-tanh-1.5I"]
    # Active ReLU units stay active: J = 1.5 diag(1[h > 0]) and the product grows as 1.5^k.
    assert math.isclose(relu["slope"], math.log(1.5), abs_tol=1e-6) and relu["growth"] > 1e6
    # The same W_hh behind tanh: the states saturate, phi' = 1 - h^2 is small, it vanishes.
    assert tanh["mean_dphi"] < 0.5 and tanh["growth"] < 1e-3
    assert tanh["mean_dphi"] < relu["mean_dphi"]


def test_growth_summary_of_a_known_curve():
    curve = {"grad_norm": [2.0, 1.0, 0.5, 0.25], "jacobian_norm": [1.0, 3.0, 9.0, 27.0]}
    summary = growth_summary(curve)
    assert summary["growth"] == 0.125 and math.isclose(summary["slope"], math.log(3.0))
    assert growth_summary({"grad_norm": [1.0, 0.0], "jacobian_norm": None}) == {
        "growth": 0.0, "slope": None}


def test_set_spectral_radius():
    w = torch.randn(6, 6, dtype=DT)
    set_spectral_radius_(w, 0.7)
    assert math.isclose(torch.linalg.eigvals(w).abs().max().item(), 0.7, rel_tol=1e-10)


def test_sweep_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="hidden_size"):
        sweep(hidden_size=0)
    with pytest.raises(ConfigError, match="radii"):
        sweep(radii=(0.5, -1.0))


def test_truncation_error_matches_the_engine_and_vanishes_at_full_length():
    torch.manual_seed(4)
    T = 12
    core = torch.nn.RNN(3, 5, batch_first=True).double()
    with torch.no_grad():
        set_spectral_radius_(core.weight_hh_l0, 0.9)
    inputs = torch.randn(2, T, 3, dtype=DT)
    readout = torch.randn(7, 5, dtype=DT)
    targets = torch.randint(7, (2, T))
    loss = lambda out: F.cross_entropy(out.reshape(-1, 5) @ readout.t(), targets.reshape(-1))
    rows = truncation_error(core, inputs, loss, taus=(1, 3, T))
    params = list(core.parameters())

    def engine_grad(truncation):  # the same weights' gradient via the hand-written engine
        xw = (inputs @ core.weight_ih_l0.t() + core.bias_ih_l0 + core.bias_hh_l0).transpose(0, 1)
        out, _ = rnn_recurrence(xw, None, core.weight_hh_l0, truncation=truncation)
        weight_grads = torch.autograd.grad(loss(out.transpose(0, 1)), params)
        return torch.cat([g.reshape(-1) for g in weight_grads])

    full = engine_grad("full")
    for row in rows:
        cut = engine_grad(f"tau:{row['tau']}")
        rel = ((cut - full).norm() / full.norm()).item()
        assert math.isclose(row["rel_error"], rel, rel_tol=1e-8, abs_tol=1e-12)
        cos = F.cosine_similarity(cut, full, dim=0).item()
        assert math.isclose(row["cosine"], cos, rel_tol=1e-10)
    assert rows[0]["rel_error"] > rows[1]["rel_error"] > 0 and rows[2]["rel_error"] == 0.0
    assert rows[2]["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_truncation_error_with_targets_and_lstm():
    torch.manual_seed(5)
    core = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).double()
    inputs, targets = torch.randn(2, 10, 3, dtype=DT), torch.randint(5, (2, 10))
    rows = truncation_error(core, inputs, targets, taus=(1, 2, 10))
    assert [r["tau"] for r in rows] == [1, 2, 10]
    assert rows[0]["rel_error"] > 0 and rows[-1]["rel_error"] == 0.0
    with pytest.raises(ConfigError):
        truncation_error(core, inputs, targets, taus=(0,))
    with pytest.raises(ConfigError, match="targets must be"):
        truncation_error(core, inputs, targets[:, :9], taus=(1,))


def test_plot_writes_a_png(tmp_path):
    linear = LinearRNN(2, 0.5 * torch.eye(3, dtype=DT))
    curves = {"linear": gradient_flow(linear, torch.randn(2, 30, 2, dtype=DT)),
              "plain": [1.0, 0.1, 0.0, 0.001]}
    path = plot_gradient_flow(curves, str(tmp_path / "flow.png"))
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ConfigError):
        plot_gradient_flow({}, str(tmp_path / "empty.png"))


def test_linear_rnn_has_torch_rnn_layout_and_matches_the_recurrence():
    gen = torch.Generator().manual_seed(5)
    core = seeded_core("rnn", 3, 4, "identity", gen)
    assert isinstance(core, cores.LinearRNN)
    assert {n for n, _ in core.named_parameters()} == {
        n for n, _ in torch.nn.RNN(3, 4).named_parameters()}
    x, h0 = torch.randn(2, 5, 3, dtype=DT), torch.randn(1, 2, 4, dtype=DT)
    out, h_n = core(x, h0)
    h = h0[0]
    for t in range(5):
        h = (x[:, t] @ core.weight_ih_l0.T + core.bias_ih_l0 + h @ core.weight_hh_l0.T
             + core.bias_hh_l0)
        torch.testing.assert_close(out[:, t], h)
    torch.testing.assert_close(h_n[0], h)
    assert mean_derivative(core, x, "identity") == 1.0


def test_mean_derivative_reads_phi_prime_from_the_states():
    core = torch.nn.RNN(3, 4, batch_first=True).double()
    x = torch.randn(2, 6, 3, dtype=DT)
    h, _ = core(x)
    assert math.isclose(mean_derivative(core, x, "tanh"), (1 - h**2).mean().item())
    relu = torch.nn.RNN(3, 4, nonlinearity="relu", batch_first=True).double()
    h, _ = relu(x)
    assert math.isclose(mean_derivative(relu, x, "relu"), (h > 0).double().mean().item())



def test_language_model_flow_measures_the_real_next_token_loss():
    from seqlm.config import ModelConfig
    from seqlm.diagnostics import language_model_flow
    from seqlm.models import RNNLM

    torch.manual_seed(6)
    model = RNNLM(ModelConfig(vocab_size=7, cell="rnn", impl="scratch", hidden_size=5)).double()
    batch = torch.randint(7, (2, 9))
    report = language_model_flow(model.eval(), batch, with_truncation_error=True)
    flow = report["curves"]["model"]
    assert flow["lag"] == list(range(8)) and set(report["curves"]) == {"model"}
    assert [row["tau"] for row in report["truncation_error"]] == [1, 2, 4]
    # lag 0: the batch mean of ||d CE(decoder(o_T), y_T) / d o_T|| for each sequence
    with torch.no_grad():
        _, state = model(batch[:, :-1])
    o = state[-1].detach().requires_grad_()
    loss = F.cross_entropy(model.decoder(o), batch[:, -1], reduction="sum")
    (g,) = torch.autograd.grad(loss, o)
    assert math.isclose(flow["grad_norm"][0], g.norm(dim=1).mean().item(), rel_tol=1e-10)
    assert flow["growth"] == flow["grad_norm"][-1] / flow["grad_norm"][0]
