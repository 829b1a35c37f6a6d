"""The CPU fast paths of training, each tested equal to the plain torch call it replaces.

* The small products inside the hand-written BPTT loops (a batch of 32 rows by an H x G·H
  weight) run through oneDNN's float32 matmul, from a weight reordered once per call into its
  blocked layout for the forward loop and on the transposed view backward; other dtypes and
  devices use torch's GEMM (:func:`hidden_product`, :func:`gradient_product`, ...).
* Large float32 decoders run their three products through oneDNN (:func:`linear`); below
  :data:`ONEDNN_MIN_WEIGHT` weights MKL's GEMM is faster and ``nn.Linear`` runs.
* Time-major logits flatten for the loss without a copy (:func:`flatten_logits`).

docs/performance.md has the measurements behind each choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

def _onednn_available() -> bool:
    mkldnn = getattr(torch.backends, "mkldnn", None)
    return (mkldnn is not None and mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


ONEDNN = _onednn_available()  # this torch build has oneDNN's matmul operators


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 kernels natively (avx512_bf16 or AMX); where it
    does not, bfloat16 is emulated and some primitives (the LSTM's) cannot be built at all."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if ONEDNN and check is not None else False


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


# Below this many weights (V·H) MKL's GEMM beats oneDNN's on the decoder (docs/performance.md).
ONEDNN_MIN_WEIGHT = 1 << 18


def linear(h: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(h)`` for (..., H) ``h``, through oneDNN for large float32 layers on the CPU."""
    w = layer.weight
    if (ONEDNN and w.numel() >= ONEDNN_MIN_WEIGHT and h.device.type == "cpu"
            and h.dtype == w.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
        flat = _OneDNNLinear.apply(h.reshape(-1, h.shape[-1]), w, layer.bias)
        return flat.view(*h.shape[:-1], w.shape[0])
    return layer(h)


class _OneDNNLinear(torch.autograd.Function):
    r"""``y = x W^T + b`` for 2-D ``x``, its three products through oneDNN's matmul.

    ``torch.ops.mkldnn._linear_pointwise(a, w, b)`` computes ``a w^T + b`` and accepts
    transposed views, so: forward ``x W^T + b``; input gradient ``G W``; weight gradient
    ``(x^T G)^T``. oneDNN runs a large decoder's products faster than torch's default CPU
    GEMM (docs/performance.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        linear = torch.ops.mkldnn._linear_pointwise
        grad_x = linear(grad, weight.t(), None, "none", [], "") if need_x else None
        grad_w = linear(x.t(), grad.t(), None, "none", [], "").t() if need_w else None
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


def flatten_logits(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, V) logits and (N,) targets for a loss, paired row by row, in the logits' memory
    order: time-major logits from :meth:`RNNLM.forward` flatten without a copy.

    Args:
        logits: (B, T, V).
        targets: (B, T) ids.
    """
    vocab = logits.shape[-1]
    if not logits.is_contiguous() and logits.transpose(0, 1).is_contiguous():
        return logits.transpose(0, 1).reshape(-1, vocab), targets.t().reshape(-1)
    return logits.reshape(-1, vocab), targets.reshape(-1)
