"""The exported directory's layout — written by :mod:`seqlm.export`, read by
:mod:`seqlm.runtime` (no torch here)::

    <out>/
      config.json        {"format": "seqlm-onnx", "format_version": 1, "model": {...},
                          "state": ["h"] or ["h", "c"], "files": {...}, "opset": ...}
      step.onnx          tokens (B,) int64, h (L, B, H) [, c]  ->  logits (B, V), h' [, c']
      forward.onnx       tokens (B, T) int64, h [, c]          ->  logits (B, T, V), h' [, c']
      start_logits.npy   (V,) float32: the next-token logits of the zero state (the decoder
                         bias), where generation starts for an empty prefix without <bos>
      vocab.json         the checkpoint's tokenizer state (see seqlm.checkpoint)
      tokenizer.json     BPE only: the Hugging Face tokenizer

Batch B and time T are dynamic axes; the weights and computations are float32. The ONNX
inputs are named ``tokens`` and the state names, the outputs ``logits`` and the state names
with ``_out``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from seqlm.errors import ExportError

FORMAT, FORMAT_VERSION = "seqlm-onnx", 1
CONFIG_FILE = "config.json"
RUN_EXPORT = "onnx"  # where `seqlm export RUN` writes, inside the run directory
FILES = {"step": "step.onnx", "forward": "forward.onnx", "start_logits": "start_logits.npy"}
TOKENS, LOGITS = "tokens", "logits"


def state_names(cell: str) -> list[str]:
    """The state inputs of an exported model of ``cell``: ``["h"]``, or ``["h", "c"]``."""
    return ["h", "c"] if cell == "lstm" else ["h"]


def output_names(cell: str) -> list[str]:
    return [LOGITS, *(f"{name}_out" for name in state_names(cell))]


def is_export(directory: str | Path) -> bool:
    """Whether ``directory`` holds an exported model (its config.json says so)."""
    try:
        return json.loads((Path(directory) / CONFIG_FILE).read_text("utf-8")).get(
            "format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_dir(path: str | Path) -> Path:
    """Where ``seqlm export PATH`` writes without ``--out``: inside a run (``RUN/onnx``),
    beside a checkpoint directory (``CHECKPOINT-onnx``)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path / RUN_EXPORT
    return path.with_name(f"{path.resolve().name}-{RUN_EXPORT}")


def default_backend(path: str | Path) -> str:
    """The backend that reads ``path`` when none is named: ``'onnx'`` for an export
    directory, or where torch is not installed (the torch-free install); else ``'torch'``."""
    if is_export(path) or importlib.util.find_spec("torch") is None:
        return "onnx"
    return "torch"


def find_export(path: str | Path) -> Path | None:
    """The export ``path`` names: ``path`` itself when it is one, else the export of the run
    or checkpoint ``path`` where ``seqlm export`` writes it (:func:`export_dir`), else None."""
    path = Path(path)
    for candidate in (path, export_dir(path)):
        if is_export(candidate):
            return candidate
    return None


def read_config(directory: str | Path) -> dict:
    """The config.json of an exported directory, checked.

    Raises:
        ExportError: the directory is not an export of this format version, or a file it
            names is missing.
    """
    directory = Path(directory)
    if not is_export(directory):
        raise ExportError(f"{directory} is not an exported seqlm model and has none where "
                          f"seqlm export writes one; export it with: seqlm export {directory} "
                          f"(it writes {export_dir(directory)})")
    config = json.loads((directory / CONFIG_FILE).read_text("utf-8"))
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{directory / CONFIG_FILE}: format_version "
                          f"{config.get('format_version')!r} is not {FORMAT_VERSION}; export "
                          "the model again with this seqlm")
    for name in config.get("files", {}).values():
        if not (directory / name).is_file():
            raise ExportError(f"{directory / name} is missing; the export is incomplete — "
                              "export the model again")
    return config
