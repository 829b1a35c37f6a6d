r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), stacked into a core.

Both cells compute their gates from the input ``x_t`` alone, so the recurrence is linear in h:

.. math::
    h_t = a_t \odot h_{t-1} + b_t

minGRU: :math:`z_t = \sigma(W_z x_t)`, :math:`a_t = 1 - z_t`, :math:`b_t = z_t \odot
g(W_h x_t)`. minLSTM: :math:`f_t = \sigma(W_f x_t)`, :math:`i_t = \sigma(W_i x_t)`, normalised
to :math:`f'_t = f_t / (f_t + i_t)`, :math:`i'_t = i_t / (f_t + i_t)`, and
:math:`a_t = f'_t`, :math:`b_t = i'_t \odot g(W_h x_t)`. The candidate activation is the
paper's :math:`g(x) = x + 0.5` for :math:`x \ge 0`, else :math:`\sigma(x)`: positive, so
every b_t > 0 and the recurrence can run in log space.

Training runs all T steps at once with Heinsen's (2023) log-space scan:
:math:`a^*_t = \sum_{s \le t} \log a_s` and
:math:`h_t = e^{a^*_t} h_0 + \exp(a^*_t + \mathrm{logcumsumexp}_{s \le t}(\log b_s - a^*_s))`.
The initial state enters through the first term, so any h_0 (zeros included, and the state
carried between minibatches by sequential partitioning) is exact. :meth:`MinCell.step` is
the same recurrence one token at a time: the generation path and the tests' reference.
``bptt_engine='manual'`` trains through :class:`LinearScan` instead, that recurrence step by
step with a hand-written backward pass: on the CPU the scan's parallelism buys nothing and
its extra passes over (T, B, H) cost three times as much.

:class:`MinRNN` stacks L blocks after an input projection I → H: block k reads
``LayerNorm(x_k)``, runs its cell, and adds its h to the residual stream
(``x_{k+1} = dropout(x_k + h_k)``); the top block's h is the core's output, so the decoder
reads the last layer of the state (L, B, H) exactly as for the chapter's cores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlm.cores import BPTT_ENGINES, MIN_CELLS
from seqlm.errors import check_choice, check_positive_int

_GATES = {"mingru": 2, "minlstm": 3}  # blocks of H rows in a cell's gate projection
# Widest span of log b − a* over a window that the scan sums with one shift: e^-60 ≈ 1e-26
# and e^60 stay far inside float32's range (about e^±87).
SHIFT_RANGE = 60.0


def log_g(x: Tensor) -> Tensor:
    """log g(x) for the paper's g (x + 0.5 where x ≥ 0, else σ(x)), stable for every x."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def g(x: Tensor) -> Tensor:
    """The paper's positive candidate activation: x + 0.5 where x ≥ 0, else σ(x)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def parallel_scan(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """All h_t of ``h_t = a_t h_{t-1} + b_t`` at once, in log space (Heinsen 2023).

    The log-cumulative-sum-exp of ``v = log b − a*`` is taken with one shift per column (its
    maximum over time) in every column whose values span less than :data:`SHIFT_RANGE`: no
    term under- or overflows there, and a cumsum and two exps cost several times less than
    ``torch.logcumsumexp`` on the CPU. The other columns go through ``torch.logcumsumexp``.

    Args:
        log_a: (T, B, H) log coefficients, ≤ 0.
        log_b: (T, B, H) log of the positive inputs b_t.
        h0: (B, H) initial state, any sign.

    Returns:
        (T, B, H) states h_1 .. h_T.
    """
    a_star = torch.cumsum(log_a, dim=0)
    v = log_b - a_star
    top = v.amax(dim=0)
    wide = top - v.amin(dim=0) >= SHIFT_RANGE  # (B, H)
    if not wide.any():
        inputs = torch.exp(v - top).cumsum(dim=0) * torch.exp(a_star + top)
        return inputs + torch.exp(a_star) * h0
    # wide columns: zeros into the shifted sum (finite, then replaced), exact values after
    v_in, a_in, top_in = (t.masked_fill(wide, 0.0) for t in (v, a_star, top))
    inputs = (torch.exp(v_in - top_in).cumsum(dim=0) * torch.exp(a_in + top_in)).flatten(1)
    cols = wide.flatten().nonzero().squeeze(1)
    v_w, a_w = v.flatten(1).index_select(1, cols), a_star.flatten(1).index_select(1, cols)
    inputs = inputs.index_copy(1, cols, torch.exp(a_w + torch.logcumsumexp(v_w, dim=0)))
    return inputs.view_as(v) + torch.exp(a_star) * h0


class LinearScan(torch.autograd.Function):
    """``h_t = a_t h_{t-1} + b_t`` step by step, with its backward pass written out: the
    adjoint runs the same recurrence backwards, ``δ_t = ∂l/∂h_t + a_{t+1} δ_{t+1}``, and
    gives ``∂l/∂b_t = δ_t``, ``∂l/∂a_t = δ_t h_{t-1}``, ``∂l/∂h_0 = a_1 δ_1``. On the CPU
    its T small steps cost a third of the log-space scan's passes over (T, B, H)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        out, h = torch.empty_like(b), h0
        for t in range(a.shape[0]):
            h = torch.addcmul(b[t], a[t], h, out=out[t])
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, out, h0 = ctx.saved_tensors
        delta = torch.empty_like(grad)
        acc = delta[-1].copy_(grad[-1])
        for t in range(a.shape[0] - 2, -1, -1):
            acc = torch.addcmul(grad[t], a[t + 1], acc, out=delta[t])
        previous = torch.cat([h0.unsqueeze(0).expand_as(out[:1]), out[:-1]])
        return delta * previous, delta, a[0] * delta[0]


