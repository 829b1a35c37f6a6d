"""Typed configuration: data, model and training dataclasses, presets, TOML files.

Each field carries one help string (``metadata["help"]``) and, where it has a fixed set of
values, its ``choices``; the command line is generated from these fields. Values are
validated in ``__post_init__`` and a bad one raises :class:`~seqlm.errors.ConfigError`
naming the flag, the value and what is allowed.

Precedence, lowest first: field defaults < ``--preset`` < ``--config file.toml`` < flags.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from seqlm.errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def opt(default, help: str, choices: tuple | None = None):
    """A dataclass field with its command-line help and allowed values."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{flag(name)} must be {rule}, got {value!r}")


def check_choices(obj) -> None:
    """Raises ConfigError for any field whose value is not among its ``choices``."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices and value not in choices:
            raise ConfigError(f"unknown {flag(f.name)} {value!r}; choose one of "
                              f"{', '.join(map(str, choices))}")


@dataclass
class DataConfig:
    """Where the text comes from, how it becomes tokens, and how minibatches are cut."""

    corpus: str = opt("builtin", "text file, directory of .txt files, '-' for stdin, a prepared "
                      "corpus directory, or a name: builtin, python-source, timemachine, "
                      "tinyshakespeare")
    encoding: str = opt("utf-8", "text encoding of the corpus files")
    clean: str = opt("none", "none; lower; letters = the chapter's letters-only lowercase text",
                     ("none", "lower", "letters"))
    tokenizer: str = opt("char", "token unit", ("char", "word", "bpe"))
    min_freq: int = opt(1, "tokens seen fewer times in the training split map to <unk>")
    max_vocab: int | None = opt(None, "largest vocabulary, <unk> and reserved tokens included")
    vocab_size: int = opt(2000, "target vocabulary size of the bpe tokenizer")
    keep_newlines: bool = opt(False, "word tokenizer: keep newlines as a token")
    split: str = opt("0.9,0.05,0.05", "train,validation,test fractions of the text (contiguous)")
    max_tokens: int | None = opt(None, "keep only the first N tokens of the training split "
                                 "(the book trains on the first 10000 characters)")
    sampler: str = opt("sequential", "minibatch strategy: sequential partitioning carries the "
                       "hidden state; random sampling resets it", ("sequential", "random"))
    batch_size: int = opt(32, "rows per minibatch")
    num_steps: int = opt(35, "time steps per row (the BPTT window)")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("batch_size", "num_steps", "min_freq", "vocab_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "a positive integer")
        for name in ("max_vocab", "max_tokens"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, value, "a positive integer")
        self.split_fractions()

    def split_fractions(self) -> tuple[float, float, float]:
        try:
            parts = tuple(float(x) for x in self.split.split(","))
        except ValueError:
            parts = ()
        ok = (len(parts) == 3 and all(0 <= p <= 1 for p in parts) and parts[0] > 0
              and abs(sum(parts) - 1) < 1e-6)
        _check(ok, "split", self.split, "three fractions train,val,test summing to 1 with "
               "train > 0 (e.g. 0.9,0.05,0.05)")
        return parts

    def tokenizer_options(self) -> dict:
        options = {"min_freq": self.min_freq, "max_size": self.max_vocab}
        if self.tokenizer == "word":
            options["keep_newlines"] = self.keep_newlines
        if self.tokenizer == "bpe":
            options["vocab_size"] = self.vocab_size
            options["min_freq"] = max(self.min_freq, 2)
        return options


DEFAULT_TIME_BUDGET = 150.0  # seconds: the main job's budget when no other budget is given
# Patience, in evaluations. The default run on builtin (cpu-fast, 95 s, an evaluation every 250
# steps) had its best validation loss at step ~750 of 2,457 and none better in the 7
# evaluations after it (final 3.864 against the best 3.81); 5 evaluations (1,250 steps, half
# that run) without a new best end such a run early, while a run that still improves at all
# (any new best resets the count) goes on. The book's presets keep no patience.
DEFAULT_PATIENCE = 5


@dataclass
class TrainConfig:
    """The optimisation: optimizer, schedule, clipping, budgets, evaluation and logging."""

    optimizer: str = opt("adam", "sgd is the book's (lr 1)", ("sgd", "adam", "adamw"))
    lr: float = opt(3e-3, "peak learning rate")
    weight_decay: float = opt(0.0, "L2 penalty (decoupled for adamw)")
    schedule: str = opt("cosine", "constant; cosine with linear warm-up; plateau divides the lr "
                        "by 4 when validation stops improving", ("constant", "cosine", "plateau"))
    warmup_steps: int = opt(0, "linear warm-up steps of the cosine schedule")
    min_lr_ratio: float = opt(0.1, "cosine schedule: final lr as a fraction of the peak")
    clip: float = opt(1.0, "clip the global gradient L2 norm to this (the book's 1); 0 = off")
    epochs: int | None = opt(None, "stop after this many epochs")
    max_steps: int | None = opt(None, "stop after this many optimizer steps")
    time_budget: float | None = opt(None, "stop after this many seconds of training")
    eval_every: int = opt(200, "evaluate on the validation split every N steps (0 = at the end)")
    early_stopping: int | None = opt(DEFAULT_PATIENCE, "stop after N evaluations in a row without a new best "
                                     "validation loss (none = never)")
    log_every: int = opt(20, "write a metrics record every N steps")
    guard_retries: int = opt(3, "divergence guard: blow-ups (a loss or gradient norm far above "
                             "its running level, or NaN) it recovers from by going back to "
                             "its last snapshot at a lower lr; 0 = off")
    guard_every: int = opt(100, "divergence guard: steps between its in-memory snapshots")
    guard_lr_factor: float = opt(0.5, "divergence guard: lr multiplier at each recovery")
    seed: int = opt(0, "seed of every random choice: init, offsets, shuffles, dropout, samples")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = opt("float32", "bfloat16 = bfloat16 autocast (CUDA, or CPU where it helps)",
                     ("float32", "bfloat16"))
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice)")
    sample_prefix: str | None = opt(None, "prefix of the sample printed at each evaluation")
    sample_tokens: int = opt(80, "tokens generated for that sample (0 = none)")
    sample_temperature: float = opt(0.7, "temperature of that sample (0 = greedy, the book's)")

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.clip >= 0 and math.isfinite(self.clip), "clip", self.clip, ">= 0 (0 = off)")
        _check(0 < self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "in (0, 1]")
        for name in ("warmup_steps", "eval_every", "sample_tokens"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _check(self.log_every >= 1, "log_every", self.log_every, "a positive integer")
        _check(self.guard_retries >= 0, "guard_retries", self.guard_retries, ">= 0 (0 = off)")
        _check(self.guard_every >= 1, "guard_every", self.guard_every, "a positive integer")
        _check(0 < self.guard_lr_factor < 1, "guard_lr_factor", self.guard_lr_factor,
               "in (0, 1)")
        for name in ("epochs", "max_steps", "early_stopping", "threads"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, value, "a positive integer")
        _check(self.sample_temperature >= 0, "sample_temperature", self.sample_temperature,
               ">= 0")
        if self.epochs is None and self.max_steps is None and self.time_budget is None:
            self.time_budget = DEFAULT_TIME_BUDGET
        budget = self.time_budget
        _check(budget is None or (budget > 0 and math.isfinite(budget)), "time_budget", budget,
               "a positive number of seconds")


PRESETS: dict[str, dict] = {
    # The book's three experiments (d2l-zh 2.0 §8.5/8.6): The Time Machine, letters only,
    # char tokens, the first 10,000 tokens, batch 32 × 35 steps, SGD lr 1, clip 1, 500 epochs.
    "d2l-scratch": {
        "corpus": "timemachine", "clean": "letters", "tokenizer": "char", "max_tokens": 10000,
        "sampler": "sequential", "batch_size": 32, "num_steps": 35,
        "cell": "rnn", "impl": "scratch", "hidden_size": 512, "embedding_dim": None,
        "init": "d2l", "optimizer": "sgd", "lr": 1.0, "clip": 1.0, "schedule": "constant",
        "epochs": 500, "eval_every": 0, "sample_prefix": "time traveller", "sample_tokens": 50,
        "sample_temperature": 0.0, "log_every": 8, "early_stopping": None,
    },
}
# Recipes for a CPU budget, chosen with benchmarks/quality.py (docs/quality.md has the table of
# what was tried). Many small steps win at these budgets: a GRU (faster per token than the
# LSTM and better at equal time) on the fastest core for the device (impl and bptt_engine
# 'auto': the hand-written BPTT on the CPU, cuDNN on a GPU), 64 rows x 32 steps, Adam at a high
# peak lr with a cosine that ends with the time budget.
PRESETS["cpu-fast"] = {
    "cell": "gru", "impl": "auto", "bptt_engine": "auto", "hidden_size": 384, "num_layers": 1, "embedding_dim": 64,
    "dropout": 0.0, "tie_weights": False, "sampler": "sequential", "batch_size": 64,
    "num_steps": 32, "truncation": "window", "optimizer": "adam", "lr": 5e-3,
    "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 50, "min_lr_ratio": 0.1,
    "clip": 1.0, "time_budget": 95.0, "eval_every": 250,
}
PRESETS["cpu-quality"] = {**PRESETS["cpu-fast"], "hidden_size": 512, "dropout": 0.2,
                          "time_budget": 540.0, "eval_every": 500}
PRESETS["d2l-scratch-random"] = {**PRESETS["d2l-scratch"], "sampler": "random"}
PRESETS["d2l-concise"] = {**PRESETS["d2l-scratch"], "impl": "fused", "hidden_size": 256,
                          "init": "torch"}
BOOK_PERPLEXITY = {"d2l-scratch": 1.0, "d2l-scratch-random": 1.5, "d2l-concise": 1.3}


def field_types(cls) -> dict[str, type]:
    """Each field's base type (``int | None`` → ``int``) for parsing flags and TOML values."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


