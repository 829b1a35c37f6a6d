"""Interleaved timing and per-step peak memory.

The machine drifts between fast and slow phases for tens of seconds, so paths are never timed
one after the other: each round runs every path once (A B C, then B C A, …), and the harness
quotes medians over rounds and the median of the per-round ratios, which compare times taken
seconds apart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleave(tasks: dict[str, Callable[[], object]], *, rounds: int, reps: int = 1,
               warmup: int = 1, sync: Callable[[], None] = lambda: None,
               on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Time ``tasks`` interleaved; returns each task's seconds per call, one entry per round.

    Every task first runs ``warmup`` untimed calls; then each of ``rounds`` rounds times
    ``reps`` back-to-back calls of every task, the order rotated by one task per round so no
    task always follows the same neighbour.
    """
    names = list(tasks)
    for name in names:
        for _ in range(warmup):
            tasks[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = tasks[name]
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / reps)
        if on_round is not None:
            on_round(r)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]`` (times of the same round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS, so RSS measures what is in use (glibc only)."""
    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def peak_rss_mb() -> float | None:
    """The process's peak resident set so far (MB = 10^6 bytes), or None if unreadable."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024 / 1e6
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6
    except ImportError:
        return None


class PeakMemory:
    """Context manager: ``.mb`` is the extra resident memory (MB) its body needed at peak.

    On Linux, freed heap memory is first given back to the OS (so RSS measures what is in
    use), the kernel's peak-RSS mark is reset through ``/proc/self/clear_refs``, and on exit
    the new peak minus the RSS at entry is kept. ``.mb`` stays None where that is impossible.
    """

    def __init__(self) -> None:
        self.mb: float | None = None
        self._before: int | None = None

    def __enter__(self) -> PeakMemory:
        # no gc.collect(): tensors are freed by reference counting, and a full collection
        # takes a quarter of a second once torch's compiler modules are loaded
        _malloc_trim()
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            return self
        self._before = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kb("VmHWM") if self._before is not None else None
        if peak is not None:
            self.mb = max(peak - self._before, 0) * 1024 / 1e6


def step_peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Memory (MB) one call of ``fn`` needs on top of what was resident before it: RSS on
    the CPU (see :class:`PeakMemory`), the caching allocator's peak on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 1e6
    with PeakMemory() as watch:
        fn()
    return watch.mb
