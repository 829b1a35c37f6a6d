"""Recurrent cores written from the chapter's equations, plus the factory that picks a core.

:class:`ScratchRNN`, :class:`ScratchGRU` and :class:`ScratchLSTM` behave like
``torch.nn.RNN/GRU/LSTM(batch_first=True)``: the same constructor arguments, the same
``forward(input, hx=None) -> (output, h_n)``, the same parameter names, shapes and gate order.
So ``load_state_dict`` moves weights between a scratch core and its fused twin in either
direction, and the fused twin is the reference the tests check the scratch code against.

Inside, the cores run time-major and compute the input projection of a layer for all T steps
in one matrix product before the time loop; only ``h_{t-1} W_hh^T`` is left inside the loop.
Integer input of shape (B, T) is read as one-hot indices over ``input_size`` and the first
layer's projection becomes a row lookup into ``weight_ih_l0`` (see :class:`seqlm.models.RNNLM`).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlm.cores import INITS, MANUAL_ENGINE_CELLS, MIN_CELLS, check_core
from seqlm.errors import check_choice, check_positive_int
from seqlm.models.gates import GATES, input_bias, layer_weights
from seqlm.models.minrnn import MinRNN

D2L_INIT_STD = 0.01  # the book's sigma for N(0, sigma^2) weights

State = Tensor | tuple[Tensor, Tensor]


def init_d2l_(module: nn.Module) -> None:
    """Re-initialise in place as the book does: weights ~ N(0, 0.01²), biases = 0."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "bias" in name:
                param.zero_()
            else:
                param.normal_(0.0, D2L_INIT_STD)


