"""The runs a playground serves: loaded once at start, their files re-read on every request.

A served run is a model loaded from a run, checkpoint or ONNX export directory given on the
command line (the client never names a file), with torch or, for an export, onnxruntime. The model stays in memory as loaded; ``metrics.jsonl`` and
``samples.txt`` are re-read when asked for, tolerating a run that ``seqlm train`` is writing
meanwhile (a half-written last line, a file being replaced) or that was removed.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import numpy as np

from seqlm.errors import CheckpointError, ConfigError, SeqlmError, check_choice
from seqlm.runtime.format import RUN_EXPORT, default_backend, is_export

SAMPLE_HEADER = re.compile(r"^--- step (\d+)$")
BACKENDS = ("torch", "onnx")


@dataclass
class ServedRun:
    """One model the playground serves.

    Attributes:
        name: the label the page and the API use (the directory's name, made unique).
        path: the run, checkpoint or export directory given on the command line.
        lm: the :class:`seqlm.api.LanguageModel` (torch) or
            :class:`seqlm.runtime.OnnxLanguageModel` (an export) every number comes from.
        backend: ``'torch'`` or ``'onnx'``.
    """

    name: str
    path: Path
    lm: object
    backend: str = "torch"
    _facts: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self):
        """The torch :class:`~seqlm.models.RNNLM` (the torch backend only)."""
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def model_config(self) -> dict:
        """The architecture (the fields of :class:`~seqlm.config.ModelConfig`)."""
        if self.backend == "onnx":
            return dict(self.lm.config["model"])
        config = self.lm.model.config
        return asdict(config) if is_dataclass(config) else dict(vars(config))

    @property
    def cell(self) -> str:
        return self.model_config["cell"]

    @property
    def config(self) -> dict:
        """The run's saved configs (data, model, train, recipe): the checkpoint's, or for an
        export, its run's config.json (an export keeps only the architecture)."""
        if self.backend == "torch" and "data" in self.lm.config:
            return self.lm.config
        try:
            saved = json.loads((run_root(self) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        return saved if isinstance(saved, dict) else {}

    def describe(self) -> dict:
        """What ``GET /api/runs`` says about the run."""
        m = self.model_config
        params = (sum(p.numel() for p in self.model.parameters())
                  if self.backend == "torch" else None)
        return {"name": self.name, "path": str(self.path), "checkpoint": str(self.lm.path),
                "backend": self.backend, "cell": m["cell"], "impl": m.get("impl"),
                "hidden_size": m["hidden_size"], "num_layers": m["num_layers"],
                "vocab_size": m["vocab_size"], "tokenizer": self.tokenizer.kind,
                "parameters": params,
                "has_metrics": (run_root(self) / "metrics.jsonl").is_file()}

    def facts(self):
        """The run's :class:`~seqlm.serve.baseline.CorpusFacts` (read on first use), or a
        string saying why there are none (the corpus cannot be read any more, or the
        directory is a bare checkpoint)."""
        with self._lock:
            if self._facts is None:
                from seqlm.serve.baseline import corpus_facts

                try:
                    self._facts = corpus_facts(self.config, self.tokenizer)
                except (SeqlmError, OSError, ValueError, TypeError) as exc:
                    self._facts = f"the run's corpus cannot be read: {exc}"
            return self._facts

    def bigram(self):
        """The run's add-k bigram baseline, or a string saying why there is none."""
        facts = self.facts()
        return facts if isinstance(facts, str) else facts.bigram


def load_runs(paths: list[str | Path], *, device: str = "cpu",
              backend: str | None = None) -> dict[str, ServedRun]:
    """Load every run, checkpoint or export directory. Each is named by its directory
    (``<run>/last`` for a run's ``checkpoints/last``, ``<run>/onnx`` for its export), with
    ``-2``, ``-3``, ... appended where two names would clash.

    Args:
        paths: the directories.
        device: the torch backend's device.
        backend: ``'torch'`` (:func:`seqlm.load`), ``'onnx'`` (:func:`seqlm.runtime.load`:
            an export, or a run's ``onnx/``; torch is never imported), or None
            (:func:`seqlm.runtime.format.default_backend`).

    Raises:
        CheckpointError: a path is not a readable run or checkpoint (the message names it).
        ExportError: an export is missing or unreadable.
        ConfigError: no paths, or an unknown backend.
    """
    if not paths:
        raise ConfigError("give at least one run or checkpoint directory to serve")
    if backend is not None:
        check_choice("backend", backend, BACKENDS)
    runs: dict[str, ServedRun] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist; give a run directory written by "
                                  "seqlm train (or one of its checkpoints, or an export)")
        chosen = backend or default_backend(path)
        lm = _load(path, chosen, device)
        name = _unique_name(lm.path if chosen == "onnx" else path, runs)
        runs[name] = ServedRun(name, Path(lm.path) if chosen == "onnx" else path, lm, chosen)
    return runs


def _load(path: Path, backend: str, device: str):
    if backend == "onnx":
        from seqlm import runtime

        return runtime.load(path)
    if is_export(path):
        raise CheckpointError(f"{path} is an ONNX export, not a checkpoint: serve it with "
                              "--backend onnx, or serve the run it came from")
    from seqlm.api import load

    return load(path, device=device)


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
    resolved = Path(path).resolve()
    name = resolved.name
    if name in ("best", "last") and resolved.parent.name == "checkpoints":
        name = f"{resolved.parent.parent.name}/{name}"
    elif name == RUN_EXPORT and is_export(resolved):
        name = f"{resolved.parent.name}/{name}"
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
    checkpoint (``<run>/checkpoints/<name>``) or export (``<run>/onnx``) belongs to."""
    path = run.path
    if (path / "metrics.jsonl").exists():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    if is_export(path) and (path.parent / "config.json").is_file():
        return path.parent
    return path


def run_history(run: ServedRun) -> dict:
    """The curves and samples of a run as they are on disk now (none when the files are
    missing or being replaced)."""
    root = run_root(run)
    return {"name": run.name, "records": read_records(root / "metrics.jsonl"),
            "samples": read_samples(root / "samples.txt")}
