"""FLOPs per training token, the machine's GEMM peak, and the GEMM-only bound of a step.

Model FLOPs of one training token for one layer (B·T tokens per step, G gate blocks):

    forward   2·H·G·H (recurrence) + 2·H·V (output layer)
    backward  twice the forward: one product for the input gradients, one for the weights
    total     6·H·(G·H + V)

The one-hot input projection is a row lookup (0 FLOPs); the textbook baseline multiplies
(B, V) one-hot matrices instead, work this count does not credit. Element-wise work
(activations, gates, the loss) is not counted either.

The GEMM bound of a step runs only the matrix products a step needs, each at the shape it
has: T (B, H)×(H, G·H) products forward and T (B, G·H)×(G·H, H) backward along the recurrence
(these cannot be batched across time), one (G·H, B·T)×(B·T, H) for the recurrent weight's
gradient, and three (B·T)-row products for the output layer. Timed interleaved with the real
paths, it is the practical ceiling a path with no overhead beyond its GEMMs would reach.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seqlm.bench.config import Workload
from seqlm.bench.timing import interleave, median


def flops_per_token(w: Workload) -> int:
    """Model FLOPs of one training token: 6·H·(G·H + V)."""
    H = w.hidden_size
    return 6 * H * (w.gates * H + w.vocab_size)


def step_gemms(w: Workload) -> list[tuple[int, int, int, int]]:
    """``(count, m, k, n)`` of every matrix product of one training step (see module doc)."""
    B, T, H, V, GH = w.batch_size, w.num_steps, w.hidden_size, w.vocab_size, w.gates * w.hidden_size
    return [(T, B, H, GH), (T, B, GH, H), (1, GH, B * T, H),
            (1, B * T, H, V), (1, B * T, V, H), (1, V, B * T, H)]


def gemm_bound_task(w: Workload, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """A function that runs the GEMMs of one step (outputs preallocated)."""
    jobs = []
    for count, m, k, n in step_gemms(w):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype) / k ** 0.5
        jobs.append((count, a, b, torch.empty(m, n, device=device, dtype=dtype)))

    def run() -> None:
        for count, a, b, out in jobs:
            for _ in range(count):
                torch.mm(a, b, out=out)

    return run


def gemm_gflops(m: int, k: int, n: int, *, device: torch.device,
                dtype: torch.dtype = torch.float32, seconds: float = 0.3,
                sync: Callable[[], None] = lambda: None) -> float:
    """Median GFLOP/s of an (m, k)×(k, n) product, timed for about ``seconds``."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    task = {"mm": lambda: torch.mm(a, b, out=out)}
    probe = interleave(task, rounds=1, reps=10, warmup=2, sync=sync)["mm"][0]
    reps = max(1, int(seconds / 5 / probe))
    times = interleave(task, rounds=5, reps=reps, warmup=0, sync=sync)["mm"]
    return 2 * m * k * n / median(times) / 1e9


def onednn_gflops(size: int, *, seconds: float = 0.3) -> float | None:
    """GFLOP/s of a float32 size^3 product through oneDNN (None where torch lacks it)."""
    from seqlm.models.fast import ONEDNN

    if not ONEDNN:
        return None
    a, w = torch.randn(size, size), torch.randn(size, size)
    task = {"mm": lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")}
    probe = interleave(task, rounds=1, reps=3, warmup=2)["mm"][0]
    reps = max(1, int(seconds / 5 / probe))
    return 2 * size ** 3 / median(interleave(task, rounds=5, reps=reps, warmup=0)["mm"]) / 1e9


def machine_peaks(size: int, device: torch.device,
                  sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """GFLOP/s of a large square GEMM: torch's default (``mm``, MKL on x86 CPUs) in float32
    and bfloat16, oneDNN's in float32 on the CPU, and the roof the fractions use: the best
    float32 rate (``float32``) and the bfloat16 one."""
    peaks = {"float32_mm": gemm_gflops(size, size, size, device=device, sync=sync),
             "bfloat16": gemm_gflops(size, size, size, device=device, dtype=torch.bfloat16,
                                     sync=sync)}
    onednn = onednn_gflops(size) if device.type == "cpu" else None
    if onednn is not None:
        peaks["float32_onednn"] = onednn
    peaks["float32"] = max(peaks["float32_mm"], onednn or 0.0)
    return peaks
