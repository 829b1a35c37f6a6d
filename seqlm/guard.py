"""The divergence guard: notice a blow-up early, go back to the last good state, go on slower.

An exploding gradient (the chapter's subject) does not always end in NaN: clipping keeps the
update finite, so a run can drift into a region where the pre-clip gradient norm grows from
0.4 to 90 and the loss rises for good, while every number stays finite. The guard watches two
figures of each check window (the steps between two log intervals, aligned on absolute step
numbers so that a resumed run cuts the same windows):

* the mean pre-clip gradient norm, against ``GRAD_FACTOR`` times the median of the last
  ``HISTORY`` healthy windows;
* the mean training loss, against that median plus ``LOSS_MARGIN`` nats;

and any NaN or infinite loss or gradient norm. Every ``guard_every`` steps (at the first
healthy check at or after each multiple) it keeps a snapshot in memory: the weights and
everything :class:`~seqlm.resume.ResumeState` holds (optimizer moments, schedule position, random
generators, carried state). On a blow-up the trainer loads that snapshot, multiplies the
learning rate by ``guard_lr_factor`` and goes on, at most ``guard_retries`` times.

The thresholds are measured (``benchmarks/guard_levels.py`` reads runs' metrics.jsonl and
compares each train record with the median of the ten before it, the first three skipped).
On healthy runs: cpu-fast with hidden 128 on builtin
(150 s, 39 windows), on sanguoyanyi (100 s) and word-level on builtin (100 s); cpu-fast on
builtin (45 s) and cpu-quality on alice (60 s); d2l-scratch, 100 epochs (100 windows, SGD lr 1).
The worst window's mean gradient norm was 1.32x its running median (d2l-scratch; 1.04x at
most for the Adam presets) and its loss 0.01 nats above its median. Blow-ups are far beyond
that: the issue's cpu-quality run went from a norm of 0.4 to 5 (12x) and then 54, and its loss
rose 0.9 nats; an lr raised 100x for five steps (tests/test_guard.py) gives 4.3x and +3 nats
in the next window. ``GRAD_FACTOR`` (3x the healthy peak) and ``LOSS_MARGIN`` (50x) sit between.
A snapshot is one copy of the weights and optimizer moments: 80 ms for the cpu-quality model
(0.9 M parameters) on a loaded 2-core machine where its 100 steps took 38 s, so every 100 steps
costs 0.2 % of the time, and a recovery repeats at most 100 steps.

The guard's own state (the open window's sums, the history, the snapshot, the lr scale and
the recoveries used) is part of the trainer state, so an interrupted run resumes bit-identical
to one that was not interrupted, recoveries included.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable

import torch

from seqlm.errors import TrainingDiverged

GRAD_FACTOR = 4.0  # a window's mean gradient norm above this many running medians: blow-up
LOSS_MARGIN = 0.5  # nats: a window's mean loss this far above its running median: blow-up
HISTORY = 10  # healthy windows in the running median
MIN_HISTORY = 3  # windows seen before the ratio rules apply (the first steps move fast)


class Guard:
    """Watches training windows, keeps snapshots and counts recoveries.

    Args:
        retries: recoveries allowed before the run ends; 0 turns detection off (a NaN loss
            still ends the run).
        every: steps between snapshots.
        lr_factor: the learning-rate multiplier applied at each recovery.
        device: where the per-step sums live (they are read only at checks).
    """

    def __init__(self, retries: int, every: int, lr_factor: float,
                 device: torch.device) -> None:
        self.retries, self.every, self.lr_factor = retries, every, lr_factor
        self.lr_scale = 1.0
        self.recoveries = 0
        self.history: list[list[float]] = []  # [loss, grad norm] of recent healthy windows
        self.snapshot: tuple[dict[str, torch.Tensor], dict] | None = None
        self.snapshot_step = -1
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.steps = 0
        self.tokens = 0

    @property
    def enabled(self) -> bool:
        return self.retries > 0

    def observe(self, step: int, nll: torch.Tensor, norm: torch.Tensor, tokens: int) -> None:
        """Adds one step (``nll`` summed over its ``tokens``, the pre-clip ``norm``) to the
        open window without reading anything back to the host."""
        bad = ~torch.isfinite(nll) | ~torch.isfinite(norm)
        self.bad_step = torch.where((self.bad_step < 0) & bad,
                                    torch.full_like(self.bad_step, step), self.bad_step)
        self.loss_sum += nll
        self.norm_sum += norm
        self.steps += 1
        self.tokens += tokens

    def check(self, dist) -> tuple[str, dict]:
        """Closes the open window; returns the reason it is a blow-up ('' when healthy) and
        its figures (``loss``, ``grad_norm``; ``bad_step`` of a non-finite one)."""
        if not self.steps:
            return "", {}
        bad = dist.first_step(self.bad_step)
        loss = float(dist.all_reduce_(self.loss_sum.clone())) / max(self.tokens, 1)
        norm = float(self.norm_sum) / self.steps
        self.loss_sum.zero_(), self.norm_sum.zero_(), self.bad_step.fill_(-1)
        self.steps = self.tokens = 0
        figures = {"loss": loss, "grad_norm": norm}
        if bad >= 0:
            return f"the loss or gradient became NaN or infinite at step {bad}", {
                "bad_step": bad}
        reason = self._rise(loss, norm) if self.enabled else ""
        if not reason:
            self.history = (self.history + [[loss, norm]])[-HISTORY:]
        return reason, figures

    def _rise(self, loss: float, norm: float) -> str:
        if len(self.history) < MIN_HISTORY:
            return ""
        loss_level = statistics.median(h[0] for h in self.history)
        norm_level = statistics.median(h[1] for h in self.history)
        if norm > GRAD_FACTOR * norm_level:
            return (f"the gradient norm rose to {norm:.3g}, over {GRAD_FACTOR:g}x its running "
                    f"median {norm_level:.3g}")
        if loss > loss_level + LOSS_MARGIN:
            return (f"the loss rose to {loss:.3f}, over its running median {loss_level:.3f} "
                    f"+ {LOSS_MARGIN:g}")
        return ""

    def due(self, step: int) -> bool:
        """Whether a healthy check at ``step`` should take a snapshot."""
        return self.enabled and (self.snapshot is None
                                 or step // self.every > self.snapshot_step // self.every)

    def keep(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Stores a snapshot (copies: the trainer goes on changing its tensors in place)."""
        self.snapshot = ({k: v.detach().clone() for k, v in tensors.items()},
                         copy.deepcopy({**meta, "guard_history": self.history}))
        self.snapshot_step = step

    def recover(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Uses up one recovery: lowers the lr scale and returns the snapshot to load (its
        history replaces the current one)."""
        self.recoveries += 1
        self.lr_scale *= self.lr_factor
        tensors, meta = self.snapshot
        self.history = copy.deepcopy(meta["guard_history"])
        return tensors, meta

    # ---- exact resume ---------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"guard.loss_sum": self.loss_sum, "guard.norm_sum": self.norm_sum,
                   "guard.bad_step": self.bad_step}
        meta = {"lr_scale": self.lr_scale, "recoveries": self.recoveries,
                "history": self.history, "steps": self.steps, "tokens": self.tokens,
                "snapshot_step": self.snapshot_step, "snapshot": None}
        if self.snapshot is not None:
            snap_tensors, snap_meta = self.snapshot
            tensors.update({f"guard.snapshot.{k}": v for k, v in snap_tensors.items()})
            meta["snapshot"] = snap_meta
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        device = self.loss_sum.device
        self.loss_sum = tensors["guard.loss_sum"].to(device).clone()
        self.norm_sum = tensors["guard.norm_sum"].to(device).clone()
        self.bad_step = tensors["guard.bad_step"].to(device).clone()
        self.lr_scale, self.recoveries = meta["lr_scale"], meta["recoveries"]
        self.history, self.steps, self.tokens = meta["history"], meta["steps"], meta["tokens"]
        self.snapshot_step = meta["snapshot_step"]
        self.snapshot = None
        if meta["snapshot"] is not None:
            prefix = "guard.snapshot."
            self.snapshot = ({k[len(prefix):]: v for k, v in tensors.items()
                              if k.startswith(prefix)}, meta["snapshot"])


def diverged(reason: str, lr: float) -> TrainingDiverged:
    """The one wording of a run that blew up with no recovery to make: ``reason``, then what
    to change (``lr`` is the run's base learning rate)."""
    return TrainingDiverged(f"{reason}; lower `lr` (now {lr:g}) or clip gradients (`clip` 1); "
                            "the saved checkpoints are the last good ones")


class Recovery:
    """The trainer's collaborator for blow-ups: closes the guard's window and, on a blow-up,
    loads the last snapshot through the trainer's own functions.

    Args:
        guard: the :class:`Guard`.
        snapshot: ``snapshot() -> (tensors, meta)``, the trainer's weights and resume state
            now (the guard stores copies).
        restore: ``restore(tensors, meta)`` loads a snapshot back into the trainer, keeping
            its wall time, tokens seen and best validation figures.
    """

    def __init__(self, guard: Guard, snapshot: Callable[[], tuple[dict, dict]],
                 restore: Callable[[dict, dict], None]) -> None:
        self.guard, self.snapshot, self.restore = guard, snapshot, restore

    def keep(self, step: int) -> None:
        self.guard.keep(step, *self.snapshot())

    def check(self, progress, dist, lr: float, weights_finite: Callable[[], bool]
              ) -> dict | None:
        """Closes the guard's window at ``progress.step``; on a blow-up, loads the last
        snapshot and returns the ``"kind": "recovery"`` record (None when healthy, after
        taking a snapshot when one is due).

        Raises:
            TrainingDiverged: a NaN with the guard off, or a blow-up with no retry left.
        """
        guard, p = self.guard, progress
        reason, figures = guard.check(dist)
        if not reason and guard.enabled and not weights_finite():
            reason = f"the weights became NaN or infinite by step {p.step}"
        if not reason:
            if guard.due(p.step):
                self.keep(p.step)
            return None
        if not guard.enabled:
            raise diverged(reason, lr)
        if guard.recoveries >= guard.retries:
            best = (f"checkpoints/best (step {p.best_step}, validation loss {p.best_val:.4f}) "
                    "is kept" if math.isfinite(p.best_val) else "no evaluation had run, so "
                    "there is no best checkpoint")
            raise TrainingDiverged(
                f"training still diverged after {guard.retries} recoveries ({reason} at step "
                f"{p.step}); {best}; start again with a lower `lr` (now {lr:g})")
        detected = p.step
        self.restore(*guard.recover())
        return {"kind": "recovery", "step": detected, "restored_step": p.step,
                "reason": reason, "lr": lr * guard.lr_scale, "recovery": guard.recoveries,
                "retries": guard.retries, "elapsed": p.elapsed,
                **{k: v for k, v in figures.items() if math.isfinite(v)}}
