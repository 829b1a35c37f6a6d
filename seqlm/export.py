"""Export a trained model to ONNX: a directory any ONNX runtime can generate from.

Two graphs per model (the layout is in :mod:`seqlm.runtime.format`):

* ``step.onnx``: one token per row, traced from the model's torch stepper
  (:meth:`seqlm.models.RNNLM.stepper`: a row gather from the input table, one cell update per
  layer, the decoder), the graph generation runs token by token;
* ``forward.onnx``: a (B, T) block through ONNX's RNN/GRU/LSTM operators, the graph scoring
  and the warm-up run. Scratch and fused cores share torch's parameter names and gate order,
  so the weights load into ``torch.nn.RNN/GRU/LSTM`` as they are, and the operators keep
  batch and time dynamic.

Both are written by torch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``): on torch 2.13 it exports the recurrent modules as single ONNX operators
with dynamic axes from a plain trace, where the ``torch.export``-based exporter needs
``onnxscript`` and, measured here with onnxscript 0.7.2, fails in its ``torch.export``
step on both modules once batch and time are dynamic. Weights are exported in float32 (a
float64 model is cast). After writing, each graph is checked with onnxruntime against the
torch model on random tokens and states.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import secrets
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlm.checkpoint import BPE_FILE, VOCAB_FILE, load_checkpoint
from seqlm.errors import ExportError
from seqlm.models import RNNLM
from seqlm.models.minrnn import MIN_CELLS
from seqlm.models.scratch import make_core
from seqlm.runtime.format import (CONFIG_FILE, FILES, FORMAT, FORMAT_VERSION, TOKENS,
                                  is_export, output_names, state_names)

OPSET = 17
TOLERANCE = 1e-4  # largest |logits difference| the check accepts, float32


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        out: the export directory.
        files: the names of the files in it.
        max_abs_diff: per graph (``"step"``, ``"forward"``), the largest absolute difference
            between onnxruntime's and torch's logits on the check's random input (empty when
            the check was skipped).
    """

    out: Path
    files: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)


class _Step(nn.Module):
    """``(tokens (B,), *state) -> (logits (B, V), *state)`` through the torch stepper."""

    def __init__(self, model) -> None:
        super().__init__()
        # A scratch twin holding the same weights (the names match): a fused core's stepper
        # would build that twin inside itself, with weights the trace cannot hold as constants.
        twin = RNNLM(replace(model.config, impl="scratch", bptt_engine="autograd",
                             truncation="window")).to(model.reference().dtype)
        twin.load_state_dict(model.state_dict())
        self.advance = twin.eval().requires_grad_(False).stepper(backend="torch")
        self.pair = model.config.cell == "lstm"

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.advance(tokens, state if self.pair else state[0])
        return (logits, *new) if self.pair else (logits, new)


class _Forward(nn.Module):
    """``(tokens (B, T), *state) -> (logits (B, T, V), *state)`` through torch.nn.RNN/GRU/LSTM
    holding the model's core weights, with the model's input layer and decoder."""

    def __init__(self, model) -> None:
        super().__init__()
        c = model.config
        # the decoder as plain torch modules (the model's CPU fast path does not trace)
        self.embedding, self.decoder = model.embedding, model.decoder
        self.dtype = model.reference().dtype
        self.rnn = make_core(c.cell, "fused", c.embedding_dim or c.vocab_size, c.hidden_size,
                             c.num_layers, nonlinearity=c.nonlinearity)
        self.rnn.load_state_dict(model.core.state_dict())
        self.vocab_size, self.pair = c.vocab_size, c.cell == "lstm"

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if self.embedding is not None:
            x = self.embedding(tokens)
        else:
            x = F.one_hot(tokens, self.vocab_size).to(self.dtype)
        output, new = self.rnn(x, state if self.pair else state[0])
        logits = self.decoder(output)
        return (logits, *new) if self.pair else (logits, new)


