"""One-token decoding steps in numpy: the CPU fast path of single-stream generation.

Generating one stream is a chain of matrix-vector products, ``h W_hh^T`` (1 x H by H x G·H)
and the decoder's ``h W_out^T``, each followed by a handful of element-wise operations on a
few hundred numbers. At that size the cost is call overhead and the product's memory traffic,
not arithmetic. On the machine this project measures on (AMD EPYC, 2 threads) torch's float32
CPU product of a 1 x 512 row by a 512 x 512 matrix takes about 24 µs and each element-wise
torch call about 3 µs; numpy's (OpenBLAS) product takes about 13 µs and its element-wise calls
well under 1 µs. :class:`NumpyStepper` therefore runs the cells' equations in numpy on copies
of the weights laid out for row-vector products, and :meth:`seqlm.models.RNNLM.stepper` picks
it for float32 models on the CPU when the batch is a single row (with more rows torch's
matrix product catches up: about equal at 4 rows, ahead at 64).

The equations are the scratch cores' (torch's gate order; see :mod:`seqlm.models.scratch`).
The logistic function is computed as ``0.5 · tanh(x / 2) + 0.5``, which equals
``1 / (1 + e^{-x})`` and never overflows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

State = Tensor | tuple[Tensor, Tensor]


def _array(t: Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy copy of ``t`` (detached, on the CPU)."""
    return t.detach().to("cpu", torch.float32).numpy().copy(order="C")


def _numpy(t: Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (detached first only when it needs to be)."""
    return (t.detach() if t.requires_grad else t).numpy()


def _sigmoid_(x: np.ndarray) -> np.ndarray:
    """Logistic function in place: 0.5 · tanh(x / 2) + 0.5."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


class NumpyStepper:
    """``step(tokens, state) -> (logits, state)`` of an :class:`~seqlm.models.RNNLM`, in numpy.

    It computes what the model's ``forward`` computes on (B, 1) tokens in eval mode, for
    float32 weights on the CPU. The weights are copied when the stepper is built: make a new
    one after changing them. Tokens, states and logits are torch tensors on the CPU, as with
    the torch stepper; the returned ones share memory with numpy arrays made for this step.

    Args:
        model: the language model (scratch or fused core, any cell, any number of layers).
    """

    def __init__(self, model) -> None:
        c = model.config
        core = model.core
        self.cell, self.relu = c.cell, c.nonlinearity == "relu"
        self.hidden = c.hidden_size
        fold = c.cell != "gru"  # GRU: the reset gate multiplies b_hh, so it stays apart

        def weights(k: int):
            return tuple(getattr(core, f"{name}_l{k}") for name in
                         ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

        with torch.no_grad():
            self.table = _array(model.input_table())  # (V, G·H), see RNNLM.input_table
            self.layers = []
            for k in range(c.num_layers):
                w_ih, w_hh, b_ih, b_hh = weights(k)
                self.layers.append((
                    _array(w_ih.t()) if k else None,
                    _array(b_ih + b_hh if fold else b_ih) if k else None,
                    _array(w_hh.t()),  # (H, G·H): h @ w_hh is h W_hh^T
                    None if fold else _array(b_hh)))
            self.w_out = _array(model.decoder.weight.t())  # (H, V)
            self.b_out = _array(model.decoder.bias)

    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """Advance every row by one token.

        Args:
            tokens: (B,) int64 ids.
            state: (L, B, H), for LSTM a pair of them.

        Returns:
            ``(logits (B, V), new state)``.
        """
        pair = isinstance(state, tuple)
        parts = tuple(_numpy(p) for p in (state if pair else (state,)))
        logits, new = self.step(_numpy(tokens), parts)
        h = torch.from_numpy(new[0])
        return torch.from_numpy(logits), ((h, torch.from_numpy(new[1])) if pair else h)

    @staticmethod
    def numpy_state(state: State) -> tuple[np.ndarray, ...]:
        """A torch state as the tuple of float32 arrays :meth:`step` takes: ``(h,)`` or
        ``(h, c)``, each (L, B, H), copied."""
        parts = state if isinstance(state, tuple) else (state,)
        return tuple(p.detach().to("cpu", torch.float32).numpy().copy() for p in parts)

    def step(self, ids: np.ndarray, state: tuple[np.ndarray, ...]
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """:meth:`__call__` on numpy arrays, without a conversion: ``ids`` (B,) integers,
        ``state`` as :meth:`numpy_state` makes it; returns ``(logits (B, V), new state)``."""
        x = self.table[ids]
        h_all = state[0]
        new_h = np.empty_like(h_all)
        if self.cell == "lstm":
            c_all = state[1]
            new_c = np.empty_like(c_all)
        for k, (w_x, b_x, w_hh, b_hh) in enumerate(self.layers):
            if k:
                x = np.dot(new_h[k - 1], w_x)
                x += b_x
            if self.cell == "rnn":
                self._rnn(x, h_all[k], w_hh, new_h[k])
            elif self.cell == "gru":
                self._gru(x, h_all[k], w_hh, b_hh, new_h[k])
            else:
                self._lstm(x, h_all[k], c_all[k], w_hh, new_h[k], new_c[k])
        logits = np.dot(new_h[-1], self.w_out)
        logits += self.b_out
        return logits, ((new_h, new_c) if self.cell == "lstm" else (new_h,))

    def _rnn(self, x, h, w_hh, out) -> None:
        np.dot(h, w_hh, out=out)
        out += x  # x holds both biases
        if self.relu:
            np.maximum(out, 0.0, out=out)
        else:
            np.tanh(out, out=out)

    def _gru(self, x, h, w_hh, b_hh, out) -> None:
        H = self.hidden
        hw = np.dot(h, w_hh)
        hw += b_hh
        rz = x[:, :2 * H] + hw[:, :2 * H]
        _sigmoid_(rz)
        r, z = rz[:, :H], rz[:, H:]
        n = r * hw[:, 2 * H:]
        n += x[:, 2 * H:]
        np.tanh(n, out=n)
        np.subtract(h, n, out=out)
        out *= z
        out += n  # (1 − z)·n + z·h

    def _lstm(self, x, h, c, w_hh, out_h, out_c) -> None:
        H = self.hidden
        gates = np.dot(h, w_hh)
        gates += x
        _sigmoid_(gates[:, :2 * H])  # input and forget gates
        _sigmoid_(gates[:, 3 * H:])  # output gate
        g = np.tanh(gates[:, 2 * H:3 * H])
        np.multiply(gates[:, H:2 * H], c, out=out_c)
        g *= gates[:, :H]
        out_c += g
        np.tanh(out_c, out=out_h)
        out_h *= gates[:, 3 * H:]
