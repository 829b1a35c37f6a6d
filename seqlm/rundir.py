"""The files of one training run: ``runs/<name>/`` holds ``config.json`` (the resolved data,
model and train configs), ``metrics.jsonl`` (one record per log step, evaluation and
recovery), ``checkpoints/last`` and ``checkpoints/best`` (see :mod:`seqlm.checkpoint`),
``curves.png`` and ``samples.txt``. Creating one never overwrites a run without
``overwrite``; every file is written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from seqlm import atomic
from seqlm.errors import CheckpointError, ConfigError
from seqlm.settings import RENAMED, SECTIONS


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
        for name, cls in SECTIONS.items():
            values = saved.get(name) if isinstance(saved, dict) else None
            if not isinstance(values, dict):
                raise CheckpointError(f"{self.config} has no [{name}] settings; it is not a "
                                      "seqlm run config, so the run cannot be resumed")
            known = {f.name for f in dataclasses.fields(cls)} | set(RENAMED.get(name, ()))
            unknown = sorted(values.keys() - known)
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

    def clear(self) -> None:
        """Removes what training wrote (checkpoints, metrics, samples, curves), keeping the
        directory and config.json: a run that starts again with another model.

        Raises:
            CheckpointError: a file cannot be removed.
        """
        try:
            shutil.rmtree(self.checkpoints, ignore_errors=False)
            for name in (self.metrics, self.path / "samples.txt", self.path / "curves.png"):
                name.unlink(missing_ok=True)
            self.checkpoints.mkdir()
        except FileNotFoundError:
            self.checkpoints.mkdir(exist_ok=True)
        except OSError as exc:
            raise self._write_error(self.checkpoints, exc) from None

    def truncate_metrics(self, step: int) -> None:
        """Drops records written after ``step`` (by a run killed after its last checkpoint);
        a recovery counts at the step it went back to."""
        kept = [r for r in self.records() if r.get("restored_step", r.get("step", 0)) <= step]
        self._replace(self.metrics, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in kept))