class _ScratchCore(nn.Module):
    """Shared parameters, layer stacking and time loop of the three scratch cores."""

    cell = "rnn"  # the cell whose gate layout (seqlm.models.gates) the weights follow
    pair_state = False  # LSTM carries (h, c)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 dropout: float = 0.0, init: str = "torch", truncation=None,
                 **core: str) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            check_positive_int(name, value)
        self.truncation = check_core(self.cell, "scratch", dropout=dropout, init=init,
                                     truncation=truncation, **core)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout = float(dropout)
        G = len(GATES[self.cell]) * hidden_size
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(G, fan_in)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(G, hidden_size)))
            setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(G)))
            setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(G)))
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "torch") -> None:
        """``torch``: every parameter ~ U(−1/√H, 1/√H), like torch.nn.RNN; ``d2l``: see
        :func:`init_d2l_`."""
        check_choice("init", init, INITS)
        if init == "d2l":
            init_d2l_(self)
            return
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-bound, bound)

    def layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of layer ``k``."""
        return layer_weights(self, k)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"dropout={self.dropout}, truncation={self.truncation}")

    # -- forward -----------------------------------------------------------------------------
    def forward(self, input: Tensor, hx: State | None = None, *,
                generator: torch.Generator | None = None) -> tuple[Tensor, State]:
        """Run all layers over all time steps.

        Args:
            input: (B, T, I) floats, (T, I) floats for one unbatched sequence, or (B, T)
                integers read as one-hot indices in ``[0, I)``.
            hx: initial state (L, B, H) — for LSTM a pair ``(h_0, c_0)`` — or None for zeros.
                Unbatched input takes (L, H).
            generator: random source for randomized truncation; unused otherwise.

        Returns:
            ``(output, h_n)``: output (B, T, H) is the top layer's hidden state at every step,
            h_n has the layout of ``hx``.

        Raises:
            ValueError: the input has the wrong number of dimensions or feature size.
        """
        unbatched = input.is_floating_point() and input.dim() == 2
        x = self._time_major(input.unsqueeze(0) if unbatched else input)
        parts = self._state_parts(hx, x, unbatched)  # (h,) or (h, c), each (L, B, H)
        finals = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0.0:
                x = F.dropout(x, self.dropout, self.training)
            x, h_k = self._run_layer(k, x, self._join([p[k] for p in parts]), generator)
            finals.append(h_k if self.pair_state else (h_k,))
        h_n = [torch.stack(layers) for layers in zip(*finals)]
        output = x.transpose(0, 1)  # a view, as torch's batch_first cores return
        if unbatched:
            output, h_n = output.squeeze(0), [h.squeeze(1) for h in h_n]
        return output, self._join(h_n)

    def _time_major(self, input: Tensor) -> Tensor:
        """(B, T, I) → (T, B, I); integer (B, T) → (T, B) indices, validated for shape."""
        expected = 2 if not input.is_floating_point() else 3
        if input.dim() != expected:
            raise ValueError(f"{type(self).__name__} expects float input (B, T, I), (T, I) or "
                             f"integer indices (B, T); got {input.dtype} {tuple(input.shape)}")
        if expected == 3 and input.shape[-1] != self.input_size:
            raise ValueError(f"input feature size {input.shape[-1]} != input_size "
                             f"{self.input_size}")
        return input.transpose(0, 1)

    def _project_input(self, k: int, x: Tensor) -> Tensor:
        """Hoisted input projection of layer ``k`` for all steps: (T, B, I) → (T, B, G·H)."""
        w_ih, _, b_ih, b_hh = self.layer_weights(k)
        bias = input_bias(self.cell, b_ih, b_hh)
        if x.is_floating_point():
            return F.linear(x, w_ih, bias)
        # one-hot x · W_ih^T selects rows of W_ih^T: a lookup instead of a (V-wide) product,
        # from a row-major copy of W_ih^T + b (rows gathered whole, not strided columns)
        return F.embedding(x, w_ih.t().clone(memory_format=torch.contiguous_format).add_(bias))

    def _engine_inputs(self, k: int, x: Tensor, h0: Tensor) -> tuple[Tensor, ...]:
        """``(xw, h0, weight_hh, bias_hh)`` of layer ``k`` in one dtype, for a manual engine."""
        xw = self._project_input(k, x)
        # under autocast xw comes out in the low-precision dtype; the engines want one dtype
        return (xw, *(t.to(xw.dtype) for t in (h0, *self.layer_weights(k)[1::2])))

    def _run_layer(self, k: int, x: Tensor, h0: State,
                   generator: torch.Generator | None) -> tuple[Tensor, State]:
        xw = self._project_input(k, x)
        step = partial(self.step, *self.layer_weights(k)[1::2])  # (weight_hh, bias_hh)
        if self.truncation is not None and torch.is_grad_enabled():
            from seqlm.models.bptt import unroll

            return unroll(step, xw, h0, truncation=self.truncation, generator=generator)
        outputs, h = [], h0
        for t in range(xw.shape[0]):
            h = step(xw[t], h)
            outputs.append(h[0] if isinstance(h, tuple) else h)
        return torch.stack(outputs), h

    # -- state layout -------------------------------------------------------------------------
    def _join(self, parts: list[Tensor]) -> State:
        return tuple(parts) if self.pair_state else parts[0]

    def _state_parts(self, hx: State | None, x: Tensor, unbatched: bool) -> tuple[Tensor, ...]:
        """The state as a tuple of (L, B, H) tensors: zeros for None, validated otherwise."""
        n = 2 if self.pair_state else 1
        if hx is None:
            dtype = x.dtype if x.is_floating_point() else self.weight_hh_l0.dtype
            zeros = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size, dtype=dtype)
            return (zeros,) * n  # never written in place, so h and c may share it
        parts = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
        if len(parts) != n:
            raise ValueError(f"{type(self).__name__} expects the state as "
                             f"{'a pair (h_0, c_0)' if n == 2 else 'one tensor'}")
        parts = tuple(p.unsqueeze(1) for p in parts) if unbatched else parts
        for h in parts:
            if h.dim() != 3 or h.shape[0] != self.num_layers or h.shape[2] != self.hidden_size:
                raise ValueError(f"expected state (L={self.num_layers}, B, "
                                 f"H={self.hidden_size}); got {tuple(h.shape)}")
        return parts


class ScratchRNN(_ScratchCore):
    r"""The chapter's RNN, a drop-in for ``torch.nn.RNN(batch_first=True)``.

    For each layer, with the same weights at every step:

    .. math::  H_t = \phi(X_t W_{xh} + H_{t-1} W_{hh} + b_h), \quad \phi \in \{\tanh, \mathrm{relu}\}

    In torch's names ``W_xh = weight_ih^T`` (I, H), ``W_hh = weight_hh^T`` (H, H) and
    ``b_h = bias_ih + bias_hh``; the input of layer k > 0 is the output of layer k−1.

    Args:
        input_size: I, features per step (V for one-hot input).
        hidden_size: H.
        num_layers: L, stacked layers.
        nonlinearity: ``'tanh'`` (the chapter) or ``'relu'``.
        dropout: dropout probability on the outputs of every layer but the last.
        init: ``'torch'`` (U(−1/√H, 1/√H)) or ``'d2l'`` (N(0, 0.01²) weights, zero biases).
        bptt_engine: ``'autograd'``, or ``'manual'`` for the hand-written backward pass of
            :func:`seqlm.models.bptt.rnn_recurrence`.
        truncation: a :class:`seqlm.models.bptt.Truncation`, its text form, or None (= window).

    Raises:
        ConfigError: a size is not a positive integer or a choice is unknown.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 nonlinearity: str = "tanh", dropout: float = 0.0, init: str = "torch",
                 bptt_engine: str = "autograd", truncation=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout=dropout, init=init,
                         truncation=truncation, nonlinearity=nonlinearity,
                         bptt_engine=bptt_engine)
        self.nonlinearity, self.bptt_engine = nonlinearity, bptt_engine

    def step(self, weight_hh: Tensor, bias_hh: Tensor, xw_t: Tensor, h: Tensor) -> Tensor:
        pre = torch.addmm(xw_t, h, weight_hh.t())  # xw_t already holds both biases
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

    def _run_layer(self, k, x, h0, generator):
        if self.bptt_engine == "autograd":
            return super()._run_layer(k, x, h0, generator)
        from seqlm.models.bptt import rnn_recurrence

        xw, h0, weight_hh, _ = self._engine_inputs(k, x, h0)  # b_hh is folded into xw
        return rnn_recurrence(xw, h0, weight_hh, nonlinearity=self.nonlinearity,
                              truncation=self.truncation, generator=generator)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}, "
                f"bptt_engine={self.bptt_engine!r}")