class MinCell(nn.Module):
    """One minGRU or minLSTM layer: a gate projection H → G·H of the input only.

    Args:
        cell: ``'mingru'`` (gates z, h̃) or ``'minlstm'`` (gates f, i, h̃).
        size: input and hidden width H.
    """

    def __init__(self, cell: str, size: int) -> None:
        super().__init__()
        check_choice("cell", cell, MIN_CELLS)
        self.cell = cell
        self.gates = nn.Linear(size, _GATES[cell] * size)

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` of the linear recurrence for inputs x (..., H)."""
        gates = self.gates(x)
        if gates.dtype in (torch.float16, torch.bfloat16):  # under autocast: logs in float32
            gates = gates.float()
        parts = gates.chunk(_GATES[self.cell], dim=-1)
        if self.cell == "mingru":
            k, pre = parts
            log_keep = -F.softplus(k)  # log(1 − z); log z = k + log(1 − z)
            return log_keep, (k + log_keep).add_(log_g(pre))
        k_f, k_i, pre = parts
        diff = F.softplus(-k_f) - F.softplus(-k_i)  # log(i / f)
        return -F.softplus(diff), -F.softplus(-diff) + log_g(pre)  # log f', log i' + log g

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of the linear recurrence in plain (not log) space, for x (..., H)."""
        parts = self.gates(x).chunk(_GATES[self.cell], dim=-1)
        if self.cell == "mingru":
            z = torch.sigmoid(parts[0])
            return 1 - z, z * g(parts[1])
        f, i = torch.sigmoid(parts[0]), torch.sigmoid(parts[1])
        total = f + i
        return f / total, i * g(parts[2]) / total

    def forward(self, x: Tensor, h0: Tensor, *, sequential: bool = False) -> Tensor:
        """Every state for inputs x (T, B, H) from h0 (B, H): (T, B, H), by the log-space
        parallel scan, or with ``sequential`` by :class:`LinearScan`."""
        if sequential:
            a, b = self.coefficients(x)
            return LinearScan.apply(a, b, h0.to(b.dtype))
        return parallel_scan(*self.log_coefficients(x), h0)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        """One step of the recurrence in plain space: x, h (B, H) → h (B, H)."""
        a, b = self.coefficients(x)
        return torch.addcmul(b, a, h)


class MinRNN(nn.Module):
    """L residual, pre-norm minGRU/minLSTM blocks behind an input projection; see the module
    docstring. The interface of the scratch cores: ``forward(input, hx) -> (output, h_n)``.

    Args:
        cell: ``'mingru'`` or ``'minlstm'``.
        input_size: I, features per step (V for token ids).
        hidden_size: H, width of the residual stream and of every layer's state.
        num_layers: L blocks.
        dropout: dropout on the residual stream after every block but the last.
        bptt_engine: ``'autograd'``: autograd through the log-space parallel scan;
            ``'manual'``: :class:`LinearScan`, the sequential recurrence with its hand-written
            backward pass (faster on the CPU, where the scan's parallelism buys nothing).

    Raises:
        ConfigError: a size is not a positive integer or the cell is unknown.
    """

    pair_state = False

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 dropout: float = 0.0, bptt_engine: str = "autograd") -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            check_positive_int(name, value)
        check_choice("cell", cell, MIN_CELLS)
        check_choice("bptt_engine", bptt_engine, BPTT_ENGINES)
        self.bptt_engine = bptt_engine
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.dropout = num_layers, float(dropout)
        self.proj = nn.Linear(input_size, hidden_size)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        self.cells = nn.ModuleList(MinCell(cell, hidden_size) for _ in range(num_layers))

    def extra_repr(self) -> str:
        return (f"{self.cell!r}, {self.input_size}, {self.hidden_size}, dropout={self.dropout}, "
                f"bptt_engine={self.bptt_engine!r}")

    def project(self, x: Tensor) -> Tensor:
        """The input projection: floats (..., I) or integer ids (...) → (..., H)."""
        if x.is_floating_point():
            return self.proj(x)
        return F.embedding(x, self.proj.weight.t()) + self.proj.bias

    def forward(self, input: Tensor, hx: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Run every block over every step with the parallel scan.

        Args:
            input: (B, T, I) floats or (B, T) integer ids in ``[0, I)``.
            hx: initial state (L, B, H), or None for zeros.
            generator: accepted for the scratch cores' interface; unused.

        Returns:
            ``(output, h_n)``: output (B, T, H), the top block's state at every step; h_n
            (L, B, H), every block's last state.

        Raises:
            ValueError: the input or the state has the wrong shape.
        """
        expected = 3 if input.is_floating_point() else 2
        if input.dim() != expected or (expected == 3 and input.shape[-1] != self.input_size):
            raise ValueError(f"MinRNN expects float input (B, T, {self.input_size}) or integer "
                             f"ids (B, T); got {input.dtype} {tuple(input.shape)}")
        x = self.project(input.transpose(0, 1))  # time-major (T, B, H)
        hx = self._state(hx, x)
        finals = []
        for k, (norm, cell) in enumerate(zip(self.norms, self.cells)):
            h = cell(norm(x), hx[k], sequential=self.bptt_engine == "manual")
            finals.append(h[-1])
            x = self._next_input(k, x, h)
        return x.transpose(0, 1), torch.stack(finals)

    def step(self, input: Tensor, hx: Tensor) -> tuple[Tensor, Tensor]:
        """One token through every block, sequentially (generation; no dropout).

        Args:
            input: (B, I) floats or (B,) integer ids.
            hx: state (L, B, H).

        Returns:
            ``(output (B, H), h (L, B, H))``.
        """
        x = self.project(input)
        finals = []
        for k, (norm, cell) in enumerate(zip(self.norms, self.cells)):
            h = cell.step(norm(x), hx[k])
            finals.append(h)
            x = h if k == self.num_layers - 1 else x + h
        return x, torch.stack(finals)

    def _next_input(self, k: int, x: Tensor, h: Tensor) -> Tensor:
        """Block k's output: h itself at the top, else the residual stream plus h."""
        if k == self.num_layers - 1:
            return h
        return F.dropout(x + h, self.dropout, self.training)

    def _state(self, hx: Tensor | None, x: Tensor) -> Tensor:
        """The initial state (L, B, H): zeros for None, validated otherwise."""
        if hx is None:
            return x.new_zeros(self.num_layers, x.shape[1], self.hidden_size,
                               dtype=self.proj.weight.dtype)
        if isinstance(hx, (tuple, list)) or hx.shape != (self.num_layers, x.shape[1],
                                                         self.hidden_size):
            got = type(hx).__name__ if isinstance(hx, (tuple, list)) else tuple(hx.shape)
            raise ValueError(f"expected state (L={self.num_layers}, B={x.shape[1]}, "
                             f"H={self.hidden_size}); got {got}")
        return hx
