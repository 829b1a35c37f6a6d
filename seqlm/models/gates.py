"""Torch's gate layout of each cell, written once for every implementation that reads weights.

``weight_ih`` (G·H, I) and ``weight_hh`` (G·H, H) stack one H-row block per gate, in this
order; the scratch cores, the hand-written BPTT engines and the generation steppers all slice
through :func:`gate_slice` rather than restating the order. The GRU's reset gate multiplies
``h W_hn^T + b_hn``, so its ``b_hh`` cannot be folded into the input term; every other cell's
can (:func:`input_bias`).
"""

from __future__ import annotations

GATES = {"rnn": ("h",), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
KEEPS_HIDDEN_BIAS = frozenset({"gru"})  # cells whose b_hh stays inside the recurrence


def gate_slice(cell: str, first: str, last: str | None = None, *, hidden: int) -> slice:
    """The columns of gates ``first`` .. ``last`` (adjacent in the layout) in a (·, G·H) row."""
    order = GATES[cell]
    start, stop = order.index(first), order.index(last or first) + 1
    return slice(start * hidden, stop * hidden)


def input_bias(cell: str, bias_ih, bias_hh):
    """The bias added to a layer's input term ``x W_ih^T``: ``b_ih + b_hh`` where ``b_hh``
    folds in, ``b_ih`` alone for the GRU."""
    return bias_ih if cell in KEEPS_HIDDEN_BIAS else bias_ih + bias_hh


def layer_weights(core, k: int) -> tuple:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of layer ``k`` of a scratch or fused core
    (both use torch's parameter names)."""
    return tuple(getattr(core, f"{name}_l{k}") for name in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