class ScratchGRU(_ScratchCore):
    r"""Gated recurrent unit, a drop-in for ``torch.nn.GRU(batch_first=True)``.

    Gate order in ``weight_ih``/``weight_hh`` is r, z, n (torch's):

    .. math::
        R_t &= \sigma(X_t W_{xr} + b_{xr} + H_{t-1} W_{hr} + b_{hr}) \\
        Z_t &= \sigma(X_t W_{xz} + b_{xz} + H_{t-1} W_{hz} + b_{hz}) \\
        N_t &= \tanh(X_t W_{xn} + b_{xn} + R_t \odot (H_{t-1} W_{hn} + b_{hn})) \\
        H_t &= (1 - Z_t) \odot N_t + Z_t \odot H_{t-1}

    The reset gate multiplies ``b_hn``, so ``bias_hh`` stays inside the loop. Arguments as
    :class:`ScratchRNN` without ``nonlinearity``; ``bptt_engine='manual'`` runs the
    hand-written backward pass of :func:`seqlm.models.bptt.gru_recurrence` and takes
    truncation ``window``/``full`` only.

    Raises:
        ConfigError: as :class:`ScratchRNN`, or ``bptt_engine='manual'`` with a truncation
            other than ``window``/``full``.
    """

    cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 dropout: float = 0.0, init: str = "torch", bptt_engine: str = "autograd",
                 truncation=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout=dropout, init=init,
                         truncation=truncation, bptt_engine=bptt_engine)
        self.bptt_engine = bptt_engine

    def step(self, weight_hh: Tensor, bias_hh: Tensor, xw_t: Tensor, h: Tensor) -> Tensor:
        hw = torch.addmm(bias_hh, h, weight_hh.t())
        x_r, x_z, x_n = xw_t.chunk(3, dim=-1)
        h_r, h_z, h_n = hw.chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return n + z * (h - n)  # (1 − z)·n + z·h, written so mixed precision promotes

    def _run_layer(self, k, x, h0, generator):
        if self.bptt_engine == "autograd":
            return super()._run_layer(k, x, h0, generator)
        from seqlm.models.bptt import gru_recurrence

        return gru_recurrence(*self._engine_inputs(k, x, h0))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bptt_engine={self.bptt_engine!r}"


