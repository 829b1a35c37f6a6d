"""The runs a playground serves: loaded once at start, their files re-read on every request.

A served run is a model loaded from a run or checkpoint directory given on the command line
(the client never names a file). The model stays in memory as loaded; ``metrics.jsonl`` and
``samples.txt`` are re-read when asked for, tolerating a run that ``seqlm train`` is writing
meanwhile (a half-written last line, a file being replaced) or that was removed.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqlm.api import load
from seqlm.errors import CheckpointError, ConfigError, SeqlmError

SAMPLE_HEADER = re.compile(r"^--- step (\d+)$")


@dataclass
class ServedRun:
    """One model the playground serves.

    Attributes:
        name: the label the page and the API use (the directory's name, made unique).
        path: the run (or checkpoint) directory given on the command line.
        lm: the :class:`seqlm.api.LanguageModel` every number on the page comes from.
    """

    name: str
    path: Path
    lm: object
    _bigram: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self):
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def describe(self) -> dict:
        """What ``GET /api/runs`` says about the run."""
        c = self.model.config
        return {"name": self.name, "path": str(self.path), "checkpoint": str(self.lm.path),
                "cell": c.cell, "impl": c.impl, "hidden_size": c.hidden_size,
                "num_layers": c.num_layers, "vocab_size": c.vocab_size,
                "tokenizer": self.tokenizer.kind,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "has_metrics": (run_root(self) / "metrics.jsonl").is_file()}

    def bigram(self):
        """The run's add-k bigram baseline (fitted on first use), or a string saying why
        there is none (the corpus cannot be read any more, or the directory is a bare
        checkpoint)."""
        with self._lock:
            if self._bigram is None:
                from seqlm.serve.baseline import fit_bigram

                try:
                    self._bigram = fit_bigram(self.lm.config, self.tokenizer)
                except (SeqlmError, OSError, ValueError, TypeError) as exc:
                    self._bigram = f"bigram baseline unavailable: {exc}"
            return self._bigram


def load_runs(paths: list[str | Path], *, device: str = "cpu") -> dict[str, ServedRun]:
    """Load every run or checkpoint directory with :func:`seqlm.load`. Each is named by its
    directory (``<run>/last`` for a run's ``checkpoints/last``), with ``-2``, ``-3``, ...
    appended where two names would clash.

    Raises:
        CheckpointError: a path is not a readable run or checkpoint (the message names it).
        ConfigError: no paths.
    """
    if not paths:
        raise ConfigError("give at least one run or checkpoint directory to serve")
    runs: dict[str, ServedRun] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist; give a run directory written by "
                                  "seqlm train (or one of its checkpoints)")
        name = _unique_name(path, runs)
        runs[name] = ServedRun(name, path, load(path, device=device))
    return runs


class UnknownRun(Exception):
    """A request names a run the server was not started with (answered 404)."""


def pick_run(runs: dict[str, ServedRun], name: str | None) -> ServedRun:
    """The run called ``name`` (None: the first one served).

    Raises:
        UnknownRun: no run has that name.
    """
    if name is None:
        return next(iter(runs.values()))
    if name not in runs:
        raise UnknownRun(f"no run named {name!r}; this server has {', '.join(map(repr, runs))}")
    return runs[name]


def _unique_name(path: Path, taken: dict) -> str:
    resolved = path.resolve()
    name = resolved.name
    if name in ("best", "last") and resolved.parent.name == "checkpoints":
        name = f"{resolved.parent.parent.name}/{name}"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def read_records(path: Path) -> list[dict]:
    """The JSON records of a ``metrics.jsonl`` being appended to: lines that are not
    complete JSON objects (the one being written, or damage) are skipped; a missing or
    unreadable file gives no records."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(_finite(record))
    return out


def _finite(record: dict) -> dict:
    """NaN and infinities (a diverged step) as None, so the answer is strict JSON."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in record.items()}


def read_samples(path: Path) -> list[dict]:
    """``samples.txt`` as ``[{"step": n, "text": ...}]`` (a missing file gives [])."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out: list[dict] = []
    for line in lines:
        header = SAMPLE_HEADER.match(line)
        if header:
            out.append({"step": int(header.group(1)), "text": ""})
        elif out:
            out[-1]["text"] += ("\n" if out[-1]["text"] else "") + line
    return out


def run_root(run: ServedRun) -> Path:
    """The run directory holding metrics.jsonl: the path served, or the run a served
    checkpoint (``<run>/checkpoints/<name>``) belongs to."""
    if run.path.parent.name == "checkpoints" and not (run.path / "metrics.jsonl").exists():
        return run.path.parent.parent
    return run.path


def run_history(run: ServedRun) -> dict:
    """The curves and samples of a run as they are on disk now (none when the files are
    missing or being replaced)."""
    root = run_root(run)
    return {"name": run.name, "records": read_records(root / "metrics.jsonl"),
            "samples": read_samples(root / "samples.txt")}