def optional_fields(cls) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {n for n, h in hints.items() if type(None) in typing.get_args(h)}


def split_overrides(values: dict, classes: dict[str, type],
                    skip: dict[str, set[str]] | None = None) -> dict[str, dict]:
    """Routes flat ``name → value`` pairs to the config class that owns each name
    (``skip`` removes names from a class's ownership).

    Raises:
        ConfigError: a name no config has, or a value of the wrong type.
    """
    skip = skip or {}
    owners = {f.name: key for key, cls in classes.items() for f in dataclasses.fields(cls)
              if f.name not in skip.get(key, ())}
    out: dict[str, dict] = {key: {} for key in classes}
    for name, value in values.items():
        if name not in owners:
            raise ConfigError(f"unknown setting {name!r}; see seqlm train --help for the names")
        cls = classes[owners[name]]
        out[owners[name]][name] = coerce(cls, name, value)
    return out


def coerce(cls, name: str, value):
    """Checks a TOML or preset value against the field's type (ints accepted for floats)."""
    kind = field_types(cls)[name]
    if value is None and name in optional_fields(cls):
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"setting {name!r} must be {kind.__name__}, got "
                          f"{type(value).__name__} {value!r}")
    return value


def read_toml(path: str | Path) -> dict:
    """Reads a config file: flat ``name = value`` pairs, or the same inside ``[data]``,
    ``[model]`` and ``[train]`` tables.

    Raises:
        ConfigError: the file is missing or not valid TOML.
    """
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc}); fix the file") from None
    flat: dict = {}
    for key, value in raw.items():
        if key in ("data", "model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
