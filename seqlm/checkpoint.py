"""The on-disk checkpoint format — the only module that knows it.

A checkpoint is a directory of plain data; nothing in it is ever unpickled::

    <name>/
      model.safetensors     weights (CPU, contiguous; a tied matrix stored once)
      config.json           {"format_version": 1, "model": ModelConfig fields, ...extras}
      vocab.json            the tokenizer's state (kind, options, vocabulary)
      tokenizer.json        BPE only: the Hugging Face tokenizer, as its own JSON
      trainer.safetensors   optional trainer tensors (optimizer moments, RNG states)
      trainer.json          optional trainer state (step, epoch, best loss, ...)

Saving is atomic (:mod:`seqlm.atomic`): the files are written and fsynced in a sibling
``.<name>.tmp-<random>`` that replaces the old checkpoint in two renames. A crash between them
leaves ``.<name>.old``, which :func:`load_checkpoint` uses when ``<name>`` is missing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from seqlm import atomic
from seqlm.config import ModelConfig
from seqlm.errors import CheckpointError, ConfigError, SeqlmError
from seqlm.devices import resolve_device
from seqlm.models import RNNLM
from seqlm.tokenize import Tokenizer, tokenizer_from_state

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not ours
MODEL_FILE, CONFIG_FILE, VOCAB_FILE = "model.safetensors", "config.json", "vocab.json"
BPE_FILE, TRAINER_TENSORS_FILE, TRAINER_STATE_FILE = (
    "tokenizer.json", "trainer.safetensors", "trainer.json")
ALIASES_KEY = "seqlm.aliases"  # safetensors metadata: {"alias name": "stored name"}


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        model: the :class:`RNNLM`, on the requested device, in eval mode.
        tokenizer: the tokenizer it was trained with.
        config: the whole ``config.json`` (``"model"`` plus the caller's extra sections).
        trainer_tensors: ``trainer.safetensors`` as a dict, or None when absent.
        trainer_state: ``trainer.json``, or None when absent.
        path: the directory read (``.<name>.old`` after an interrupted save).
    """

    model: RNNLM
    tokenizer: Tokenizer
    config: dict
    trainer_tensors: dict[str, Tensor] | None
    trainer_state: dict | None
    path: Path