def export_onnx(source: str | Path, out: str | Path, *, overwrite: bool = False,
                check: bool = True) -> ExportReport:
    """Export the checkpoint in ``source`` (a run or checkpoint directory) to ``out``.

    Args:
        source: what :func:`seqlm.checkpoint.load_checkpoint` reads.
        out: the directory to create; it must not exist or be empty.
        overwrite: replace ``out`` if it holds an earlier export (never anything else).
        check: run both graphs with onnxruntime against torch after writing.

    Returns:
        An :class:`ExportReport`.

    Raises:
        CheckpointError: ``source`` holds no readable checkpoint.
        ExportError: the model's cell is mingru/minlstm, ``out`` is in the way, onnx is not
            installed, torch cannot export the model, onnxruntime is missing (with
            ``check``), or onnxruntime's logits differ from torch's by more than
            :data:`TOLERANCE`.
    """
    if importlib.util.find_spec("onnx") is None:  # torch's exporter writes through it
        raise ExportError("seqlm export needs the onnx package (and onnxruntime to check "
                          "and run the graphs); pip install 'seqlm[onnx]'")
    ckpt = load_checkpoint(source, device="cpu")
    if ckpt.model.config.cell in MIN_CELLS:
        raise ExportError(f"ONNX export runs cells 'rnn', 'gru' and 'lstm', not "
                          f"{ckpt.model.config.cell!r}; generate with torch (seqlm generate)")
    model = copy.deepcopy(ckpt.model).float().eval().requires_grad_(False)  # traced as constants
    target = Path(out)
    _check_target(target, overwrite)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        files = _write(model, ckpt, tmp)
        report = ExportReport(target, files)
        if check:
            report.max_abs_diff = check_export(model, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _check_target(target: Path, overwrite: bool) -> None:
    if not (target.is_file() or (target.is_dir() and any(target.iterdir()))):
        return
    if not is_export(target):
        raise ExportError(f"{target} already exists and is not a seqlm export; choose another "
                          "`out` (seqlm never replaces other files)")
    if not overwrite:
        raise ExportError(f"{target} already holds an export; pass `overwrite` to replace it, "
                          "or choose another `out`")


def _write(model, ckpt, directory: Path) -> list[str]:
    c = model.config
    examples = {"step": torch.zeros(2, dtype=torch.long),
                "forward": torch.zeros(2, 3, dtype=torch.long)}
    for graph, module in (("step", _Step(model)), ("forward", _Forward(model))):
        tokens = examples[graph]
        state = model.begin_state(2)
        _onnx_export(module.eval(), (tokens, *(state if c.cell == "lstm" else (state,))),
                     directory / FILES[graph], c.cell, time_axis=graph == "forward")
    np.save(directory / FILES["start_logits"], model.next_logits(model.begin_state(1))[0]
            .detach().numpy().astype(np.float32))
    names = dict(FILES, vocab=VOCAB_FILE)
    for name in (VOCAB_FILE, BPE_FILE):
        if (ckpt.path / name).is_file():
            shutil.copyfile(ckpt.path / name, directory / name)
    if (ckpt.path / BPE_FILE).is_file():
        names["bpe"] = BPE_FILE
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": asdict(c),
              "state": state_names(c.cell), "files": names, "opset": OPSET,
              "source": str(ckpt.path), "dtype": "float32"}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return sorted([CONFIG_FILE, *names.values()])


def _onnx_export(module: nn.Module, args: tuple, path: Path, cell: str, *,
                 time_axis: bool) -> None:
    """``torch.onnx.export`` with batch (and time) dynamic; one-line error on failure."""
    axes = {TOKENS: {0: "batch", 1: "time"} if time_axis else {0: "batch"}}
    axes.update({name: {1: "batch"} for name in state_names(cell)})
    outputs = output_names(cell)
    axes.update({name: {1: "batch"} for name in outputs[1:]})
    axes[outputs[0]] = {0: "batch", 1: "time"} if time_axis else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and RNN notes
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=[TOKENS, *state_names(cell)], output_names=outputs,
                              dynamic_axes=axes)
    except Exception as exc:  # the exporter raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch {torch.__version__} cannot export this {cell} model to ONNX "
                          f"({first[:200]}); export it with another torch version") from exc


def check_export(model, directory: str | Path, *, batch: int = 3, steps: int = 5,
                 seed: int = 0) -> dict[str, float]:
    """Run both graphs with onnxruntime on random tokens and states; compare with torch.

    Returns:
        ``{"step": max |Δlogits|, "forward": max |Δlogits|}`` (float32 logits).

    Raises:
        ExportError: onnxruntime is missing, or a difference exceeds :data:`TOLERANCE`.
    """
    from seqlm.runtime import onnx_session  # the runtime's one place that opens a graph

    c = model.config
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, c.vocab_size, (batch, steps), generator=g)
    parts = [torch.randn(c.num_layers, batch, c.hidden_size, generator=g) * 0.5
             for _ in state_names(c.cell)]
    state = tuple(parts) if c.cell == "lstm" else parts[0]
    feeds = {name: p.numpy() for name, p in zip(state_names(c.cell), parts)}
    with torch.no_grad():
        want_forward, _ = model(tokens, state)
        want_step, _ = model(tokens[:, :1], state)
    diffs = {}
    for graph, ids, want in (("step", tokens[:, 0], want_step[:, 0]),
                             ("forward", tokens, want_forward)):
        session = onnx_session(Path(directory) / FILES[graph])
        got = session.run([output_names(c.cell)[0]], {TOKENS: ids.numpy(), **feeds})[0]
        diffs[graph] = float(np.abs(got - want.numpy()).max())
        if not diffs[graph] <= TOLERANCE:
            raise ExportError(f"{FILES[graph]}: onnxruntime's logits differ from torch's by "
                              f"{diffs[graph]:.2e} (> {TOLERANCE:g}); this model does not "
                              "export faithfully with this torch and onnxruntime")
    return diffs


def load_onnx(path: str | Path, *, threads: int | None = None):
    """An :class:`seqlm.runtime.OnnxLanguageModel` of ``path``: an exported directory as it
    is, or a run or checkpoint directory exported first to a temporary directory (deleted
    once the graphs are loaded; the check against torch is skipped).

    Raises:
        CheckpointError, ExportError: as :func:`export_onnx` and :func:`seqlm.runtime.load`.
    """
    from seqlm import runtime

    if is_export(path):
        return runtime.load(path, threads=threads)
    with tempfile.TemporaryDirectory(prefix="seqlm-onnx-") as tmp:
        exported = export_onnx(path, Path(tmp) / "onnx", check=False).out
        return runtime.load(exported, threads=threads)
