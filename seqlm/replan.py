"""The recipe's choices, followed while the run trains.

:mod:`seqlm.recipe` plans a run from a probe taken before the clock starts; one busy second
there (another process starting, a browser tab) reads the machine several times too slow.
So the run checks the plan against what its own steps achieve (the tokens per second of each
log window, training steps only):

* **What can change mid-run** (dropout, the evaluation cadence) is planned again from the
  passes the budget will really make (the tokens trained so far plus the recent rate for the
  time left): at the first check (:data:`CHECK_SHARE` of the budget), and whenever the recent
  rate (the median window of the last :data:`RECENT_SHARE` of the budget) has moved
  :data:`CHANGE` times away from the rate of the last plan, at least :data:`GAP_SHARE` of the
  budget after it and before :data:`LATE_SHARE` of it.
* **What cannot** (the depth) is checked once, at the first check, against the fastest
  stretch so far (the best median of :data:`SUSTAIN` windows in a row: what the machine can
  do, since a busy start lowers some windows, not all of them). When that rate is
  :data:`CHANGE` times off the probe's and gives the other depth, the run starts again with
  it (:class:`Restart`): the new model gets the whole budget, and the seconds spent before
  are reported.

Each new plan is a ``"kind": "replan"`` record in ``metrics.jsonl`` and a line on the terminal.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from seqlm.config import ModelConfig
from seqlm.recipe import (DEEP_STEPS, Measurement, dropout_for, eval_every_for, probe, twin,
                          wants_depth)
from seqlm.threads import ThreadGovernor, candidates

CHECK_SHARE = 0.1  # the first check, after this share of the time budget
RECENT_SHARE = 0.05  # the recent rate: the median window of this last share of the budget
GAP_SHARE = 0.1  # at least this share of the budget between two plans
LATE_SHARE = 0.8  # no new plan after this share: the passes left barely move
SUSTAIN = 5  # windows at least in a median (the recent rate, the fastest stretch)
CHANGE = 1.5  # the recent rate this many times off the plan's: plan again


class Restart(Exception):
    """The run should start again with ``model`` (the other depth); ``record`` says why."""

    def __init__(self, model: ModelConfig, record: dict) -> None:
        super().__init__(record["reason"])
        self.model, self.record = model, record


class Planner:
    """Plans dropout and the evaluation cadence again from the run's own speed, and checks
    the depth once.

    Args:
        names: the settings the recipe adapts (``dropout``, ``eval_every``, ``num_layers``
            are followed here).
        measurement: the probe's :class:`~seqlm.recipe.Measurement` the run started from.
        model: the model's config as built.
        eval_every: the cadence the run started with (0: evaluations only at the end, kept).
        deep_speed: ``deep_speed(num_layers) -> tokens/s``, a probe of a model of that depth
            (asked only when the depth is in question).
    """

    def __init__(self, names: tuple[str, ...], measurement: Measurement, model: ModelConfig,
                 eval_every: int, deep_speed: Callable[[int], float]) -> None:
        self.names, self.planned, self.model = set(names), measurement, model
        self.eval_every, self.deep_speed = eval_every, deep_speed
        self.windows: list[tuple[float, float]] = []  # (elapsed, tokens/s) of each window
        self.checked = False
        self.rate = measurement.train_tokens_per_s  # the speed the last plan expects ahead
        self.last = 0.0  # when the last plan was made

    def observe(self, rate: float, step: int, tokens: int, elapsed: float) -> dict | None:
        """Takes one log window's training tokens per second at ``step`` (``tokens`` trained,
        ``elapsed`` seconds of training so far); returns a ``"kind": "replan"`` record with
        the new ``chosen`` values when it plans again, else None.

        Raises:
            Restart: at the first check, the depth should change.
        """
        budget = self.planned.budget
        if not budget or rate <= 0:
            return None
        self.windows.append((elapsed, rate))
        if not self.checked:
            if elapsed < CHECK_SHARE * budget or len(self.windows) < SUSTAIN:
                return None
            self.checked = True
            self._check_depth(step, tokens, elapsed)
            reason = "the first check"
        else:
            recent = self._recent(elapsed)
            due = GAP_SHARE * budget <= elapsed - self.last <= elapsed <= LATE_SHARE * budget
            if not due or max(recent / self.rate, self.rate / recent) < CHANGE:
                return None
            reason = "the speed changed"
        recent = self._recent(elapsed)
        m = self._projected(recent, tokens, elapsed)
        chosen = {k: v for k, v in self._choices(m).items()
                  if v != (self.eval_every if k == "eval_every" else self.model.dropout)}
        was, self.rate, self.planned, self.last = self.rate, recent, m, elapsed
        self.model = replace(self.model, **{k: v for k, v in chosen.items() if k == "dropout"})
        self.eval_every = chosen.get("eval_every", self.eval_every)
        return {"kind": "replan", "step": step, "elapsed": elapsed, "reason": reason,
                "tokens_per_s": round(recent, 1), "planned_tokens_per_s": round(was, 1),
                "epochs": m.epochs, "chosen": chosen}

    def _recent(self, elapsed: float) -> float:
        """The median window of the last :data:`RECENT_SHARE` of the budget (at least
        :data:`SUSTAIN` windows)."""
        since = elapsed - RECENT_SHARE * self.planned.budget
        rates = [r for t, r in self.windows if t >= since]
        if len(rates) < SUSTAIN:
            rates = [r for _, r in self.windows[-SUSTAIN:]]
        return statistics.median_low(rates)  # a rate some window had, not a blend of two

    def _fastest(self) -> float:
        """The best median of :data:`SUSTAIN` windows in a row so far."""
        rates = [r for _, r in self.windows]
        return max(statistics.median(rates[i:i + SUSTAIN])
                   for i in range(max(1, len(rates) - SUSTAIN + 1)))

    def _projected(self, rate: float, tokens: int, elapsed: float) -> Measurement:
        """The plan's measurement at the speed the run will average: what it trained so far,
        then ``rate`` for the time left."""
        budget = self.planned.budget
        total = tokens + rate * max(budget - elapsed, 0.0)
        return replace(self.planned, train_tokens_per_s=total / budget)

    def _choices(self, m: Measurement) -> dict:
        chosen: dict = {}
        if "dropout" in self.names and m.effective_epochs is not None:
            chosen["dropout"] = dropout_for(m.effective_epochs, m.epochs)
        if "eval_every" in self.names and self.eval_every and m.steps is not None:
            chosen["eval_every"] = eval_every_for(m.steps)
        return chosen

    def _check_depth(self, step: int, tokens: int, elapsed: float) -> None:
        """At the fastest window so far, would the recipe choose the other depth? (The rule of
        :func:`seqlm.recipe.build_model`: 2 layers when one layer makes enough passes and two
        still make :data:`~seqlm.recipe.DEEP_STEPS` steps.)"""
        if "num_layers" not in self.names or self.model.cell not in ("gru", "lstm"):
            return
        fastest, probed = self._fastest(), self.planned.train_tokens_per_s
        if max(fastest / probed, probed / fastest) < CHANGE:
            return  # the probe read the machine right: its depth stands
        if self.model.num_layers == 1:
            shallow = replace(self.planned, train_tokens_per_s=fastest)
            if not wants_depth(self.model, shallow):
                return
            deep = replace(self.planned, train_tokens_per_s=self.deep_speed(2))
            depth = 2 if (deep.steps or 0) >= DEEP_STEPS else 1
        else:
            deep = replace(self.planned, train_tokens_per_s=fastest)
            shallow = replace(self.planned, train_tokens_per_s=self.deep_speed(1))
            keep = wants_depth(replace(self.model, num_layers=1), shallow) and \
                (deep.steps or 0) >= DEEP_STEPS
            depth = 2 if keep else 1
        if depth == self.model.num_layers:
            return
        m = deep if depth == 2 else shallow
        chosen = {"num_layers": depth, **self._choices(m)}
        model = replace(self.model, **{k: v for k, v in chosen.items() if k != "eval_every"})
        raise Restart(model, {
            "kind": "replan", "step": step, "elapsed": elapsed, "restart": True,
            "reason": f"the run's fastest steps ({fastest:,.0f} tokens/s, against "
                      f"{self.planned.train_tokens_per_s:,.0f} probed) give {depth} "
                      f"layer{'s' if depth > 1 else ''}",
            "tokens_per_s": round(m.train_tokens_per_s, 1), "epochs": m.epochs,
            "chosen": chosen, "lost_s": elapsed, "lost_tokens": tokens})


def followers(record: dict | None, model, train, data, tokens, device, *,
              plan: bool = True) -> tuple[ThreadGovernor | None, Planner | None]:
    """What keeps a run's recipe choices current while it trains, from the recipe's
    ``record`` (None when nothing adapts): the :class:`~seqlm.threads.ThreadGovernor` when
    the recipe chose the thread count, and with ``plan`` the :class:`Planner` when it chose
    dropout, the evaluation cadence or the depth for a time budget."""
    if not record:
        return None, None
    names = tuple(record.get("adapted", ()))
    governor = ThreadGovernor(candidates(), record["chosen"]["threads"]) \
        if "threads" in record.get("chosen", {}) else None
    if not plan or not train.time_budget or not set(names) & {"dropout", "eval_every",
                                                              "num_layers"}:
        return governor, None

    def speed(num_layers: int) -> float:
        return probe(twin(model.config, num_layers, device), tokens, data.batch_size,
                     data.num_steps, clip=train.clip, device=device,
                     counts=(torch.get_num_threads(),))[0]

    return governor, Planner(names, Measurement.from_record(record["measured"]), model.config,
                             train.eval_every, speed)