# -- saving -------------------------------------------------------------------------------------
def save_checkpoint(directory: str | Path, model: RNNLM, tokenizer: Tokenizer, *,
                    extra_config: dict | None = None,
                    trainer_tensors: dict[str, Tensor] | None = None,
                    trainer_state: dict | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` (and trainer state) atomically to ``directory``.

    Args:
        directory: the checkpoint directory; replaced as a whole if it exists.
        model: the model; its ``config`` is saved under ``"model"``.
        tokenizer: the tokenizer; its state goes to vocab.json (and tokenizer.json for BPE).
        extra_config: more JSON sections for config.json, e.g. ``{"data": ..., "train": ...}``.
        trainer_tensors: tensors to restore training (written to trainer.safetensors).
        trainer_state: JSON data to restore training (written to trainer.json).

    Returns:
        The checkpoint directory.

    Raises:
        ConfigError: ``extra_config`` reuses a reserved key or is not JSON-serialisable.
        CheckpointError: writing failed; the previous checkpoint, if any, is left intact.
    """
    files = _serialise(model, tokenizer, extra_config, trainer_tensors, trainer_state)
    target = Path(directory)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create {target.parent}: {exc}; choose a writable "
                              "directory") from exc
    had_previous = target.exists() or atomic.old_sibling(target).exists()
    tmp = None
    try:
        tmp = atomic.temp_sibling(target)
        for name, data in files.items():
            atomic.write_durably(tmp / name, data)
        atomic.swap_into_place(tmp, target)
    except OSError as exc:
        if tmp is not None:
            atomic.abandon(tmp, target)
        kept = ("the previous checkpoint there is intact" if had_previous
                else "nothing was written")
        raise CheckpointError(f"could not write checkpoint {target}: {exc}; {kept} — free disk "
                              "space or choose another directory and save again") from exc
    return target


def _serialise(model, tokenizer, extra_config, trainer_tensors, trainer_state) -> dict:
    """Every file's bytes, built before touching the disk so bad input writes nothing."""
    extra = dict(extra_config or {})
    reserved = {"format_version", "model"} & extra.keys()
    if reserved:
        raise ConfigError(f"extra_config may not set {sorted(reserved)}: seqlm writes them")
    state = dict(tokenizer.state())
    bpe_model = state.pop("bpe_model", None)
    config = {"format_version": FORMAT_VERSION, "model": asdict(model.config), **extra}
    files = {MODEL_FILE: _tensors_bytes(model.state_dict()),
             CONFIG_FILE: _json_bytes(config, CONFIG_FILE),
             VOCAB_FILE: _json_bytes(state, VOCAB_FILE)}
    if bpe_model is not None:
        files[BPE_FILE] = bpe_model.encode("utf-8")
    if trainer_tensors is not None:
        files[TRAINER_TENSORS_FILE] = _tensors_bytes(trainer_tensors)
    if trainer_state is not None:
        files[TRAINER_STATE_FILE] = _json_bytes(trainer_state, TRAINER_STATE_FILE)
    return files


def _json_bytes(data: dict, name: str) -> bytes:
    try:
        return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: the data to save is not plain JSON ({exc}); pass only "
                          "str, numbers, bools, None, lists and dicts") from exc


def _tensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    """safetensors bytes; tensors sharing memory (tied weights) are stored once."""
    stored: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape),
               tensor.stride())
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = tensor.detach().to("cpu").contiguous()
    metadata = {ALIASES_KEY: json.dumps(aliases)} if aliases else None
    return safetensors.torch.save(stored, metadata=metadata)


# -- loading ------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """Find the checkpoint in ``path``: itself, or a run's checkpoints/best then .../last.

    A directory counts as a checkpoint when it holds config.json, or when it is missing but
    its ``.<name>.old`` sibling (left by an interrupted save) holds one.

    Raises:
        CheckpointError: neither a checkpoint nor a run directory with one.
    """
    path = Path(path)
    run_dir = (path / "checkpoints").is_dir()  # a run also has a config.json of its own
    inner = (path / "checkpoints" / "best", path / "checkpoints" / "last")
    for candidate in (*inner, path) if run_dir else (path, *inner):
        found = _readable(candidate)
        if found is not None:
            return found
    raise CheckpointError(f"{path} is neither a checkpoint directory (with {CONFIG_FILE}) nor a "
                          "run directory (with checkpoints/best or checkpoints/last); pass one")


def _readable(candidate: Path) -> Path | None:
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    old = atomic.old_sibling(candidate)
    if not candidate.exists() and (old / CONFIG_FILE).is_file():
        return old
    return None


def load_checkpoint(directory: str | Path, *,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint (or a run directory's best/last one) without unpickling anything.

    Args:
        directory: a checkpoint or run directory (see :func:`resolve_checkpoint`).
        device: where to put the model: ``'cpu'``, ``'cuda'``, ``'auto'``, ... Weights saved
            on a GPU load anywhere.

    Returns:
        A :class:`Checkpoint`.

    Raises:
        CheckpointError: a file is missing, truncated, malformed, from an unknown format
            version, or disagrees with another file; the message names the file.
        ConfigError: ``device`` is not available.
    """
    path = resolve_checkpoint(directory)
    device = resolve_device(device)
    config = _read_json(path / CONFIG_FILE)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path / CONFIG_FILE}: format_version {version!r} is not one this "
                              f"seqlm reads ({FORMAT_VERSION}); use the seqlm that wrote it")
    model = _build_model(path, config.get("model"))
    weights = _read_tensors(path / MODEL_FILE)
    _load_weights(model, weights, path)
    tokenizer = _read_tokenizer(path, model.config.vocab_size)
    trainer_tensors = (_read_tensors(path / TRAINER_TENSORS_FILE)
                       if (path / TRAINER_TENSORS_FILE).exists() else None)
    trainer_state = (_read_json(path / TRAINER_STATE_FILE)
                     if (path / TRAINER_STATE_FILE).exists() else None)
    return Checkpoint(model.to(device).eval(), tokenizer, config, trainer_tensors,
                      trainer_state, path)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete — save it again "
                              "or point to another checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} cannot be read as JSON ({exc}); the checkpoint is "
                              "corrupt — save it again") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds {type(data).__name__}, not a JSON object; the "
                              "checkpoint is corrupt — save it again")
    return data


def _build_model(path: Path, fields: object) -> RNNLM:
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path / CONFIG_FILE} has no \"model\" section; the checkpoint "
                              "is corrupt — save it again")
    try:
        return RNNLM(ModelConfig(**fields))
    except (TypeError, SeqlmError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: the \"model\" section is invalid ({exc}); "
                              "fix the field or save the checkpoint again") from exc


def _check_header(file: Path) -> None:
    """Reject a safetensors file whose header is oversized, malformed or points past the end."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            header = handle.read(n) if n is not None and n <= MAX_HEADER_BYTES else b""
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete — save it "
                              "again") from None
    problem = None
    if n is None:
        problem = f"it is {size} bytes, shorter than a safetensors header"
    elif n > MAX_HEADER_BYTES:
        problem = f"its header claims {n} bytes (limit {MAX_HEADER_BYTES})"
    elif len(header) < n:
        problem = "it ends inside its header (truncated)"
    else:
        try:
            entries = json.loads(header)
            ends = [e["data_offsets"][1] for k, e in entries.items() if k != "__metadata__"]
            if not all(type(x) is int for x in ends):  # noqa: E721 - bools are not offsets
                raise TypeError("data_offsets must be integers")
            end = max(ends, default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            entries, end, problem = None, 0, f"its header is not valid safetensors JSON ({exc})"
        if problem is None and 8 + n + end > size:
            problem = f"it is {size} bytes but its header needs {8 + n + end} (truncated)"
    if problem:
        raise CheckpointError(f"{file}: {problem}; the file is corrupt — save the checkpoint "
                              "again or use another one")


def _read_tensors(file: Path) -> dict[str, Tensor]:
    _check_header(file)
    try:
        with safetensors.safe_open(str(file), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata() or {}
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
        for alias, stored in aliases.items():
            tensors[alias] = tensors[stored]
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"{file} cannot be read ({exc}); the file is corrupt — save the "
                              "checkpoint again or use another one") from exc
    return tensors


def _load_weights(model: RNNLM, weights: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    wrong = [f"{k} {tuple(weights[k].shape)} (config.json implies {tuple(v.shape)})"
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(unexpected)}" if unexpected else "",
            f"wrong shape {', '.join(wrong)}" if wrong else ""]))
        raise CheckpointError(f"{path / MODEL_FILE} does not match {path / CONFIG_FILE}: "
                              f"{detail}; the files come from different models — save the "
                              "checkpoint again")
    dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # keep the saved precision (float64 stays float64)
    model.load_state_dict(weights)


def _read_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    state = _read_json(path / VOCAB_FILE)
    if state.get("kind") == "bpe":
        try:
            state["bpe_model"] = (path / BPE_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path / BPE_FILE} cannot be read ({exc}); a BPE checkpoint "
                                  "needs it — save the checkpoint again") from exc
    try:
        tokenizer = tokenizer_from_state(state)
    except (SeqlmError, ValueError, TypeError, KeyError) as exc:
        what = (f"{path / VOCAB_FILE} and {BPE_FILE} do" if "bpe_model" in state
                else f"{path / VOCAB_FILE} does")
        raise CheckpointError(f"{what} not describe a tokenizer ({exc}); save the checkpoint "
                              "again") from exc
    if len(tokenizer.vocab) != vocab_size:
        raise CheckpointError(f"{path / VOCAB_FILE} has {len(tokenizer.vocab)} tokens but "
                              f"{path / CONFIG_FILE} says vocab_size={vocab_size}; the files "
                              "come from different runs — save the checkpoint again")
    return tokenizer
