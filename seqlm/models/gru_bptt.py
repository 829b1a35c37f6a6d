"""Hand-written backpropagation through time for one layer of torch's GRU.

Forward, with the input projection hoisted out of the loop (torch's layout, row vectors, gate
blocks r, z, n of width H side by side):

    xw_t = x_t W_ih^T + b_ih = [xr_t, xz_t, xn_t]                (T, B, 3H), by the caller
    hw_t = h_{t-1} W_hh^T + b_hh = [hr_t, hz_t, hn_t]            (B, 3H), in the loop
    r_t = sigma(xr_t + hr_t),   z_t = sigma(xz_t + hz_t)
    n_t = tanh(xn_t + r_t * hn_t)                   computed as 2 sigma(2a) - 1
    h_t = n_t + z_t * (h_{t-1} - n_t)  =  (1 - z_t) n_t + z_t h_{t-1}

``b_hh`` stays in the loop because r_t multiplies its n block.

Backward, from the incoming gradients dL/dh_t (the outputs' gradients, the final state's
included). With delta_t the total gradient of h_t and, for all t at once before the loop,

    A_t = (1 - z_t)(1 - n_t^2)                  dh_t/da_t per unit, a_t = xn_t + r_t * hn_t
    M_t = [A_t hn_t r_t (1 - r_t),  (h_{t-1} - n_t) z_t (1 - z_t),  A_t r_t]     (T, B, 3H)

the loop runs, from t = T-1 down to 0 (one multiply, one addcmul and one GEMM per step):

    dhw_t       = [delta_t, delta_t, delta_t] * M_t                 dL/dhw_t, (B, 3H)
    delta_{t-1} = dL/dh_{t-1} + delta_t * z_t + dhw_t W_hh          (delta_{-1} = dL/dh_0)

and after it

    dL/dxw_t  = [dhw_t r-block, dhw_t z-block, delta_t A_t]
    dL/dW_hh  = sum_t dhw_t^T h_{t-1}                               one GEMM over T*B rows
    dL/db_hh  = sum_t sum_b dhw_t

Only ``window``/``full`` truncation: the gradient flows through every step of the call.
For float32 CPU tensors the loop's products run through oneDNN's matmul, which beats torch's
GEMM at these small-batch shapes (:mod:`seqlm.models.fast`); other dtypes and devices use
torch's.
Shapes: T time steps, B batch, H hidden.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from seqlm.models.fast import accumulator, hidden_product
from seqlm.models.gates import gate_slice

# The engine reads torch's gate layout (seqlm.models.gates): the r and z blocks side by side,
# then n; its own (T, B, 3H) factor tensor M keeps the same order.

__all__ = ["gru_recurrence"]


def _forward_loop(xw: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor,
                  bias_hh: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run the recurrence; return the gates ``rz`` (T, B, 2H), ``n``, ``hn`` and the outputs
    (T, B, H)."""
    num_steps, batch, gates = xw.shape
    hidden = gates // 3
    rz_cols, n_cols = (gate_slice("gru", "r", "z", hidden=hidden),
                       gate_slice("gru", "n", hidden=hidden))
    rz = xw.new_empty(num_steps, batch, 2 * hidden)
    n, hn, outputs = (xw.new_empty(num_steps, batch, hidden) for _ in range(3))
    product = hidden_product(weight_hh, bias_hh, batch)
    h = h0
    for t in range(num_steps):
        hw_t = product(h)
        r_t, z_t = torch.add(xw[t, :, rz_cols], hw_t[:, rz_cols],
                             out=rz[t]).sigmoid_().chunk(2, dim=-1)
        hn[t].copy_(hw_t[:, n_cols])
        # tanh(a) = 2 sigmoid(2a) - 1: torch's sigmoid kernel is 3-6x faster than its tanh
        # on the CPU, enough to pay for the three small passes around it
        n_t = torch.addcmul(xw[t, :, n_cols], r_t, hn[t], out=n[t])
        n_t.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
        h = torch.lerp(n_t, h, z_t, out=outputs[t])
    return rz, n, hn, outputs


