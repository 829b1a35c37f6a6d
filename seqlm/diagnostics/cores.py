"""The recurrent cores the sweep compares, and what their nonlinearity does along a trajectory.

For a one-layer RNN h_t = φ(a_t), a_t = W_ih x_t + b + W_hh h_{t-1}, the state Jacobian is

    J_t = dh_t/dh_{t-1} = diag(φ'(a_t)) W_hh,

so ‖J_T ⋯ J_{T-k+1}‖ grows or shrinks with W_hh's spectral radius ρ *and* with the derivatives
φ' met on the way. With φ the identity (:class:`LinearRNN`) the product is W_hh^k, whose norm
behaves as ρ^k: the chapter's formula without a nonlinearity in the way. With tanh, large
states saturate (φ' = 1 - h² ≈ 0) and damp the product even when ρ > 1; with ReLU and
W_hh ≈ ρ I, a unit that is active stays active (φ' = 1) and the product grows as ρ^k.
"""

from __future__ import annotations

import torch

NONLINEARITIES = ("identity", "tanh", "relu")


class LinearRNN(torch.nn.Module):
    """An RNN without a nonlinearity, h_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh.

    The interface, parameter names and layout are ``torch.nn.RNN``'s (one layer,
    ``batch_first=True``): ``forward(input (B, T, I), hx (1, B, H) or None) ->
    (output (B, T, H), h_n (1, B, H))``. Parameters start at zero; :func:`seeded_core` draws them.
    """

    def __init__(self, input_size: int, hidden_size: int, *, dtype=torch.float64) -> None:
        super().__init__()
        zeros = lambda *shape: torch.nn.Parameter(torch.zeros(*shape, dtype=dtype))
        self.weight_ih_l0 = zeros(hidden_size, input_size)
        self.weight_hh_l0 = zeros(hidden_size, hidden_size)
        self.bias_ih_l0 = zeros(hidden_size)
        self.bias_hh_l0 = zeros(hidden_size)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        xw = input @ self.weight_ih_l0.t() + self.bias_ih_l0 + self.bias_hh_l0  # (B, T, H)
        h = xw.new_zeros(xw.shape[0], xw.shape[2]) if hx is None else hx[0]
        outputs = []
        for t in range(xw.shape[1]):
            h = xw[:, t] + h @ self.weight_hh_l0.t()
            outputs.append(h)
        return torch.stack(outputs, 1), h.unsqueeze(0)


def seeded_core(cell: str, input_size: int, hidden_size: int, nonlinearity: str,
                generator: torch.Generator) -> torch.nn.Module:
    """A one-layer float64 core, batch-first, with torch's init U(-1/sqrt(H), 1/sqrt(H)) drawn
    from ``generator``.

    Args:
        cell: 'rnn', 'gru' or 'lstm'.
        input_size, hidden_size: I and H.
        nonlinearity: for 'rnn', 'identity' (a :class:`LinearRNN`), 'tanh' or 'relu'.
        generator: the source of the weights.
    """
    if cell == "rnn" and nonlinearity == "identity":
        core = LinearRNN(input_size, hidden_size)
    else:
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
        core = module(input_size, hidden_size, batch_first=True, **kwargs).double()
    bound = hidden_size**-0.5
    with torch.no_grad():
        for param in core.parameters():
            param.uniform_(-bound, bound, generator=generator)
    return core


@torch.no_grad()
def mean_derivative(core: torch.nn.Module, inputs: torch.Tensor, nonlinearity: str) -> float:
    """The mean of φ'(a_t) over the batch, the steps and the units of a one-layer RNN run.

    φ' is read from the states themselves: 1 - h² for tanh, 1 where h > 0 for ReLU, and 1 for
    the identity.

    Args:
        core: a one-layer RNN with torch's interface whose output is h_t.
        inputs: (B, T, I) inputs.
        nonlinearity: 'identity', 'tanh' or 'relu'.
    """
    h, _ = core(inputs)
    if nonlinearity == "tanh":
        return (1 - h.pow(2)).mean().item()
    if nonlinearity == "relu":
        return (h > 0).double().mean().item()
    return 1.0
