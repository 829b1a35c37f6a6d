"""A training run on disk, and the functions that start, resume and finish one.

``runs/<name>/`` holds ``config.json`` (the resolved data, model and train configs),
``metrics.jsonl`` (one record per log step and per evaluation), ``checkpoints/last`` and
``checkpoints/best`` (see :mod:`seqlm.checkpoint`), ``curves.png`` and ``samples.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from seqlm import __version__, atomic, distributed, recipe
from seqlm.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.batches import check_validation
from seqlm.data import Corpus, is_prepared, load_corpus
from seqlm.errors import CheckpointError, ConfigError
from seqlm.generate import generate
from seqlm.metrics import ngram_baselines
from seqlm.trainer import Hooks, Trainer

BUDGET_FIELDS = ("epochs", "max_steps", "time_budget", "early_stopping")


class RunDir:
    """The files of one run; creating one never overwrites a run without ``overwrite``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"

    @classmethod
    def check_available(cls, path: str | Path, *, overwrite: bool = False) -> None:
        """Raises:
            ConfigError: the directory exists and is not empty (without ``overwrite``), or is
                not a seqlm run (``overwrite`` only ever replaces runs), or is a file.
        """
        run = cls(path)
        if run.path.is_file():
            raise ConfigError(f"{run.path} is a file; choose a directory for `out`")
        if run.path.exists() and any(run.path.iterdir()):
            if not overwrite:
                raise ConfigError(f"{run.path} already exists; pass `overwrite` to replace it, "
                                  "`resume` to continue it, or choose another `out`")
            if not run.config.is_file():
                raise ConfigError(f"{run.path} exists and is not a seqlm run; `overwrite` only "
                                  "replaces runs; choose another `out`")

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> RunDir:
        """Creates the run directory (see :meth:`check_available` for what is refused).

        Raises:
            ConfigError: as :meth:`check_available`, or the directory cannot be created.
        """
        cls.check_available(path, overwrite=overwrite)
        run = cls(path)
        try:
            if run.path.exists() and any(run.path.iterdir()):
                # Out of the way in one rename first: a kill while deleting leaves hidden
                # debris, never a half-deleted run that is neither resumable nor replaceable.
                doomed = run.path.with_name(f".{run.path.name}.replaced-{os.getpid()}")
                os.replace(run.path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {run.path} ({exc.strerror}); "
                              "choose a writable `out`") from None
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.config.is_file():
            raise CheckpointError(f"{run.path} is not a seqlm run (no config.json); give the "
                                  "directory seqlm train created")
        return run

    def write_config(self, configs: dict) -> None:
        """Writes config.json, then makes checkpoints/ (so a run killed while being created is
        an empty directory, or a run without checkpoints that --overwrite may replace)."""
        self._replace(self.config, json.dumps(configs, indent=2, ensure_ascii=False))
        try:
            self.checkpoints.mkdir(exist_ok=True)
        except OSError as exc:
            raise self._write_error(self.checkpoints, exc) from None

    def _replace(self, path: Path, text: str) -> None:
        """Writes ``path`` whole or not at all (a temporary file renamed over it), so a run
        killed meanwhile keeps the previous version.

        Raises:
            CheckpointError: the file cannot be written (the previous version is kept).
        """
        try:
            atomic.write_file(path, text)
        except OSError as exc:
            raise self._write_error(path, exc) from None

    def _write_error(self, path: Path, exc: OSError) -> CheckpointError:
        return CheckpointError(f"cannot write {path} ({exc.strerror or exc}); free some disk "
                               f"space, then continue with `resume` {self.path}")

    def read_config(self) -> dict:
        """The saved settings, checked against the config classes.

        Raises:
            CheckpointError: config.json is unreadable, not JSON, or not a seqlm run config.
        """
        try:
            saved = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
            raise CheckpointError(f"{self.config}: unreadable ({exc}); the run cannot be "
                                  "resumed") from None
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        for name, cls in sections.items():
            values = saved.get(name) if isinstance(saved, dict) else None
            if not isinstance(values, dict):
                raise CheckpointError(f"{self.config} has no [{name}] settings; it is not a "
                                      "seqlm run config, so the run cannot be resumed")
            unknown = sorted(values.keys() - {f.name for f in dataclasses.fields(cls)})
            if unknown and name != "train":  # unknown train settings are dropped on resume
                raise CheckpointError(f"{self.config}: unknown [{name}] settings {unknown} "
                                      "(written by another seqlm version?); remove them to "
                                      "resume the run")
        return saved

    def append(self, name: str, record: dict) -> None:
        self.append_text(name, json.dumps(record, ensure_ascii=False) + "\n")

    def append_text(self, name: str, text: str) -> None:
        """Raises:
            CheckpointError: the file cannot be written (e.g. the disk is full).
        """
        try:
            with open(self.path / name, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise self._write_error(self.path / name, exc) from None

    def records(self) -> list[dict]:
        """The metrics records; a last line cut short (a run killed while appending it) is
        skipped.

        Raises:
            CheckpointError: a line before the last is not JSON.
        """
        if not self.metrics.is_file():
            return []
        text = self.metrics.read_bytes().decode("utf-8", errors="replace")
        lines = [line for line in text.splitlines() if line]
        out = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                out.append(record)
            elif number < len(lines):
                raise CheckpointError(f"{self.metrics}: line {number} is not a JSON record; "
                                      "remove that line to use the run")
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drops records written after ``step`` (by a run killed after its last checkpoint);
        a recovery counts at the step it went back to."""
        kept = [r for r in self.records() if r.get("restored_step", r.get("step", 0)) <= step]
        self._replace(self.metrics, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in kept))


class RunSession:
    """Builds the corpus, model and trainer for a run, saves its checkpoints and curves.

    ``RunSession(...)`` alone trains without a run directory (``run`` is None: nothing is
    saved); :meth:`start` and :meth:`reopen` give it one.
    """

    def __init__(self, data: DataConfig, model_fields: dict, train: TrainConfig, *,
                 preset: str | None = None) -> None:
        self.run: RunDir | None = None
        self.data, self.train_cfg, self.preset = data, train, preset
        if train.threads:
            torch.set_num_threads(train.threads)
        # Under torchrun: join the job, take this rank's device; only rank 0 writes files.
        self.dist, self.device = distributed.init(train.device)
        self.dist.check_batch_size(data.batch_size)
        torch.manual_seed(train.seed)
        self.corpus: Corpus = load_corpus(data)
        fields = {k: v for k, v in model_fields.items() if k != "vocab_size"}
        model, self.train_cfg, self.recipe = recipe.build_model(
            ModelConfig(vocab_size=self.corpus.vocab_size, **fields).resolve(self.device.type),
            self.corpus.splits, data, train, self.device, self.dist)
        self.model_cfg = model.config  # with the output layer decided
        self.dist.reseed(train.seed, step=0)  # ranks > 0 draw their own dropout masks
        self.trainer = Trainer(model, self.corpus, data, self.train_cfg, self.device,
                               dist=self.dist)
        if not is_prepared(data.corpus):  # a prepared corpus keeps the split it was made with
            check_validation(self.corpus.splits.get("val", ()), data.split_fractions()[1],
                             data.num_steps)
        self.baselines = ngram_baselines(self.corpus.splits["train"],
                                         self.corpus.splits.get("val", []),
                                         self.corpus.vocab_size)
        self.samples: list[dict] = []

    @classmethod
    def start(cls, out: str | Path, data: DataConfig, model_fields: dict, train: TrainConfig,
              *, preset: str | None = None, overwrite: bool = False,
              is_main: bool = True) -> RunSession:
        """A new run in ``out``. The directory is checked before the corpus loads and created
        after it (a bad corpus or setting leaves nothing behind); only the main rank writes.

        Raises:
            ConfigError: ``out`` is taken (see :meth:`RunDir.check_available`).
        """
        if is_main:
            RunDir.check_available(out, overwrite=overwrite)
        session = cls(data, model_fields, train, preset=preset)
        session.run = RunDir.create(out, overwrite=overwrite) if is_main else RunDir(out)
        if is_main:
            session.run.write_config(session.configs())
        return session

    @classmethod
    def reopen(cls, path: str | Path, flags: dict, *, is_main: bool = True) -> RunSession:
        """The run in ``path`` at its ``checkpoints/last``, with the budget settings among
        ``flags`` changed (see :func:`budget_overrides`).

        Raises:
            ConfigError: a flag other than a budget differs from the saved run.
            CheckpointError: no usable checkpoint (see :meth:`resume`).
        """
        run = RunDir.open(path)
        saved = run.read_config()
        train = resolve_train_config(saved["train"], budget_overrides(saved, flags))
        session = cls(DataConfig(**saved["data"]), saved["model"], train,
                      preset=saved.get("preset"))
        session.run = run
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


def hooks_for(session: RunSession, *, on_log=None, on_eval=None, on_step=None,
              should_stop=None, on_recovery=None) -> Hooks:
    """Hooks that write metrics, samples and checkpoints, then call the caller's reporters
    (in a multi-process run, on rank 0 only; the other ranks only join the saves)."""
    if not session.dist.is_main:
        return Hooks(on_step=on_step or (lambda p: None),
                     should_stop=should_stop or (lambda: False), save=session.save)

    def log(record: dict) -> None:
        session.run.append("metrics.jsonl", record)
        if on_log:
            on_log(record)

    def evaluate(record: dict) -> None:
        if session.train_cfg.sample_tokens:
            record["sample"] = session.sample(record["step"])
        session.run.append("metrics.jsonl", record)
        if on_eval:
            on_eval(record)

    def recovery(record: dict) -> None:
        session.run.append("metrics.jsonl", record)
        if on_recovery:
            on_recovery(record)

    return Hooks(on_log=log, on_eval=evaluate, on_step=on_step or (lambda p: None),
                 should_stop=should_stop or (lambda: False), save=session.save,
                 on_recovery=recovery)


def budget_overrides(saved: dict, given: dict) -> dict:
    """On ``--resume``, only budget flags may change; anything else must match the run.

    Raises:
        ConfigError: a flag contradicts the saved run.
    """
    for name, value in given.items():
        if name in BUDGET_FIELDS:
            continue
        for section in ("data", "model", "train"):
            if name in saved.get(section, {}) and saved[section][name] != value:
                raise ConfigError(f"--{name.replace('_', '-')} {value} contradicts the saved "
                                  f"run ({saved[section][name]}); only "
                                  f"{', '.join('--' + b.replace('_', '-') for b in BUDGET_FIELDS)}"
                                  " may change on `resume`; start a new run for other settings")
    return {k: v for k, v in given.items() if k in BUDGET_FIELDS}


def resolve_train_config(saved: dict, overrides: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    values.update(overrides)
    return TrainConfig(**values)


def _best(evals: list[dict], step: int) -> dict | None:
    """The best evaluation's figures and step (what checkpoints/best holds), or None."""
    best = next((r for r in reversed(evals) if r["step"] == step and r.get("best")), None)
    if best is None:
        return None
    return {"step": step, **{k: best[f"val_{k}"] for k in ("loss", "ppl", "bits")}}


def finish(session: RunSession, wall: float) -> dict:
    """Writes ``curves.png`` and returns the run's summary."""
    from seqlm.plots import plot_curves

    history = session.run.records()
    if session.dist.is_main:
        plot_curves(history, session.baselines, session.run.path / "curves.png")
    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval" and "val_loss" in r]
    p = session.trainer.progress
    final_train = train[-1] if train else {}
    return {
        "run": str(session.run.path), "stop_reason": p.stop_reason, "steps": p.step,
        "epochs": p.epoch, "tokens": p.tokens, "wall_s": wall,
        "train": {k: final_train.get(k) for k in ("loss", "ppl", "bits")} if train else None,
        "val": {k: evals[-1][f"val_{k}"] for k in ("loss", "ppl", "bits")} if evals else None,
        "best_val_loss": p.best_val if evals else None,
        "best_val": _best(evals, p.best_step),
        "tokens_per_s": p.tokens / max(p.elapsed, 1e-9),
        "baselines": session.baselines, "vocab_size": session.corpus.vocab_size,
        "oov_rate": session.corpus.oov_rate,
        "sample": session.samples[-1]["text"] if session.samples else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
