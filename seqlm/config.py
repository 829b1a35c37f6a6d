"""Typed configuration: the data, model and training dataclasses.

Each field carries one help string (``metadata["help"]``) and, where it has a fixed set of
values, its ``choices``; the command line is generated from these fields and takes its defaults
from them. Values are validated in ``__post_init__``; a bad one raises
:class:`~seqlm.errors.ConfigError` naming the field and the value (the command line prints the
field as its flag). :mod:`seqlm.settings` turns a preset, a settings file and the caller's
choices into these configs; the named presets live in :mod:`seqlm.presets`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace

from seqlm.cores import (BPTT_ENGINES, CELLS, IMPLS, INITS, MIN_CELLS, NONLINEARITIES, WINDOWED,
                         check_core)
from seqlm.errors import ConfigError, check_choice, check_positive_int, field_error

REQUIRED = dataclasses.MISSING  # opt(REQUIRED, ...): a field without a default

OUTPUTS = ("auto", "full", "adaptive")
ADAPTABLE = ("dropout", "embedding_dim", "eval_every", "num_layers", "threads")  # the recipe's
BUDGETS = ("epochs", "max_steps", "time_budget")  # one given replaces all of a preset's
# Reading with a model that keeps learning (seqlm.reading, docs/reading.md):
DYNAMIC_RULES = ("rms", "sgd")  # dynamic evaluation's update rules (seqlm.dynamic_eval)
DYNAMIC_SEGMENT = 20  # tokens read between two updates: Krause et al.'s short segments
READING_ROWS = 1  # rows read side by side: one stream, the whole history in one cache
# Sampling temperature wherever text is generated: 0.8 keeps the likely continuations yet
# varies; 0 is the book's greedy argmax, which soon repeats itself.
DEFAULT_TEMPERATURE = 0.8


def opt(default, help: str, choices: tuple | None = None):
    """A dataclass field with its command-line help and allowed values."""
    meta = {"help": help}
    if choices:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


def _check(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise field_error(name, value, rule)


def check_choices(obj) -> None:
    """Raises ConfigError for any field of ``obj`` whose value is not among its ``choices``."""
    for f in dataclasses.fields(obj):
        if f.metadata.get("choices"):
            check_choice(f.name, getattr(obj, f.name), f.metadata["choices"])


@dataclass
class DataConfig:
    """Where the text comes from, how it becomes tokens, and how minibatches are cut."""

    corpus: str = opt("builtin", "text file, directory of .txt files, '-' for stdin, a prepared "
                      "corpus directory, or a name: builtin, python-source, timemachine, "
                      "tinyshakespeare")
    encoding: str = opt("utf-8", "text encoding of the corpus files")
    clean: str = opt("none", "none; lower; letters = the chapter's letters-only lowercase text; "
                     "gutenberg = the books without Project Gutenberg's headers and licences",
                     ("none", "lower", "letters", "gutenberg"))
    tokenizer: str = opt("char", "token unit", ("char", "word", "bpe"))
    min_freq: int = opt(1, "tokens seen fewer times in the training split map to <unk>")
    max_vocab: int | None = opt(None, "largest vocabulary, <unk> and reserved tokens included")
    bpe_vocab_size: int = opt(2000, "bpe tokenizer: the vocabulary size its merges aim for")
    keep_newlines: bool = opt(False, "word tokenizer: keep newlines as a token")
    split: str = opt("0.9,0.05,0.05", "train,validation,test fractions of the text (contiguous)")
    max_tokens: int | None = opt(None, "keep only the first N tokens of the training split "
                                 "(the book trains on the first 10000 characters)")
    sampler: str = opt("sequential", "sequential partitioning carries the hidden state; d2l's "
                       "random, random-start reset it", ("sequential", "random", "random-start"))
    batch_size: int = opt(32, "rows per minibatch")
    num_steps: int = opt(35, "time steps per row (the BPTT window)")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("batch_size", "num_steps", "min_freq", "bpe_vocab_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_vocab", "max_tokens"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
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
            options["vocab_size"] = self.bpe_vocab_size
            options["min_freq"] = max(self.min_freq, 2)
        return options


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`~seqlm.models.RNNLM` (saved in every checkpoint).

    Raises:
        ConfigError: from ``__post_init__``, naming the field and the value it cannot use.
    """

    vocab_size: int = opt(REQUIRED, "number of token ids V (set from the vocabulary)")
    cell: str = opt("rnn", "recurrent cell (mingru/minlstm: docs/minrnn.md)", CELLS)
    impl: str = opt("scratch", "'scratch': the chapter's equations in Python; 'fused': torch's "
                    "cuDNN/MKL kernels; 'auto': the faster one measured for the cell and device "
                    "(ModelConfig.resolve)", (*IMPLS, "auto"))
    hidden_size: int = opt(256, "hidden units H per layer")
    num_layers: int = opt(1, "stacked recurrent layers L")
    embedding_dim: int | None = opt(None, "learned embedding size E; None feeds the chapter's "
                                    "one-hot vectors")
    dropout: float = opt(0.0, "dropout probability on embeddings, between layers and before the "
                         "decoder, in [0, 1)")
    tie_weights: bool = opt(False, "share the embedding matrix with the decoder (needs "
                            "embedding_dim == hidden_size)")
    nonlinearity: str = opt("tanh", "activation of the plain RNN cell", NONLINEARITIES)
    init: str = opt("torch", "'torch': U(-1/sqrt(H), 1/sqrt(H)); 'd2l': the book's "
                    "N(0, 0.01^2) weights, zero biases", INITS)
    bptt_engine: str = opt("autograd", "'manual' runs the hand-written backward pass (impl "
                           "scratch; cell rnn, mingru, minlstm, or gru with truncation "
                           "window/full); 'auto': manual where it exists (mingru/minlstm: on "
                           "the CPU), else autograd",
                           (*BPTT_ENGINES, "auto"))
    truncation: str = opt("window", "BPTT truncation: 'window', 'full', 'tau:K' or 'random:P' "
                          "(the last two: impl scratch)")
    output: str = opt("auto", "output layer: 'full' H x V decoder; 'adaptive' softmax over "
                      "frequency clusters (exact probabilities, for large vocabularies); 'auto': "
                      "adaptive when the full decoder would outweigh the recurrent core",
                      OUTPUTS)
    cutoffs: str = opt("", "adaptive softmax cluster boundaries as frequency ranks, e.g. "
                       "'800,2200'; empty: from the training counts")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers"):
            check_positive_int(name, getattr(self, name))
        if self.embedding_dim is not None:
            check_positive_int("embedding_dim", self.embedding_dim)
        check_choices(self)
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            raise ConfigError(f"`tie_weights` needs embedding_dim == hidden_size, got "
                              f"embedding_dim={self.embedding_dim} hidden_size="
                              f"{self.hidden_size}; set `embedding_dim` to {self.hidden_size}")
        if not isinstance(self.truncation, str):
            raise field_error("truncation", self.truncation, "text such as 'window'")
        self.cutoff_ranks()
        impl, engine = self._concrete("cpu")  # 'auto' is checked as the CPU would run it
        check_core(self.cell, impl, nonlinearity=self.nonlinearity, dropout=self.dropout,
                   init=self.init, bptt_engine=engine, truncation=self.truncation)

    def cutoff_ranks(self) -> tuple[int, ...]:
        """``cutoffs`` as integers (empty: not chosen yet).

        Raises:
            ConfigError: not increasing comma-separated integers in ``[1, vocab_size - 1)``.
        """
        try:
            ranks = tuple(int(p) for p in self.cutoffs.split(",")) if self.cutoffs.strip() else ()
        except (AttributeError, ValueError):
            ranks = (0,)
        ok = not ranks or all(a < b for a, b in zip((0, *ranks), (*ranks, self.vocab_size - 1)))
        _check(ok, "cutoffs", self.cutoffs, f"increasing ranks between 1 and "
               f"{self.vocab_size - 2} (the vocabulary has {self.vocab_size} ids), e.g. "
               f"'{max(1, self.vocab_size // 8)},{max(2, self.vocab_size // 2)}'")
        return ranks

    def resolve(self, device_type: str = "cpu") -> ModelConfig:
        """This configuration with ``impl`` and ``bptt_engine`` 'auto' made concrete for a
        device type (``'cpu'``, ``'cuda'``, ``'mps'``).

        ``impl``: the faster core as measured (docs/performance.md): on the CPU the scratch
        cores with their hand-written BPTT for rnn and gru, torch's fused LSTM; the fused cores
        (cuDNN) elsewhere; always scratch for a truncation other than window/full and for
        mingru/minlstm (their only core).
        ``bptt_engine``: 'manual' where the scratch core has one, else 'autograd'; for
        mingru/minlstm 'manual' (the sequential scan) on the CPU, the parallel scan elsewhere.
        A configuration with neither 'auto' is returned as it is.
        """
        impl, engine = self._concrete(device_type)
        if (impl, engine) == (self.impl, self.bptt_engine):
            return self
        return replace(self, impl=impl, bptt_engine=engine)

    def _concrete(self, device_type: str) -> tuple[str, str]:
        """``(impl, bptt_engine)`` as :meth:`resolve` makes them for ``device_type``."""
        impl, engine = self.impl, self.bptt_engine
        windowed = self.truncation in WINDOWED
        if impl == "auto":
            fused = self.cell not in MIN_CELLS and (device_type != "cpu" or self.cell == "lstm")
            impl = "fused" if fused and windowed else "scratch"
        if engine == "auto":
            has_manual = impl == "scratch" and (self.cell == "rnn" or
                                                (self.cell == "gru" and windowed))
            if self.cell in MIN_CELLS:  # the parallel scan only where steps run in parallel
                has_manual = device_type == "cpu"
            engine = "manual" if has_manual else "autograd"
        return impl, engine


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
    early_stopping: int | None = opt(DEFAULT_PATIENCE, "stop after N evaluations in a row "
                                     "without a new best validation loss (none = never)")
    log_every: int = opt(20, "write a metrics record every N steps")
    guard_retries: int = opt(3, "divergence guard: blow-ups (a loss or gradient norm far above "
                             "its running level, or NaN) it recovers from by going back to "
                             "its last snapshot at a lower lr; 0 = off")
    guard_every: int = opt(100, "divergence guard: steps between its in-memory snapshots")
    guard_lr_factor: float = opt(0.5, "divergence guard: lr multiplier at each recovery")
    adapt: str = opt("", "settings chosen from the measured corpus size, vocabulary and speed "
                     f"(seqlm.recipe), comma-separated, of: {', '.join(ADAPTABLE)}")
    seed: int = opt(0, "seed of every random choice: init, offsets, shuffles, dropout, samples")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = opt("float32", "bfloat16 = bfloat16 autocast (CUDA, or CPU where it helps)",
                     ("float32", "bfloat16"))
    threads: int | None = opt(None, "CPU threads for torch (default: measured and followed "
                                    "by the recipe where it adapts `threads`, as cpu-fast and "
                                    "cpu-quality do; else torch's choice)")
    sample_prefix: str | None = opt(None, "prefix of the sample printed at each evaluation")
    sample_tokens: int = opt(80, "tokens generated for that sample (0 = none)")
    sample_temperature: float = opt(DEFAULT_TEMPERATURE, "temperature of that sample (0 = "
                                    "greedy, the book's)")

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.clip >= 0 and math.isfinite(self.clip), "clip", self.clip, ">= 0 (0 = off)")
        _check(0 < self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "in (0, 1]")
        for name in ("warmup_steps", "eval_every", "sample_tokens"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        check_positive_int("log_every", self.log_every)
        _check(self.guard_retries >= 0, "guard_retries", self.guard_retries, ">= 0 (0 = off)")
        check_positive_int("guard_every", self.guard_every)
        _check(0 < self.guard_lr_factor < 1, "guard_lr_factor", self.guard_lr_factor,
               "in (0, 1)")
        for name in ("epochs", "max_steps", "early_stopping", "threads"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        _check(self.sample_temperature >= 0, "sample_temperature", self.sample_temperature,
               ">= 0")
        _check(all(n in ADAPTABLE for n in self.adapted()), "adapt", self.adapt,
               f"comma-separated names among {', '.join(ADAPTABLE)} (or empty)")
        if self.epochs is None and self.max_steps is None and self.time_budget is None:
            self.time_budget = DEFAULT_TIME_BUDGET
        budget = self.time_budget
        _check(budget is None or (budget > 0 and math.isfinite(budget)), "time_budget", budget,
               "a positive number of seconds")

    def adapted(self) -> tuple[str, ...]:
        """The names in ``adapt``."""
        return tuple(n.strip() for n in str(self.adapt).split(",") if n.strip())
