"""Torch's CPU thread count, chosen by measurement and followed while a run trains.

Threads that share every matrix product wait on each other, so they stall whenever one of them
is descheduled. On a 2-core machine two threads train about 1.6x faster than one while nothing
else runs (31.5k against 19.6k tokens/s on The Time Machine), and 4x slower as soon as another
process keeps a core busy (5.0k against 19.7k). The right count is a property of the moment,
not of the machine, so it is measured:

* before the run, on the run's own training step (:func:`rates`: short bursts at each
  candidate count, interleaved, the best burst of each kept, so a busy moment lowers a burst
  and not the choice);
* during the run, by :class:`ThreadGovernor`, from the time of each training step: when the
  steps slow down or speed up by :data:`CHANGE` or more (another process arrived or left), or
  every :data:`EXPLORE_SECONDS` at most (doubling while the choice holds), it tries the other
  counts for :data:`TRIAL_STEPS` steps each (a count whose step is :data:`CLEARLY_SLOWER`
  than the current one's is dropped after one) and keeps the fastest.

A trial costs a few steps at a worse count; with the default cadence that is under 3 % of a
run's time on a busy machine and well under 1 % on a quiet one. A thread count the user gives
is never changed: the governor runs only when the recipe adapts ``threads``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable

import torch

CHANGE = 1.5  # steps this much slower or faster than at the last decision: look again
EXPLORE_SECONDS = 30.0  # at most this long (doubling up to EXPLORE_MAX) between two looks
EXPLORE_MAX = 60.0
TRIAL_STEPS = 4  # steps timed at a candidate count (after one to settle)
CLEARLY_SLOWER = 2.0  # a candidate's step this much slower than the current: stop its trial
RECENT = 6  # steps of the current count whose median is compared
SWITCH_GAIN = 1.05  # a candidate must be this much faster to replace the current count


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or ``taskset``
    narrows), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def candidates(cores: int | None = None) -> tuple[int, ...]:
    """The thread counts worth trying on ``cores`` cores: one, half of them, all of them."""
    cores = cores or available_cores()
    return tuple(sorted({1, max(1, cores // 2), cores}))


def rates(step: Callable[[], int], counts: tuple[int, ...], *, rounds: int = 3,
          seconds: float = 0.25, clock: Callable[[], float] = time.perf_counter
          ) -> dict[int, float]:
    """Tokens per second of ``step`` (one training step; returns its token count) at each of
    ``counts`` threads: ``rounds`` bursts of about ``seconds`` each, the counts interleaved
    (the order reversed every round), one untimed step after each switch; the best burst of
    each count is kept. torch's thread count is left at the fastest."""
    best = dict.fromkeys(counts, 0.0)
    for r in range(rounds):
        for count in counts if r % 2 == 0 else counts[::-1]:
            torch.set_num_threads(count)
            step()  # the pool settles at the new count: not timed
            done, start = 0, clock()
            while clock() - start < seconds or not done:
                done += step()
            best[count] = max(best[count], done / (clock() - start))
    torch.set_num_threads(max(best, key=best.get))
    return best


class ThreadGovernor:
    """Follows the fastest thread count during training, from the time of each step.

    Args:
        counts: the candidate counts (:func:`candidates`).
        current: the count the run starts with (torch's is set to it).
        clock: the time source (tests give their own).
    """

    def __init__(self, counts: tuple[int, ...], current: int, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.counts, self.current, self.clock = tuple(counts), current, clock
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.reference: float | None = None  # median step time at the last decision
        self.trial: list[int] = []  # counts still to try in the current look
        self.timings: dict[int, float] = {}  # median step time of each count in this look
        self.samples: list[float] = []
        self.explore = EXPLORE_SECONDS
        self.last_look = clock()
        self.seen = 0  # steps timed since the start
        self.reason = ""
        torch.set_num_threads(current)

    def after_step(self, seconds: float, step: int) -> dict | None:
        """Takes the time of one training step; returns a ``"kind": "threads"`` record when
        the count changes (torch's is then already set), else None."""
        if self.trial:
            return self._trial_step(seconds, step)
        self.recent.append(seconds)
        self.seen += 1
        if len(self.recent) < RECENT or self.seen < 2 * RECENT:  # the first steps warm up
            return None
        median = statistics.median(self.recent)
        if self.reference is None:
            self.reference = median
        moved = max(median / self.reference, self.reference / median) >= CHANGE
        if moved or self.clock() - self.last_look >= self.explore:
            self._look(median, "the steps' speed changed" if moved else "a periodic look")
        return None

    def _look(self, median: float, reason: str) -> None:
        self.timings = {self.current: median}
        self.trial = [c for c in self.counts if c != self.current]
        self.reason = reason
        self.samples = []
        self._switch(self.trial[0])

    def _trial_step(self, seconds: float, step: int) -> dict | None:
        self.samples.append(seconds)
        settled = self.samples[1:]  # the first step at a new count settles it
        clearly_slower = settled and settled[-1] > CLEARLY_SLOWER * self.timings[self.current]
        if len(self.samples) <= TRIAL_STEPS and not clearly_slower:
            return None
        self.timings[self.trial.pop(0)] = statistics.median(settled)
        self.samples = []
        if self.trial:
            self._switch(self.trial[0])
            return None
        previous = self.current
        fastest = min(self.timings, key=self.timings.get)
        if self.timings[fastest] * SWITCH_GAIN > self.timings[previous]:
            fastest = previous  # within the noise: keep the count in use
        self.current, self.reference = fastest, self.timings[fastest]
        self.recent.clear()
        self.last_look = self.clock()
        self.explore = EXPLORE_SECONDS if fastest != previous else min(2 * self.explore,
                                                                       EXPLORE_MAX)
        torch.set_num_threads(fastest)
        if fastest == previous:
            return None
        return {"kind": "threads", "step": step, "threads": fastest, "previous": previous,
                "reason": self.reason,
                "step_seconds": {str(c): round(t, 6) for c, t in sorted(self.timings.items())
                                 if math.isfinite(t)}}

    def _switch(self, count: int) -> None:
        torch.set_num_threads(count)
