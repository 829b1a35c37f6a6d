"""Truncation of backpropagation through time, for any recurrent step function.

The chapter's recurrence and loss are

    h_t = f(x_t, h_{t-1}, w_h),    o_t = g(h_t, w_o),    L = (1/T) sum_t l(o_t, y_t)

and the gradient of a hidden state with respect to the recurrent weights is

    dh_t/dw_h = df(x_t, h_{t-1}, w_h)/dw_h
                + sum_{i=1}^{t-1} (prod_{j=i+1}^{t} df(x_j, h_{j-1}, w_h)/dh_{j-1})
                                  df(x_i, h_{i-1}, w_h)/dw_h.

The products of Jacobians explode or vanish as t - i grows, so the sum is truncated. A
:class:`Truncation` names one of four policies (steps are numbered from 0 in the code):

* ``window`` (the default, the book's): the gradient flows through every step of the sequence
  handed over; the training loop detaches the state between ``num_steps`` windows, which is
  what truncates it.
* ``full``: the same inside one call; the name says the caller does not detach between calls.
* ``tau:K``: the formula above with the sum cut to i = t-K+1 ... t, separately for every loss
  term. The gradient of the term at step t reaches the inputs (x_i, h_{i-1}, w_h) of the steps
  i = t-K+1 ... t and nothing earlier. The state h_{t-K} is one of those inputs: when it is the
  initial state h_0 (t = K-1) it receives the gradient, otherwise it is an intermediate whose
  own step is not reached. Hence ``tau:K`` with K >= T equals ``full`` exactly.
* ``random:P`` (Tallec & Ollivier 2017): at every step t a scale xi_t is drawn, 1/P with
  probability P and 0 otherwise, and the backward signal from step t into h_{t-1} is multiplied
  by it. The gradient is cut at a random place and the surviving part reweighted, so its
  expectation equals the untruncated gradient; ``random:1`` equals ``full`` exactly.

:func:`unroll` applies a policy to any step function through autograd; the hand-written engine
for the chapter's RNN lives in :mod:`seqlm.models.bptt`. Shapes: T time steps, B batch, H hidden.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from seqlm.cores import Truncation, as_truncation

def keep_scales(
    num_steps: int, p: float, generator: torch.Generator | None = None
) -> list[float]:
    """Draw the random-truncation scales xi_t, t = 0 ... num_steps-1.

    xi_t = 1/p with probability p, else 0, so E[xi_t] = 1. The draws come from ``generator``
    (torch's default generator when ``None``) in one ``torch.rand(num_steps)`` call, so the
    hand-written engine and :func:`unroll` draw the same scales from equally seeded generators.
    With p = 1 nothing is drawn and every scale is exactly 1.

    Returns:
        A list of ``num_steps`` Python floats.
    """
    if p >= 1.0:
        return [1.0] * num_steps
    device = generator.device if generator is not None else "cpu"
    keep = torch.rand(num_steps, generator=generator, device=device) < p
    return [1.0 / p if kept else 0.0 for kept in keep.tolist()]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by a constant backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``x`` unchanged, but multiply the gradient flowing back through it by ``scale``.

    Args:
        x: Any tensor.
        scale: The factor applied to the incoming gradient (0 stops it).

    Returns:
        A tensor equal to ``x``; in the backward pass dL/dx = scale * dL/d(output).
    """
    return _ScaleGrad.apply(x, float(scale))


State = Any  # a tensor, a tuple of tensors (LSTM's (h, c)), or None before the first step


def _map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor of a (possibly nested) tuple state; ``None`` stays."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(_map_state(fn, s) for s in state)


def _first(state: State) -> torch.Tensor:
    return state if isinstance(state, torch.Tensor) else state[0]


def unroll(
    step: Callable[[torch.Tensor, State], State],
    xw: torch.Tensor,
    h0: State,
    *,
    truncation: Truncation | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, State]:
    """Run ``h = step(xw[t], h)`` for t = 0 ... T-1 through autograd, applying a truncation.

    Works for any cell: the state is a tensor, or a tuple whose first element is the output
    (LSTM's ``(h, c)``; nested tuples such as ``(output, (h, c))`` are fine), or ``None`` if
    ``step`` accepts it (torch's cores do).

    * ``window`` / ``full``: a plain loop.
    * ``random:P``: :func:`scale_grad` with the drawn xi_t on the state before step t.
    * ``tau:K`` (K < T): the terms t < K reach h_0 in at most K steps and come from one plain
      chain; every later output t is recomputed from the detached h_{t-K} through the K steps
      t-K+1 ... t. Cost: about K + (T-K)*K step evaluations and graphs of that size, i.e.
      O(T*K) time and memory instead of O(T). ``step`` must be deterministic (no dropout).

    With autograd disabled every policy runs the plain loop (and draws nothing).

    Args:
        step: ``step(x_t, h_{t-1}) -> h_t``.
        xw: Per-step inputs, time-major ``(T, B, ...)``.
        h0: Initial state.
        truncation: A :class:`Truncation`, its text form, or ``None`` for ``window``.
        generator: Source of the random-truncation draws (see :func:`keep_scales`).

    Returns:
        ``(outputs, h_T)``: the first state element of every step stacked to ``(T, ...)``,
        and the final state with its graph.

    Raises:
        ConfigError: the truncation text is not an accepted form.
        ValueError: ``xw`` has no time steps.
    """
    trunc = as_truncation(truncation)
    num_steps = xw.shape[0]
    if num_steps == 0:
        raise ValueError("unroll needs at least one time step, got xw with T=0")
    if not torch.is_grad_enabled():  # no backward pass: every policy is the plain loop
        trunc = Truncation()
    if trunc.kind == "tau" and trunc.k < num_steps:
        return _unroll_tau(step, xw, h0, trunc.k)
    scales = keep_scales(num_steps, trunc.p, generator) if trunc.kind == "random" else None
    h, outputs = h0, []
    for t in range(num_steps):
        if scales is not None:
            h = _map_state(lambda s, c=scales[t]: scale_grad(s, c), h)
        h = step(xw[t], h)
        outputs.append(_first(h))
    return torch.stack(outputs), h


def _unroll_tau(
    step: Callable[[torch.Tensor, State], State], xw: torch.Tensor, h0: State, k: int
) -> tuple[torch.Tensor, State]:
    """``tau:k`` through autograd by recomputation; see :func:`unroll` for the cost."""
    num_steps = xw.shape[0]
    detached: list[State] = []  # detached[t] = value of h_t, outside any graph
    outputs: list[torch.Tensor] = []
    h = h0
    for t in range(k):  # terms 0..k-1 reach back to h_0 itself: no cut needed
        h = step(xw[t], h)
        detached.append(_map_state(torch.Tensor.detach, h))
        outputs.append(_first(h))
    for t in range(k, num_steps):
        h = detached[t - k]
        for i in range(t - k + 1, t + 1):
            h = step(xw[i], h)
        detached.append(_map_state(torch.Tensor.detach, h))
        outputs.append(_first(h))
    return torch.stack(outputs), h