def _backward_factors(rz: torch.Tensor, n: torch.Tensor, hn: torch.Tensor, h0: torch.Tensor,
                      outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, A)`` of the module docstring for all t at once: (T, B, 3H) and (T, B, H)."""
    # one pass over (T, B, H) per op, no temporaries: u (1 - v) is written u - u v
    r, z = rz.chunk(2, dim=-1)
    a = torch.addcmul(n.new_ones(()), n, n, value=-1.0)
    a.addcmul_(a, z, value=-1.0)
    m = rz.new_empty(*n.shape[:2], 3 * n.shape[-1])
    m_r, m_z, m_n = m.chunk(3, dim=-1)
    torch.mul(a, r, out=m_n)
    torch.mul(m_n, hn, out=m_r)
    m_r.addcmul_(m_r, r, value=-1.0)
    torch.sub(h0, n[0], out=m_z[0])  # h_{t-1} - n_t without a (T, B, H) copy of h_{t-1}
    torch.sub(outputs[:-1], n[1:], out=m_z[1:])
    m_z.mul_(z)
    m_z.addcmul_(m_z, z, value=-1.0)
    return m, a


def _delta_loop(m: torch.Tensor, grad: torch.Tensor, z: torch.Tensor,
                weight_hh: torch.Tensor) -> torch.Tensor:
    """Return delta (T, B, H) and turn ``m`` into dL/dhw (T, B, 3H), in place.

    ``grad`` holds dL/dh_t from outside the layer (the outputs' gradients).
    """
    num_steps, batch, gates = m.shape
    delta = grad.clone(memory_format=torch.contiguous_format)
    blocks = m.view(num_steps, batch, 3, gates // 3)
    accumulate = accumulator(weight_hh)
    for t in range(num_steps - 1, 0, -1):
        blocks[t].mul_(delta[t].unsqueeze(1))
        accumulate(delta[t - 1].addcmul_(delta[t], z[t]), m[t])
    blocks[0].mul_(delta[0].unsqueeze(1))
    return delta


def _weight_grad(dhw: torch.Tensor, h0: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """dL/dW_hh = sum_t dhw_t^T h_{t-1}: the h_0 term, then one GEMM over (T-1)*B rows."""
    grad_w = dhw[0].t().mm(h0)
    if dhw.shape[0] > 1:
        grad_w.addmm_(dhw[1:].flatten(0, 1).t(), outputs[:-1].flatten(0, 1))
    return grad_w


class _GRURecurrence(torch.autograd.Function):
    """One GRU layer over time with the hand-written backward of the module docstring."""

    @staticmethod
    def forward(ctx: Any, xw: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor,
                bias_hh: torch.Tensor) -> torch.Tensor:
        rz, n, hn, outputs = _forward_loop(xw, h0, weight_hh, bias_hh)
        ctx.save_for_backward(h0, weight_hh, rz, n, hn, outputs)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h0, weight_hh, rz, n, hn, outputs = ctx.saved_tensors
        need_xw, need_h0, need_w, need_b = ctx.needs_input_grad
        hidden = h0.shape[-1]
        m, a = _backward_factors(rz, n, hn, h0, outputs)
        z = rz[..., hidden:]
        delta = _delta_loop(m, grad_outputs, z, weight_hh)  # m holds dL/dhw now
        grad_h0 = torch.addcmul(m[0].mm(weight_hh), delta[0], z[0]) if need_h0 else None
        grad_w = _weight_grad(m, h0, outputs) if need_w else None
        grad_b = m.sum((0, 1)) if need_b else None
        grad_xw = None
        if need_xw:  # dL/dxw differs from dL/dhw only in the n block, which m gives up
            grad_xw = m
            torch.mul(delta, a, out=grad_xw[..., gate_slice("gru", "n", hidden=hidden)])
        return grad_xw, grad_h0, grad_w, grad_b


def _check_shapes(xw: torch.Tensor, h0: torch.Tensor | None, weight_hh: torch.Tensor,
                  bias_hh: torch.Tensor) -> None:
    if xw.dim() != 3 or xw.shape[0] == 0 or xw.shape[-1] % 3:
        raise ValueError(f"xw must be (T, B, 3H) with T >= 1, got shape {tuple(xw.shape)}")
    _, batch, gates = xw.shape
    hidden = gates // 3
    if tuple(weight_hh.shape) != (gates, hidden):
        raise ValueError(f"weight_hh must be (3H, H) = ({gates}, {hidden}) to match xw, "
                         f"got {tuple(weight_hh.shape)}")
    if tuple(bias_hh.shape) != (gates,):
        raise ValueError(f"bias_hh must be (3H,) = ({gates},), got {tuple(bias_hh.shape)}")
    if h0 is not None and tuple(h0.shape) != (batch, hidden):
        raise ValueError(f"h0 must be (B, H) = ({batch}, {hidden}), got {tuple(h0.shape)}")
    dtypes = {xw.dtype, weight_hh.dtype, bias_hh.dtype, xw.dtype if h0 is None else h0.dtype}
    if len(dtypes) > 1:
        raise ValueError(f"xw, h0, weight_hh and bias_hh must share a dtype, got "
                         f"{', '.join(sorted(map(str, dtypes)))}")


def gru_recurrence(xw: torch.Tensor, h0: torch.Tensor | None, weight_hh: torch.Tensor,
                   bias_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one GRU layer over time with the hand-written BPTT of the module docstring.

    Args:
        xw: Hoisted input projection x_t W_ih^T + b_ih, time-major ``(T, B, 3H)``, gate
            blocks r, z, n (torch's order); ``b_hh`` not included.
        h0: Initial state ``(B, H)``; ``None`` means zeros. It may or may not require grad.
        weight_hh: Recurrent weight ``(3H, H)`` in torch's layout (``weight_hh_l{k}``).
        bias_hh: Recurrent bias ``(3H,)`` (``bias_hh_l{k}``).

    Returns:
        ``(outputs, h_T)``: all hidden states ``(T, B, H)`` and the last one ``(B, H)``
        (a view of ``outputs[-1]``, so its gradient joins the last step's).

    Raises:
        ValueError: shapes or dtypes of the arguments disagree.
    """
    _check_shapes(xw, h0, weight_hh, bias_hh)
    if h0 is None:
        h0 = xw.new_zeros(xw.shape[1], xw.shape[-1] // 3)
    outputs = _GRURecurrence.apply(xw, h0, weight_hh, bias_hh)
    return outputs, outputs[-1]
