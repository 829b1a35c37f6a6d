"""Hand-written backpropagation through time for one layer of the chapter's RNN.

The GRU's engine, :func:`gru_recurrence`, lives in :mod:`seqlm.models.gru_bptt` (math there)
and is re-exported here.

Forward, with the input projection hoisted out of the loop (torch's layout, row vectors):

    xw_t = x_t W_ih^T + b_ih + b_hh                       (T, B, H), computed by the caller
    h_t  = phi(xw_t + h_{t-1} W_hh^T),  t = 0 ... T-1,    phi = tanh or relu

Backward, from the incoming gradients dL/dh_t (the outputs' gradients, the final state's
included), with a_t the pre-activation and J_t = dh_t/dh_{t-1} = diag(phi'(a_t)) W_hh:

    delta_t = dL/dh_t + xi_{t+1} J_{t+1}^T delta_{t+1}      (the loop: one GEMM, one multiply)
    g_t     = delta_t * phi'(a_t)                           phi' recomputed from h_t
    dL/dxw_t = g_t,   dL/dh_0 = xi_0 g_0 W_hh,
    dL/dW_hh = sum_t g_t^T h_{t-1}                         (after the loop: one GEMM over T*B rows)

xi_t = 1 except under ``random:P`` truncation. ``tau:K`` replaces the single delta_t by a band of
K deltas, one per age of the loss term it carries, so that every term is cut after K steps; see
:mod:`seqlm.models.truncation` for the semantics of every policy.

Multi-layer use: the truncation applies to each call, i.e. to each layer separately. Under
``tau:K`` the gradient of a loss term enters layer l at the steps its upper layer reached and
is cut K steps further back there, so a lower layer can see a term up to l*(K-1)+1 steps back.
:func:`seqlm.models.truncation.unroll` behaves the same when called layer by layer, and cuts
the whole stack at once when its step advances every layer.
Shapes: T time steps, B batch, H hidden.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from seqlm.errors import ConfigError
from seqlm.models.fast import gradient_product, hidden_accumulator
from seqlm.models.gru_bptt import gru_recurrence
from seqlm.models.truncation import (
    Truncation,
    as_truncation,
    keep_scales,
    scale_grad,
    unroll,
)

__all__ = ["Truncation", "gru_recurrence", "rnn_recurrence", "scale_grad", "unroll"]

NONLINEARITIES = ("tanh", "relu")


def _activation_grad(outputs: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """phi'(a_t) for all t at once, recovered from h_t = phi(a_t); a fresh tensor."""
    if nonlinearity == "tanh":
        return torch.addcmul(outputs.new_ones(()), outputs, outputs, value=-1.0)
    return (outputs > 0).to(outputs.dtype)


def _chain_backward(
    g: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, scales: tuple[float, ...]
) -> None:
    """Turn ``g`` from phi'(a_t) into the pre-activation gradients g_t, in place."""
    num_steps = g.shape[0]
    g[-1].mul_(grad[-1])
    # g_t = phi'_t grad_t + xi_{t+1} phi'_t (g_{t+1} W_hh): the first term for all t at once,
    # then one product (oneDNN on float32 CPU tensors) and one multiply-add per step
    product = gradient_product(weight)
    local = torch.mul(g[:-1], grad[:-1])
    for t in range(num_steps - 2, -1, -1):
        torch.addcmul(local[t], g[t], product(g[t + 1]), value=scales[t + 1], out=g[t])


def _banded_backward(g: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, k: int) -> None:
    """``tau:k``: like :func:`_chain_backward`, each loss term cut k steps after it entered.

    ``band[a]`` holds the pre-activation gradient of the term that entered a steps ago; at most
    k ages are alive, and the oldest is dropped instead of being passed to h_{t-1}. Cost: one
    (min(k, T-t)-1)*B x H x H GEMM per step, O(T*k*B*H^2) in all instead of O(T*B*H^2).
    """
    num_steps, batch, hidden = g.shape
    band = g.new_empty(k, batch, hidden)
    carry = g.new_empty(k, batch, hidden)
    for t in range(num_steps - 1, -1, -1):
        alive = min(k, num_steps - t)
        carry[0].copy_(grad[t])
        if alive > 1:
            older = carry[1:alive].view(-1, hidden)
            torch.mm(band[: alive - 1].view(-1, hidden), weight, out=older)
        torch.mul(carry[:alive], g[t], out=band[:alive])
        torch.sum(band[:alive], dim=0, out=g[t])


