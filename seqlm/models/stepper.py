r"""One-token steps for generation: one interface, a torch and a numpy backend.

A stepper computes what :meth:`RNNLM.forward <seqlm.models.RNNLM.forward>` computes on (B, 1)
tokens in eval mode, without its per-call work. The first layer's input term of every token,
:math:`\mathrm{embed}(v) W_{ih}^T + b`, is tabulated once as a (V, G·H) matrix
(:func:`input_table`), so a step gathers one row per sequence instead of building a one-hot
vector (or an embedding) and multiplying it; then each layer runs its cell's update once and
the decoder reads the top h. No dropout, no autograd; the weights are read when the stepper is
built (make a new one after changing them).

Both backends implement :class:`Stepper`: ``step(tokens, state) -> (logits, state)`` on torch
tensors, and :meth:`Stepper.steps`, the decoding loop (:func:`seqlm.decoding.decode_steps`),
which keeps ids, logits and state in the backend's own arrays between tokens. :class:`NumpyStepper` runs the cells' equations in numpy:
generating one stream is a chain of matrix-vector products and a few element-wise operations on
a few hundred numbers, where call overhead dominates, and numpy's (OpenBLAS) product and
element-wise calls cost about half of torch's there (docs/performance.md). :func:`make_stepper`
picks it for a single float32 CPU row; with more rows torch's product catches up.

Gate layout and bias folding come from :mod:`seqlm.models.gates`; the cell equations are the
scratch cores' (:mod:`seqlm.models.scratch`). The logistic function in numpy is
``0.5 · tanh(x / 2) + 0.5``, equal to ``1 / (1 + e^{-x})`` and never overflowing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seqlm.decoding import decode_steps
from seqlm.cores import MIN_CELLS
from seqlm.errors import ConfigError, check_choice
from seqlm.models.gates import KEEPS_HIDDEN_BIAS, gate_slice, input_bias, layer_weights
from seqlm.models.scratch import State, make_core

BACKENDS = ("auto", "torch", "numpy")
Pick = Callable[[np.ndarray], np.ndarray]  # (N, V) logits -> (N,) ids, seqlm.decoding.make_pick


@torch.no_grad()
def input_table(model) -> Tensor:
    r"""(V, G·H): the first layer's input term of every token of ``model`` (an RNNLM),
    :math:`\mathrm{embed}(v) W_{ih}^T + b` (b from :func:`~seqlm.models.gates.input_bias`),
    row-major, so that a step gathers whole rows."""
    core, cell = model.core, model.config.cell
    bias = input_bias(cell, core.bias_ih_l0, core.bias_hh_l0)
    if model.embedding is not None:
        return F.linear(model.embedding.weight, core.weight_ih_l0, bias)
    return (core.weight_ih_l0.t() + bias).contiguous()


def make_stepper(model, backend: str = "auto", batch_size: int | None = None) -> Stepper:
    """The stepper of ``model`` (an RNNLM) for ``batch_size`` rows.

    Args:
        backend: ``'torch'``, ``'numpy'`` (float32 on the CPU, the chapter's cells only), or
            ``'auto'``: numpy for a float32 CPU model of those cells stepping one row, else
            torch.
        batch_size: rows the caller will step (only ``'auto'`` reads it).

    Raises:
        ConfigError: an unknown backend, or ``'numpy'`` for a model it cannot run.
    """
    check_choice("backend", backend, BACKENDS)
    weight = model.reference()
    cpu32 = weight.device.type == "cpu" and weight.dtype == torch.float32
    if model.config.cell in MIN_CELLS:
        if backend == "numpy":
            raise ConfigError(f"the numpy stepper runs cells 'rnn', 'gru' and 'lstm', not "
                              f"{model.config.cell!r}; use `backend` 'torch' or 'auto'")
        return MinStepper(model)
    if backend == "numpy" and not cpu32:
        raise ConfigError(f"the numpy stepper needs a float32 model on the CPU, not "
                          f"{weight.dtype} on {weight.device}; use `backend` 'torch'")
    if backend == "numpy" and model.adaptive:
        raise ConfigError("the numpy stepper runs a full decoder only, not output 'adaptive'; "
                          "use `backend` 'torch'")
    if backend == "numpy" or (backend == "auto" and cpu32 and batch_size == 1
                              and not model.adaptive):
        return NumpyStepper(model)
    return TorchStepper(model)


class Stepper:
    """Advances B streams one token at a time; see the module docstring."""

    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: ``tokens`` (B,) int64, ``state`` as :meth:`RNNLM.forward` takes it;
        returns ``(logits (B, V), new state)``."""
        raise TypeError(f"{type(self).__name__} does not define a step")

    def steps(self, logits: Tensor, state: State, steps: int, pick: Pick, *,
              greedy: bool = False) -> Iterator[tuple]:
        """The decoding loop as a generator: pick a token per row from ``logits``, yield it,
        feed it back, ``steps`` times (the caller may stop early).

        Args:
            logits: (B, V) scores of the first new token; ``state`` the state they follow.
            pick: draws (B,) ids from (B, V) numpy logits (:func:`seqlm.decoding.make_pick`).
            greedy: ``pick`` is the argmax; the backend takes its own (on the device).

        Yields:
            ``(tokens (B,), logits (B, V))`` in the backend's arrays (numpy for
            :class:`NumpyStepper`, else torch tensors on the model's device).
        """
        logits, state = self._native(logits, state)
        return decode_steps(self._advance, logits, state, steps,
                            partial(self._pick, pick, greedy))

    # The loop's backend hooks; torch tensors throughout by default.
    def _native(self, logits, state):
        return logits, state

    def _pick(self, pick: Pick, greedy: bool, logits: Tensor) -> Tensor:
        if greedy:
            return logits.argmax(dim=-1)  # on the device: no host sync per token
        return torch.from_numpy(pick(logits.detach().float().cpu().numpy())).to(logits.device)

    def _advance(self, tokens, state):
        return self(tokens, state)


class TorchStepper(Stepper):
    """The torch backend; fused cores run through a scratch twin holding their weights."""

    @torch.no_grad()
    def __init__(self, model) -> None:
        c, core = model.config, model.core
        if c.impl != "scratch":  # same parameter names, so the weights load as they are
            core = make_core(c.cell, "scratch", core.input_size, c.hidden_size, c.num_layers,
                             nonlinearity=c.nonlinearity).to(model.reference())
            core.load_state_dict(model.core.state_dict())
        self.core, self.table = core, input_table(model)
        self.layers = []
        for k in range(c.num_layers):
            w_ih, w_hh, b_ih, b_hh = layer_weights(core, k)
            self.layers.append((w_ih.t(), input_bias(c.cell, b_ih, b_hh), w_hh, b_hh))
        self.decode = model.decoder if model.adaptive else partial(
            torch.addmm, model.decoder.bias, mat2=model.decoder.weight.t())

    @torch.no_grad()
    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        pair = self.core.pair_state
        x = self.table.index_select(0, tokens)
        parts = state if pair else (state,)
        finals = []
        for k, (w_x, bias, w_hh, b_hh) in enumerate(self.layers):
            if k:
                x = torch.addmm(bias, x, w_x)
            h = self.core.step(w_hh, b_hh, x, tuple(p[k] for p in parts) if pair else parts[0][k])
            finals.append(h if pair else (h,))
            x = h[0] if pair else h
        # one layer: a view instead of the copy torch.stack makes
        new = tuple(layer[0].unsqueeze(0) if len(layer) == 1 else torch.stack(layer)
                    for layer in zip(*finals))
        return self.decode(x), new if pair else new[0]


class MinStepper(Stepper):
    """The torch backend of a minGRU/minLSTM model: :meth:`MinRNN.step
    <seqlm.models.minrnn.MinRNN.step>`, the sequential recurrence, one token per call."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        x = tokens if model.embedding is None else model.embedding(tokens)
        if model.embedding is None and model.literal_one_hot:
            x = F.one_hot(tokens, model.config.vocab_size).to(model.reference().dtype)
        output, state = model.core.step(x, state)
        return model.decode(output), state


def _array(t: Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy copy of ``t`` (detached, on the CPU)."""
    return t.detach().to("cpu", torch.float32).numpy().copy(order="C")


def _sigmoid_(x: np.ndarray) -> np.ndarray:
    """Logistic function in place: 0.5 · tanh(x / 2) + 0.5."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


class NumpyStepper(Stepper):
    """The numpy backend, for float32 weights on the CPU (copied when it is built).

    Its ``__call__`` takes and returns torch tensors like the torch backend (the returned ones
    share memory with numpy arrays made for the step); :meth:`steps` stays in numpy throughout.
    """

    def __init__(self, model) -> None:
        c, core = model.config, model.core
        self.cell, self.relu, H = c.cell, c.nonlinearity == "relu", c.hidden_size
        spans = {"gru": {"rz": ("r", "z"), "n": ("n",)},
                 "lstm": {"if": ("i", "f"), "i": ("i",), "f": ("f",), "g": ("g",), "o": ("o",)}}
        self.slices = {name: gate_slice(c.cell, *span, hidden=H)
                       for name, span in spans.get(c.cell, {}).items()}
        with torch.no_grad():
            self.table = _array(input_table(model))  # (V, G·H)
            self.layers = []
            for k in range(c.num_layers):
                w_ih, w_hh, b_ih, b_hh = layer_weights(core, k)
                keeps = c.cell in KEEPS_HIDDEN_BIAS
                self.layers.append((
                    _array(w_ih.t()) if k else None,
                    _array(input_bias(c.cell, b_ih, b_hh)) if k else None,
                    _array(w_hh.t()),  # (H, G·H): h @ w_hh is h W_hh^T
                    _array(b_hh) if keeps else None))
            self.w_out = _array(model.decoder.weight.t())  # (H, V)
            self.b_out = _array(model.decoder.bias)

    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        pair = isinstance(state, tuple)
        logits, new = self._advance(tokens.numpy(), self._native(None, state)[1])
        h = torch.from_numpy(new[0])
        return torch.from_numpy(logits), ((h, torch.from_numpy(new[1])) if pair else h)

    def _native(self, logits, state):
        parts = state if isinstance(state, tuple) else (state,)
        arrays = tuple(p.detach().to("cpu", torch.float32).numpy().copy() for p in parts)
        return (None if logits is None else logits.detach().numpy()), arrays

    def _pick(self, pick: Pick, greedy: bool, logits: np.ndarray) -> np.ndarray:
        return np.argmax(logits, axis=-1) if greedy else pick(logits)

    def _advance(self, ids: np.ndarray, state: tuple[np.ndarray, ...]):
        """One step on numpy arrays: ``ids`` (B,), ``state`` ``(h,)`` or ``(h, c)``, each
        (L, B, H); returns ``(logits (B, V), new state)``."""
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
        s_rz, s_n = self.slices["rz"], self.slices["n"]
        hw = np.dot(h, w_hh)
        hw += b_hh
        rz = x[:, s_rz] + hw[:, s_rz]
        _sigmoid_(rz)
        r, z = np.split(rz, 2, axis=1)
        n = r * hw[:, s_n]
        n += x[:, s_n]
        np.tanh(n, out=n)
        np.subtract(h, n, out=out)
        out *= z
        out += n  # (1 − z)·n + z·h

    def _lstm(self, x, h, c, w_hh, out_h, out_c) -> None:
        s = self.slices
        gates = np.dot(h, w_hh)
        gates += x
        _sigmoid_(gates[:, s["if"]])  # input and forget gates
        _sigmoid_(gates[:, s["o"]])  # output gate
        g = np.tanh(gates[:, s["g"]])
        np.multiply(gates[:, s["f"]], c, out=out_c)
        g *= gates[:, s["i"]]
        out_c += g
        np.tanh(out_c, out=out_h)
        out_h *= gates[:, s["o"]]
