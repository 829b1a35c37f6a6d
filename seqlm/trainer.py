"""The training loop: the chapter's hidden-state rules, clipping, evaluation, budgets, resume.

Hidden-state policy comes from the sampler, never from the model type: with random sampling
(``contiguous = False``) every minibatch starts from a fresh zero state; with sequential
partitioning (``contiguous = True``) the state starts at zero each epoch and is carried
across minibatches, detached from the previous graph (truncated BPTT), so backward never
runs "through the graph a second time". Tensor states and LSTM ``(h, c)`` tuples alike.

The loop never syncs the host per step for metrics: losses and gradient norms are summed on
the device and read every ``log_every`` steps.

Under torchrun (see :mod:`seqlm.distributed`) each rank trains on its rows of every global
minibatch through DistributedDataParallel and carries the state of those rows. Ranks meet only
at log intervals (losses, the NaN check, the clock and a stop request are reduced there),
at evaluations (sharded, reduced token-weighted) and at saves (the carried states gathered).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from seqlm.config import DataConfig, TrainConfig
from seqlm.batches import SAMPLERS, check_fits, min_batches_per_epoch
from seqlm.data import Corpus
from seqlm.distributed import Dist
from seqlm.evaluation import evaluate
from seqlm.guard import Guard, Recovery, diverged
from seqlm.metrics import LossMeter, summary
from seqlm.replan import Planner
from seqlm.resume import Position, Progress, ResumeState
from seqlm.schedule import lr_factor, make_optimizer
from seqlm.threads import ThreadGovernor
from seqlm.window import StepWindow
from seqlm.models import LossOf, RNNLM, detach_state


@dataclass
class Hooks:
    """How the loop reports and is told to stop (the library never prints)."""

    on_log: Callable[[dict], None] = lambda record: None
    on_eval: Callable[[dict], None] = lambda record: None
    on_step: Callable[[Progress], None] = lambda progress: None
    on_recovery: Callable[[dict], None] = lambda record: None
    on_event: Callable[[dict], None] = lambda record: None  # a thread change or a new plan
    should_stop: Callable[[], bool] = lambda: False
    save: Callable[[str, "Trainer"], None] = lambda kind, trainer: None


@dataclass
class Trainer:
    """Owns the model, optimizer, schedule, random generators and counters of one run; its
    collaborators save and load what an exact resume needs (:class:`~seqlm.resume.ResumeState`)
    and recover from blow-ups (:class:`~seqlm.guard.Recovery`)."""

    model: RNNLM
    corpus: Corpus
    data: DataConfig
    cfg: TrainConfig
    device: torch.device
    progress: Progress = field(default_factory=Progress)
    dist: Dist = field(default_factory=Dist)
    governor: ThreadGovernor | None = None  # follows the fastest thread count (CPU)
    planner: Planner | None = None  # plans dropout and the evaluation cadence again

    def __post_init__(self) -> None:
        """Raises:
            CorpusError: the training split cannot fill one minibatch (checked before a run
                directory is created or replaced).
        """
        check_fits(self.corpus.splits["train"], self.data.batch_size, self.data.num_steps)
        self.dist.check_batch_size(self.data.batch_size)
        # Under torchrun the step runs through DistributedDataParallel (None otherwise).
        self.ddp_model = (self.dist.wrap(LossOf(self.model), self.device) if self.dist.enabled
                          else None)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.sampler = SAMPLERS[self.data.sampler]
        self.generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.epoch_generator_state = self.generator.get_state()
        self.state = None  # carried hidden state (sequential partitioning)
        self.plateau_lr = 1.0
        self.guard = Guard(self.cfg.guard_retries, self.cfg.guard_every,
                           self.cfg.guard_lr_factor, self.device)
        self.resume_state = ResumeState(self.optimizer, self.generator, self.dist, self.device,
                                        self.cfg.seed)
        self.recovery = Recovery(self.guard, self._snapshot, self._restore)
        self.total_steps = self._total_steps()
        self.autocast = self._autocast()
        self.history: list[dict] = []

    def _total_steps(self) -> int | None:
        per_epoch = min_batches_per_epoch(len(self.corpus.splits["train"]),
                                          self.data.batch_size, self.data.num_steps)
        candidates = [self.cfg.max_steps] if self.cfg.max_steps else []
        if self.cfg.epochs:
            candidates.append(self.cfg.epochs * max(per_epoch, 1))
        return min(candidates) if candidates else None

    def _autocast(self):
        if self.cfg.dtype != "bfloat16":
            return contextlib.nullcontext
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

    def set_lr(self) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg, self.progress.step, self.total_steps,
                                     self.progress.elapsed)
        lr *= self.plateau_lr * self.guard.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def batches(self):
        """The rest of the current epoch's minibatches, from the saved epoch start."""
        self.generator.set_state(self.epoch_generator_state)
        return self.sampler(self.corpus.splits["train"], self.data.batch_size,
                            self.data.num_steps, generator=self.generator,
                            start=self.progress.batch_in_epoch)

    def step(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the summed NLL and the pre-clip gradient norm, both
        still on the device. ``X, Y`` are the global minibatch; this rank trains on its rows."""
        X, Y = self.dist.shard(X), self.dist.shard(Y)
        X, Y = X.to(self.device, non_blocking=True), Y.to(self.device, non_blocking=True)
        state = detach_state(self.state) if self.sampler.contiguous else None
        with self.autocast():
            if self.ddp_model is None:
                nll, state = self.model.loss(X, Y, state)
            else:
                nll, state = self.ddp_model(X, Y, state)
        loss = nll.float() / Y.numel()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.clip if self.cfg.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.state = detach_state(state) if self.sampler.contiguous else None
        return loss.detach() * Y.numel(), grad_norm.detach()

    def validate(self) -> dict | None:
        val = self.corpus.splits.get("val")
        if val is None or len(val) < 2:
            return None
        meter = evaluate(self.model, val, batch_size=self.data.batch_size,
                         num_steps=self.data.num_steps, device=self.device,
                         autocast=self.autocast, dist=self.dist)
        nll, tokens = self.dist.sum(meter.nll, meter.tokens)
        return LossMeter(nll, int(tokens)).report()

    def done(self) -> str:
        cfg, p = self.cfg, self.progress
        if cfg.max_steps and p.step >= cfg.max_steps:
            return "max_steps"
        if cfg.epochs and p.epoch >= cfg.epochs:
            return "epochs"
        if cfg.time_budget and p.elapsed >= cfg.time_budget:
            return "time_budget"
        if cfg.early_stopping and p.stale_evals >= cfg.early_stopping:
            return "early_stopping"
        return ""

    # ---- the loop -------------------------------------------------------------------------

    def run(self, hooks: Hooks) -> Progress:
        """Trains until a budget is spent, early stopping triggers or ``hooks.should_stop()``.

        At every log interval (and evaluation) the divergence guard (:mod:`seqlm.guard`)
        closes its window: a blow-up loads the last snapshot and lowers the lr, a healthy
        window may become the next snapshot.

        Raises:
            TrainingDiverged: a step's loss was not finite with the guard off, or training
                still blew up after ``guard_retries`` recoveries (checked before every save,
                so saved checkpoints never hold a NaN model).
        """
        p, cfg = self.progress, self.cfg
        self.model.train()
        if self.guard.enabled and self.guard.snapshot is None:
            self.recovery.keep(p.step)
        sums = StepWindow(self.device)
        tick, clock = time.perf_counter(), 0.0
        p.stop_reason = self.done()
        while not p.stop_reason:
            for X, Y in self.batches():
                lr = self.set_lr()
                started = time.perf_counter()
                nll, norm = self.step(X, Y)
                took = time.perf_counter() - started
                self.guard.observe(p.step + 1, nll, norm, Y.numel())
                sums.add(nll, norm, Y.numel())
                sums.step_s += took
                if self.governor is not None:
                    self._event(hooks, self.governor.after_step(took, p.step + 1))
                p.step += 1
                p.batch_in_epoch += 1
                p.tokens += Y.numel()
                now = time.perf_counter()
                clock, tick = clock + now - tick, now  # wall time, evaluations included
                if not self.dist.enabled or p.step % cfg.log_every == 0:
                    # Ranks share one clock (the slowest), so lr and time budget agree.
                    p.elapsed, clock = p.elapsed + self.dist.max(clock), 0.0
                hooks.on_step(p)
                evaluate_now = cfg.eval_every and p.step % cfg.eval_every == 0
                if (p.step % cfg.log_every == 0 or evaluate_now) and self._guard_check(hooks):
                    sums = StepWindow(self.device)
                    break  # the restored epoch's batches, from the restored position
                if p.step % cfg.log_every == 0:
                    self._log(hooks, sums, lr)
                    sums = StepWindow(self.device)
                if evaluate_now:
                    self._evaluate(hooks)
                stop = self.done() or self._interrupted(hooks)
                if stop:
                    p.stop_reason = stop
                    break
            else:
                self._end_epoch()
                p.stop_reason = self.done()
        p.elapsed += self.dist.max(clock)  # the time since the last log interval
        self._finish(hooks, sums)
        return p

    def _finish(self, hooks: Hooks, sums: StepWindow) -> None:
        """The last log record, the final evaluation and the last save. An interrupted run
        leaves the guard's window open (its resume closes it where an uninterrupted run
        would) unless that window saw a NaN."""
        p = self.progress
        pending_nan = self.dist.first_step(self.guard.bad_step) >= 0
        if (p.stop_reason != "interrupted" or pending_nan) and self._guard_check(hooks):
            sums = StepWindow(self.device)
        if sums.steps:
            self._log(hooks, sums, self.set_lr())
        last_eval = next((r["step"] for r in reversed(self.history) if r["kind"] == "eval"), -1)
        if p.stop_reason != "interrupted" and last_eval != p.step:
            self._evaluate(hooks, final=True)
        self._check_weights()
        hooks.save("last", self)

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(w).all()) for w in self.model.parameters())

    def _check_weights(self) -> None:
        if not self._weights_finite():
            raise diverged(f"the weights became NaN or infinite by step {self.progress.step}",
                           self.cfg.lr)

    def _interrupted(self, hooks: Hooks) -> str:
        """'interrupted' once ``hooks.should_stop()``; with several ranks, agreed at log
        intervals (a signal reaches the ranks at different steps)."""
        if not self.dist.enabled:
            return "interrupted" if hooks.should_stop() else ""
        if self.progress.step % self.cfg.log_every:
            return ""
        return self.dist.agree("interrupted" if hooks.should_stop() else "", ("", "interrupted"))

    def _end_epoch(self) -> None:
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0
        self.epoch_generator_state = self.generator.get_state()
        self.state = None  # the chapter: a fresh state at the start of every epoch

    def _log(self, hooks: Hooks, sums: StepWindow, lr: float) -> None:
        p = self.progress
        seconds = max(time.perf_counter() - sums.start, 1e-9)
        loss = float(self.dist.all_reduce_(sums.loss)) / max(sums.tokens, 1)  # global
        record = {"kind": "train", "step": p.step, "epoch": p.epoch, "tokens": p.tokens,
                  **{k: v for k, v in summary(loss, sums.tokens).items() if k != "tokens"},
                  "grad_norm": float(sums.norm) / max(sums.steps, 1),
                  "grad_norm_max": float(sums.norm_max), "lr": lr,
                  "tokens_per_s": sums.tokens / seconds, "elapsed": p.elapsed,
                  "train_tokens_per_s": sums.tokens / max(sums.step_s, 1e-9),
                  "threads": torch.get_num_threads()}
        self.history.append(record)
        hooks.on_log(record)
        if self.planner is not None:
            plan = self.planner.observe(record["train_tokens_per_s"], p.step, p.tokens,
                                        p.elapsed)
            if plan is not None:
                if "dropout" in plan["chosen"]:
                    self.model.set_dropout(plan["chosen"]["dropout"])
                self.cfg.eval_every = plan["chosen"].get("eval_every", self.cfg.eval_every)
            self._event(hooks, plan)

    def _event(self, hooks: Hooks, record: dict | None) -> None:
        if record is not None:
            self.history.append(record)
            hooks.on_event(record)

    def _evaluate(self, hooks: Hooks, *, final: bool = False) -> None:
        p = self.progress
        report = self.validate()
        record = {"kind": "eval", "step": p.step, "epoch": p.epoch, "tokens": p.tokens,
                  "elapsed": p.elapsed, "final": final}
        if report is not None:
            if not math.isfinite(report["loss"]):
                raise diverged(f"the validation loss became {report['loss']} at step {p.step}",
                               self.cfg.lr)
            record.update({f"val_{k}": v for k, v in report.items()})
            improved = report["loss"] < p.best_val - 1e-6
            if improved:
                p.best_val, p.best_step, p.stale_evals = report["loss"], p.step, 0
            else:
                p.stale_evals += 1
                if self.cfg.schedule == "plateau":
                    self.plateau_lr /= 4
            record["best"] = improved
            if improved:
                self._check_weights()
                hooks.save("best", self)
        self.history.append(record)
        hooks.on_eval(record)
        if not final:
            self._check_weights()
            hooks.save("last", self)

    # ---- the divergence guard's snapshots and exact resume ----------------------------------

    def _guard_check(self, hooks: Hooks) -> bool:
        """Closes the guard's window (:meth:`Recovery.check <seqlm.guard.Recovery.check>`);
        True when it was a blow-up and the last snapshot is loaded (the loop then restarts the
        epoch's batches from the restored position)."""
        record = self.recovery.check(self.progress, self.dist, self.cfg.lr, self._weights_finite)
        if record is None:
            return False
        self.history.append(record)
        hooks.on_recovery(record)
        return True

    def _position(self) -> Position:
        return Position(self.progress, self.epoch_generator_state, self.state, self.plateau_lr)

    def _load_position(self, at: Position) -> None:
        self.progress, self.epoch_generator_state = at.progress, at.epoch_start
        self.state, self.plateau_lr = at.carried, at.plateau_lr

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = self.resume_state.save(self._position())
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        return tensors, meta

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Loads a snapshot: weights, optimizer, schedule position, generators, carried
        state. Wall time, tokens seen and the best validation figures go on."""
        progress = self.progress  # the loop holds this object: update it in place
        kept = {k: getattr(progress, k)
                for k in ("tokens", "elapsed", "best_val", "best_step", "stale_evals")}
        tensors = {k: v.clone() for k, v in tensors.items()}  # the snapshot stays intact
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                                    if k.startswith("model.")})
        self._load_position(self.resume_state.load(tensors, meta))
        vars(progress).update({**vars(self.progress), **kept})
        self.progress = progress

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything beyond the weights that an exact resume needs: tensors and JSON (the
        divergence guard's included)."""
        tensors, meta = self.resume_state.save(self._position())
        guard_tensors, meta["guard"] = self.guard.state_dict()
        return {**tensors, **guard_tensors}, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self._load_position(self.resume_state.load(tensors, meta))
        if meta.get("guard") is not None:  # runs saved before the guard start without one
            self.guard.load_state_dict(tensors, meta["guard"])