def _weight_grad(g: torch.Tensor, outputs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """dL/dW_hh = sum_t g_t^T h_{t-1} as one (H, (T-1)B) x ((T-1)B, H) GEMM plus the h_0 term."""
    hidden = g.shape[-1]
    grad_w = g[0].t().mm(h0)
    if g.shape[0] > 1:
        grad_w = torch.addmm(
            grad_w, g[1:].reshape(-1, hidden).t(), outputs[:-1].reshape(-1, hidden)
        )
    return grad_w


class _RNNRecurrence(torch.autograd.Function):
    """h_t = phi(xw_t + h_{t-1} W_hh^T) with the hand-written backward of the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        xw: torch.Tensor,
        h0: torch.Tensor,
        weight_hh: torch.Tensor,
        nonlinearity: str,
        k: int | None,
        scales: tuple[float, ...],
    ) -> torch.Tensor:
        h = h0
        tanh = nonlinearity == "tanh"
        if tanh:
            # tanh(a) = 2 sigmoid(2a) - 1: torch's sigmoid kernel is several times faster than
            # its tanh on the CPU, and doubling xw and W_hh once puts 2a straight in the GEMM
            outputs, weight = torch.mul(xw, 2.0), torch.mul(weight_hh, 2.0)
        else:
            outputs, weight = xw.clone(memory_format=torch.contiguous_format), weight_hh
        accumulate = hidden_accumulator(weight, xw.shape[1])  # oneDNN on float32 CPU tensors
        for t in range(xw.shape[0]):
            a = accumulate(outputs[t], h)
            h = a.sigmoid_().mul_(2.0).sub_(1.0) if tanh else a.relu_()
        # phi'(a_t) is a function of h_t, so the outputs are all that backward needs.
        ctx.save_for_backward(h0, weight_hh, outputs)
        ctx.nonlinearity, ctx.k, ctx.scales = nonlinearity, k, scales
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h0, weight_hh, outputs = ctx.saved_tensors
        need_xw, need_h0, need_w = ctx.needs_input_grad[:3]
        g = _activation_grad(outputs, ctx.nonlinearity)
        if ctx.k is not None and ctx.k < g.shape[0]:
            _banded_backward(g, grad_outputs, weight_hh, ctx.k)
        else:
            _chain_backward(g, grad_outputs, weight_hh, ctx.scales)
        grad_h0 = g[0].mm(weight_hh).mul_(ctx.scales[0]) if need_h0 else None
        grad_w = _weight_grad(g, outputs, h0) if need_w else None
        return (g if need_xw else None), grad_h0, grad_w, None, None, None


def _check_shapes(xw: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor) -> None:
    if xw.dim() != 3 or xw.shape[0] == 0:
        raise ValueError(f"xw must be (T, B, H) with T >= 1, got shape {tuple(xw.shape)}")
    _, batch, hidden = xw.shape
    if tuple(weight_hh.shape) != (hidden, hidden):
        raise ValueError(
            f"weight_hh must be (H, H) = ({hidden}, {hidden}) to match xw, "
            f"got {tuple(weight_hh.shape)}"
        )
    if tuple(h0.shape) != (batch, hidden):
        raise ValueError(f"h0 must be (B, H) = ({batch}, {hidden}), got {tuple(h0.shape)}")
    if not (xw.dtype == h0.dtype == weight_hh.dtype):
        raise ValueError(
            f"xw, h0 and weight_hh must share a dtype, got {xw.dtype}, {h0.dtype}, "
            f"{weight_hh.dtype}"
        )


def rnn_recurrence(
    xw: torch.Tensor,
    h0: torch.Tensor | None,
    weight_hh: torch.Tensor,
    *,
    nonlinearity: str = "tanh",
    truncation: Truncation | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one RNN layer over time with the hand-written BPTT of the module docstring.

    Args:
        xw: Hoisted input projection x_t W_ih^T + b_ih + b_hh, time-major ``(T, B, H)``.
        h0: Initial state ``(B, H)``; ``None`` means zeros. It may or may not require grad.
        weight_hh: Recurrent weight ``(H, H)`` in torch's layout (``weight_hh_l{k}``).
        nonlinearity: ``'tanh'`` or ``'relu'``.
        truncation: A :class:`Truncation`, its text form, or ``None`` (``window``). ``window``
            and ``full`` are the same here; ``tau:K`` costs O(T*K) in the backward pass;
            ``random:P`` draws its scales when this function is called.
        generator: Source of the ``random:P`` draws (torch's default generator if ``None``).

    Returns:
        ``(outputs, h_T)``: all hidden states ``(T, B, H)`` and the last one ``(B, H)``
        (a view of ``outputs[-1]``, so its gradient joins the last step's).

    Raises:
        ConfigError: unknown ``nonlinearity`` or truncation text.
        ValueError: shapes or dtypes of ``xw``, ``h0`` and ``weight_hh`` disagree.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ConfigError(f"nonlinearity {nonlinearity!r} is unknown; use 'tanh' or 'relu'")
    trunc = as_truncation(truncation)
    if h0 is None:
        h0 = xw.new_zeros(xw.shape[1:])
    _check_shapes(xw, h0, weight_hh)
    num_steps = xw.shape[0]
    if trunc.kind == "random":
        scales = tuple(keep_scales(num_steps, trunc.p, generator))
    else:
        scales = (1.0,) * num_steps
    k = trunc.k if trunc.kind == "tau" else None
    outputs = _RNNRecurrence.apply(xw, h0, weight_hh, nonlinearity, k, scales)
    return outputs, outputs[-1]
