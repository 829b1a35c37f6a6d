"""A training run, owned by the library: :class:`RunSession` builds it from its settings,
trains it (:meth:`RunSession.fit`), saves it and returns its summary; ``seqlm train`` and
:func:`seqlm.train` (:mod:`seqlm.session`) both drive it.

A run's files are :class:`~seqlm.rundir.RunDir`'s; its settings come from
:mod:`seqlm.settings`; the loop is :class:`~seqlm.trainer.Trainer`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from seqlm import distributed, recipe, settings
from seqlm.batches import check_validation
from seqlm.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from seqlm.data import Corpus, is_prepared, load_corpus
from seqlm.errors import CheckpointError
from seqlm.generate import generate
from seqlm.metrics import ngram_baselines
from seqlm.rundir import RunDir
from seqlm.settings import Settings
from seqlm.models import RNNLM
from seqlm.replan import Restart, followers
from seqlm.trainer import Hooks, Trainer
from seqlm.version import __version__


class RunSession:
    """One run: builds the corpus, model and trainer from its :class:`~seqlm.settings.Settings`,
    trains (:meth:`fit`), saves its metrics, samples, checkpoints and curves, and returns the
    summary.

    ``RunSession(settings)`` alone trains without a run directory (``run`` is None: nothing is
    saved); :meth:`start` and :meth:`reopen` give it one.
    """

    def __init__(self, settings: Settings, *, preset: str | None = None) -> None:
        data, train = settings.data, settings.train
        self.run: RunDir | None = None
        self.data, self.train_cfg, self.preset = data, train, preset
        if train.threads:
            torch.set_num_threads(train.threads)
        # Under torchrun: join the job, take this rank's device; only rank 0 writes files.
        self.dist, self.device = distributed.init(train.device)
        self.dist.check_batch_size(data.batch_size)
        torch.manual_seed(train.seed)
        self.corpus: Corpus = load_corpus(data)
        model, self.train_cfg, self.recipe = recipe.build_model(
            settings.model_config(self.corpus.vocab_size).resolve(self.device.type),
            self.corpus.splits, data, train, self.device, self.dist)
        self.model_cfg = model.config  # with the output layer decided
        self.dist.reseed(train.seed, step=0)  # ranks > 0 draw their own dropout masks
        # Under torchrun the ranks would plan apart (each sees its own speed) and then meet
        # at different evaluations: a multi-process run keeps its first plan.
        governor, planner = followers(self.recipe, model, self.train_cfg, data,
                                      self.corpus.splits["train"], self.device,
                                      plan=not self.dist.enabled)
        self.trainer = Trainer(model, self.corpus, data, self.train_cfg, self.device,
                               dist=self.dist, governor=governor, planner=planner)
        if not is_prepared(data.corpus):  # a prepared corpus keeps the split it was made with
            check_validation(self.corpus.splits.get("val", ()), data.split_fractions()[1],
                             data.num_steps)
        self.baselines = ngram_baselines(self.corpus.splits["train"],
                                         self.corpus.splits.get("val", []),
                                         self.corpus.vocab_size)
        self.samples: list[dict] = []

    @classmethod
    def start(cls, out: str | Path, settings: Settings, *, preset: str | None = None,
              overwrite: bool = False, is_main: bool = True) -> RunSession:
        """A new run in ``out``. The directory is checked before the corpus loads and created
        after it (a bad corpus or setting leaves nothing behind); only the main rank writes.

        Raises:
            ConfigError: ``out`` is taken (see :meth:`RunDir.check_available`).
        """
        if is_main:
            RunDir.check_available(out, overwrite=overwrite)
        session = cls(settings, preset=preset)
        session.run = RunDir.create(out, overwrite=overwrite) if is_main else RunDir(out)
        if is_main:
            session.run.write_config(session.configs())
        return session

    @classmethod
    def reopen(cls, path: str | Path, given: dict | None = None, *,
               is_main: bool = True) -> RunSession:
        """The run in ``path`` at its ``checkpoints/last``, with the budgets among ``given``
        settings changed (:func:`seqlm.settings.resume_budgets`).

        Raises:
            ConfigError: a setting other than a budget differs from the saved run.
            CheckpointError: no usable checkpoint (see :meth:`resume`).
        """
        run = RunDir.open(path)
        configs = run.read_config()
        session = cls(settings.saved(configs, settings.resume_budgets(configs, given or {})),
                      preset=configs.get("preset"))
        session.run = run
        session.recipe = configs.get("recipe")  # what the first start measured and chose
        session.trainer.governor = followers(session.recipe, session.trainer.model,
                                             session.train_cfg, session.data, (),
                                             session.device, plan=False)[0]
        session.resume()
        if is_main:
            run.write_config(session.configs())
        return session

    @property
    def tokenizer(self):
        return self.corpus.tokenizer

    def configs(self) -> dict:
        configs = {"seqlm_version": __version__, "preset": self.preset,
                   "data": asdict(self.data), "model": asdict(self.model_cfg),
                   "train": asdict(self.train_cfg)}
        if self.recipe is not None:
            configs["recipe"] = self.recipe
        return configs

    def save(self, kind: str, trainer: Trainer) -> None:
        tensors, meta = trainer.state_dict()  # every rank: it gathers the carried states
        if not self.dist.is_main:
            return
        try:
            save_checkpoint(self.run.checkpoints / kind, trainer.model, self.tokenizer,
                            extra_config={k: v for k, v in self.configs().items()
                                          if k != "model"},
                            trainer_tensors=tensors if kind == "last" else None,
                            trainer_state=meta if kind == "last" else
                            {"progress": meta["progress"]})
        except CheckpointError as exc:  # e.g. a full disk: say how the run goes on
            raise CheckpointError(f"{exc}; then continue the run with `resume` "
                                  f"{self.run.path}") from None

    def resume(self) -> None:
        """Loads ``checkpoints/last`` into the trainer.

        Raises:
            CheckpointError: no usable checkpoint, or its vocabulary differs from the corpus.
        """
        try:
            last = resolve_checkpoint(self.run.checkpoints / "last")
        except CheckpointError:
            raise CheckpointError(f"{self.run.path} has no checkpoint to resume from "
                                  "(no complete checkpoints/last: the run stopped before its "
                                  "first save); start it again with `overwrite`") from None
        ckpt = load_checkpoint(last, device=self.device)
        if ckpt.tokenizer.vocab != self.tokenizer.vocab:
            raise CheckpointError(f"{self.run.path}: the corpus gives another vocabulary than "
                                  "the saved run; resume with the same corpus and settings")
        if ckpt.trainer_tensors is None or ckpt.trainer_state is None:
            raise CheckpointError(f"{ckpt.path}: has no trainer state; it cannot be resumed")
        self.trainer.model.load_state_dict(ckpt.model.state_dict())
        self.trainer.load_state_dict(ckpt.trainer_tensors, ckpt.trainer_state)
        if self.dist.is_main:
            self.run.truncate_metrics(self.trainer.progress.step)

    def sample(self, step: int) -> str:
        cfg = self.train_cfg
        prefix = cfg.sample_prefix
        if prefix is None:
            val = self.corpus.splits.get("val")
            source = val if val is not None and len(val) else self.corpus.splits["train"]
            prefix = self.tokenizer.decode(source[:8 if self.data.tokenizer != "char" else 24])
        with torch.random.fork_rng(devices=[]):  # never disturb the training RNG
            text = generate(self.trainer.model, self.tokenizer, prefix,
                            max_new_tokens=max(cfg.sample_tokens, 1),
                            temperature=cfg.sample_temperature, seed=cfg.seed)[0]
        self.samples.append({"step": step, "text": text})
        self.run.append_text("samples.txt", f"--- step {step}\n{text}\n")
        return text

    def fit(self, *, on_step: Callable | None = None, on_log: Callable | None = None,
            on_eval: Callable | None = None, on_recovery: Callable | None = None,
            on_event: Callable | None = None,
            should_stop: Callable[[], bool] | None = None) -> dict:
        """Trains until a budget is spent, patience runs out or ``should_stop()``; writes the
        metrics, samples, checkpoints and ``curves.png`` as it goes; returns the summary.

        The callbacks (a :class:`seqlm.progress.Reporter`'s, or the caller's) see each step's
        progress, each log, evaluation and recovery record after it is written, and each
        ``"threads"`` and ``"replan"`` record of the recipe's followers (in a multi-process
        run on rank 0 only). When the recipe's first check changes the depth, the run starts
        again with the other model (:class:`seqlm.replan.Restart`): its files are cleared but
        for that record, and the new model gets the whole budget.

        Returns:
            The run's summary: ``run``, ``stop_reason`` (``'interrupted'`` after
            ``should_stop``), ``steps``, ``epochs``, ``tokens``, ``wall_s``, ``train`` and
            ``val`` (``loss``, ``ppl``, ``bits`` of the final weights), ``best_val`` (those of
            checkpoints/best, with its ``step``), ``tokens_per_s``, ``baselines``,
            ``vocab_size``, ``oov_rate``, ``sample``, ``finished_at``.

        Raises:
            TrainingDiverged: the divergence guard could not recover (the checkpoints saved
                are the last good ones).
            DistributedError: another process of the run died.
        """
        hooks = self._hooks(on_log=on_log, on_eval=on_eval, on_step=on_step,
                            should_stop=should_stop, on_recovery=on_recovery,
                            on_event=on_event)
        start = time.perf_counter()
        while True:
            try:
                self.trainer.run(hooks)
                break
            except Restart as restart:
                self._restart(restart)
                hooks.on_event(restart.record)
            except RuntimeError as exc:  # a collective failed: another rank died
                lost = self.dist.lost_peer(exc)
                if lost is None:
                    raise
                raise lost from None
        return self._summary(time.perf_counter() - start)

    def _restart(self, restart: Restart) -> None:
        """A new model of ``restart.model`` (initialised as a run given those settings), a new
        trainer keeping the governor, and the run's files cleared."""
        old = self.trainer
        torch.manual_seed(self.train_cfg.seed)
        model = RNNLM(restart.model).to(self.device)
        self.model_cfg = model.config
        self.train_cfg.eval_every = restart.record["chosen"].get("eval_every",
                                                                 self.train_cfg.eval_every)
        planner = old.planner
        planner.model, planner.eval_every = model.config, self.train_cfg.eval_every
        self.trainer = Trainer(model, self.corpus, self.data, self.train_cfg, self.device,
                               dist=self.dist, governor=old.governor, planner=planner)
        self.samples = []
        if self.run is not None:
            self.run.clear()
            self.run.write_config(self.configs())

    def _hooks(self, *, on_log=None, on_eval=None, on_step=None, should_stop=None,
               on_recovery=None, on_event=None) -> Hooks:
        """Hooks that write metrics, samples and checkpoints (when the session has a run
        directory), then call the caller's (in a multi-process run, on rank 0 only; the other
        ranks only join the saves)."""
        idle = (lambda record: None)
        on_step, should_stop = on_step or idle, should_stop or (lambda: False)
        if not self.dist.is_main:
            return Hooks(on_step=on_step, should_stop=should_stop, save=self.save)

        def then(report: Callable | None, sample: bool = False) -> Callable[[dict], None]:
            def record(r: dict) -> None:
                if r.get("kind") == "replan":
                    self._replanned(r)
                if self.run is not None:
                    if sample and self.train_cfg.sample_tokens:
                        r["sample"] = self.sample(r["step"])
                    self.run.append("metrics.jsonl", r)
                (report or idle)(r)
            return record

        return Hooks(on_log=then(on_log), on_eval=then(on_eval, sample=True), on_step=on_step,
                     should_stop=should_stop, save=self.save if self.run else Hooks.save,
                     on_recovery=then(on_recovery), on_event=then(on_event))

    def _replanned(self, record: dict) -> None:
        """Keeps the run's saved settings and recipe record in step with a new plan."""
        self.model_cfg = self.trainer.model.config
        if self.recipe is not None:
            self.recipe.setdefault("replans", []).append(record)
        if self.run is not None:
            self.run.write_config(self.configs())

    def _summary(self, wall: float) -> dict:
        """Writes ``curves.png`` and returns the run's summary (see :meth:`fit`)."""
        from seqlm.plots import plot_curves

        history = self.run.records() if self.run is not None else self.trainer.history
        if self.dist.is_main and self.run is not None:
            plot_curves(history, self.baselines, self.run.path / "curves.png")
        train = [r for r in history if r.get("kind") == "train"]
        evals = [r for r in history if r.get("kind") == "eval" and "val_loss" in r]
        p = self.trainer.progress
        final_train = train[-1] if train else {}
        return {
            "run": str(self.run.path) if self.run else None, "stop_reason": p.stop_reason, "steps": p.step,
            "epochs": p.epoch, "tokens": p.tokens, "wall_s": wall,
            "train": {k: final_train.get(k) for k in ("loss", "ppl", "bits")} if train else None,
            "val": {k: evals[-1][f"val_{k}"] for k in ("loss", "ppl", "bits")} if evals else None,
            "best_val_loss": p.best_val if evals else None,
            "best_val": _best(evals, p.best_step),
            "tokens_per_s": p.tokens / max(p.elapsed, 1e-9),
            "baselines": self.baselines, "vocab_size": self.corpus.vocab_size,
            "oov_rate": self.corpus.oov_rate,
            "sample": self.samples[-1]["text"] if self.samples else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def _best(evals: list[dict], step: int) -> dict | None:
    """The best evaluation's figures and step (what checkpoints/best holds), or None."""
    best = next((r for r in reversed(evals) if r["step"] == step and r.get("best")), None)
    if best is None:
        return None
    return {"step": step, **{k: best[f"val_{k}"] for k in ("loss", "ppl", "bits")}}
