"""The small matrix products inside the hand-written BPTT loops, through the faster kernel.

At the loops' shapes (a batch of 32 rows times an H x G·H weight, H = 512) oneDNN's float32
matmul beats torch's default CPU GEMM on the machine this project measures (AMD EPYC, 2
threads): forward products from a weight reordered once per call into oneDNN's blocked layout
took 11.5 ms for 35 GRU steps against 16-19 ms, and the backward products on the transposed
view 13 ms against 16 ms (interleaved timing). Other dtypes and devices use torch's GEMM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _onednn_available() -> bool:
    mkldnn = getattr(torch.backends, "mkldnn", None)
    return (mkldnn is not None and mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


ONEDNN = _onednn_available()  # this torch build has oneDNN's matmul operators


def onednn_runs(x: Tensor) -> bool:
    """Whether oneDNN's matmul runs the products of ``x``'s loops: float32 CPU tensors, where
    this torch build has the operators."""
    return ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu"


def hidden_product(weight: Tensor, bias: Tensor | None, batch: int) -> Callable[[Tensor], Tensor]:
    """A function ``h -> h W^T (+ bias)``, a new (B, rows of W) tensor, for the forward loop.

    oneDNN runs it from ``weight`` reordered once here into its blocked layout for ``batch``
    rows.
    """
    if onednn_runs(weight):
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
        return lambda h: torch.ops.mkldnn._linear_pointwise(h, packed, bias, "none", [], "")
    weight_t = weight.t()
    if bias is None:
        return lambda h: torch.mm(h, weight_t)
    return lambda h: torch.addmm(bias, h, weight_t)


def hidden_accumulator(weight: Tensor, batch: int) -> Callable[[Tensor, Tensor], Tensor]:
    """A function ``(acc, h) -> acc += h W^T`` (in place, returns ``acc``) for a forward loop
    whose inputs are already in ``acc``: oneDNN's product from the reordered weight, then one
    add; elsewhere torch's ``addmm_`` in place."""
    if onednn_runs(weight):
        product = hidden_product(weight, None, batch)
        return lambda acc, h: acc.add_(product(h))
    weight_t = weight.t()
    return lambda acc, h: acc.addmm_(h, weight_t)


def gradient_product(weight: Tensor) -> Callable[[Tensor], Tensor]:
    """A function ``g -> g W``, a new tensor, for the backward loop (oneDNN multiplies by the
    transposed view; a reordered weight did not help here)."""
    if onednn_runs(weight):
        weight_t = weight.t()
        return lambda g: torch.ops.mkldnn._linear_pointwise(g, weight_t, None, "none", [], "")
    return lambda g: torch.mm(g, weight)


def accumulator(weight: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """A function ``(d, g) -> d += g W`` (in place, returns ``d``) for the backward loop."""
    if onednn_runs(weight):
        product = gradient_product(weight)
        return lambda d, g: d.add_(product(g))
    return lambda d, g: d.addmm_(g, weight)