class ScratchLSTM(_ScratchCore):
    r"""Long short-term memory, a drop-in for ``torch.nn.LSTM(batch_first=True)``.

    Gate order in ``weight_ih``/``weight_hh`` is i, f, g, o (torch's):

    .. math::
        I_t &= \sigma(X_t W_{xi} + H_{t-1} W_{hi} + b_i) \qquad
        F_t  = \sigma(X_t W_{xf} + H_{t-1} W_{hf} + b_f) \\
        G_t &= \tanh(X_t W_{xg} + H_{t-1} W_{hg} + b_g) \qquad
        O_t  = \sigma(X_t W_{xo} + H_{t-1} W_{ho} + b_o) \\
        C_t &= F_t \odot C_{t-1} + I_t \odot G_t \qquad
        H_t  = O_t \odot \tanh(C_t)

    State is the pair ``(h, c)``, each (L, B, H); the output is h. Arguments as
    :class:`ScratchRNN` without ``nonlinearity`` and ``bptt_engine``.
    """

    cell = "lstm"
    pair_state = True

    def step(self, weight_hh: Tensor, bias_hh: Tensor, xw_t: Tensor,
             state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        gates = torch.addmm(xw_t, h, weight_hh.t())
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


_SCRATCH = {"rnn": ScratchRNN, "gru": ScratchGRU, "lstm": ScratchLSTM}
_FUSED = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def make_core(cell: str, impl: str, input_size: int, hidden_size: int, num_layers: int = 1,
              *, nonlinearity: str = "tanh", dropout: float = 0.0, init: str = "torch",
              bptt_engine: str = "autograd", truncation=None) -> nn.Module:
    """Build a recurrent core: a scratch core, ``torch.nn.RNN/GRU/LSTM(batch_first=True)``, or
    for cell ``'mingru'``/``'minlstm'`` a :class:`~seqlm.models.minrnn.MinRNN`.

    Both kinds share parameter names and the ``forward(input, hx) -> (output, h_n)`` contract,
    so the rest of the model never branches on which one it holds.

    Args:
        cell: ``'rnn'``, ``'gru'``, ``'lstm'``, ``'mingru'`` or ``'minlstm'``.
        impl: ``'scratch'`` (this module; the only one for the min cells) or ``'fused'``
            (torch's cuDNN/MKL kernels).
        input_size, hidden_size, num_layers, dropout, init: as :class:`ScratchRNN`.
        nonlinearity: ``'tanh'`` or ``'relu'``; only ``'tanh'`` for GRU and LSTM.
        bptt_engine: ``'manual'`` needs impl ``'scratch'`` and cell ``'rnn'``, or cell
            ``'gru'`` with truncation ``window``/``full``.
        truncation: a ``Truncation``, its text, or None; fused cores take only window/full.

    Raises:
        ConfigError: an unknown choice or a combination the chosen core cannot run.
    """
    kwargs = {"dropout": dropout, "init": init, "truncation": truncation}
    check_core(cell, impl, nonlinearity=nonlinearity, bptt_engine=bptt_engine, **kwargs)
    if cell in MIN_CELLS:
        return MinRNN(cell, input_size, hidden_size, num_layers, dropout=dropout,
                      bptt_engine=bptt_engine)
    if impl == "scratch":
        if cell in MANUAL_ENGINE_CELLS:
            kwargs.update(bptt_engine=bptt_engine)
        if cell == "rnn":
            kwargs.update(nonlinearity=nonlinearity)
        return _SCRATCH[cell](input_size, hidden_size, num_layers, **kwargs)
    extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    # torch warns about dropout on a single layer, where it would have no effect anyway
    core = _FUSED[cell](input_size, hidden_size, num_layers, batch_first=True,
                        dropout=dropout if num_layers > 1 else 0.0, **extra)
    if init == "d2l":
        init_d2l_(core)
    return core
