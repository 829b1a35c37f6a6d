"""Where settings come from besides flags: named recipes (``--preset``) and TOML config files
(``--config``), both flat ``setting -> value`` maps routed to the config class that owns each
name, and the book's printed perplexities the book's recipes are compared with."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from seqlm.errors import ConfigError, choice_error

PRESETS: dict[str, dict] = {
    # The book's three experiments (d2l-zh 2.0 §8.5/8.6): The Time Machine, letters only,
    # char tokens, the first 10,000 tokens, batch 32 × 35 steps, SGD lr 1, clip 1, 500 epochs.
    # No patience and no divergence guard: the book's fixed epochs, and its blow-ups stay
    # visible (the clipping exercise shows one).
    "d2l-scratch": {
        "corpus": "timemachine", "clean": "letters", "tokenizer": "char", "max_tokens": 10000,
        "sampler": "sequential", "batch_size": 32, "num_steps": 35,
        "cell": "rnn", "impl": "scratch", "hidden_size": 512, "embedding_dim": None,
        "init": "d2l", "optimizer": "sgd", "lr": 1.0, "clip": 1.0, "schedule": "constant",
        "epochs": 500, "eval_every": 0, "sample_prefix": "time traveller", "sample_tokens": 50,
        "sample_temperature": 0.0, "log_every": 8, "early_stopping": None, "guard_retries": 0,
    },
}
# Recipes for a CPU budget, chosen with benchmarks/quality.py (docs/quality.md has the table of
# what was tried). Many small steps win at these budgets: a GRU (faster per token than the
# LSTM and better at equal time) on the fastest core for the device (impl and bptt_engine
# 'auto': the hand-written BPTT on the CPU, cuDNN on a GPU), 64 rows x 32 steps, Adam at a high
# peak lr with a cosine that ends with the time budget. cpu-quality's longer budget anneals
# deeper, to 1 % of the peak (at 9 minutes it won on five matrix rows of seven), and decays
# the weights (AdamW, 0.3: at 9 minutes 0.01-0.2 nats on the four rows measured; a tie at 95 s).
PRESETS["cpu-fast"] = {
    "cell": "gru", "impl": "auto", "bptt_engine": "auto", "hidden_size": 384, "num_layers": 1, "embedding_dim": 64,
    "dropout": 0.0, "tie_weights": False, "sampler": "sequential", "batch_size": 64,
    "num_steps": 32, "truncation": "window", "optimizer": "adam", "lr": 5e-3,
    "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 50, "min_lr_ratio": 0.1,
    "clip": 1.0, "time_budget": 95.0, "eval_every": 250,
    "adapt": "dropout,embedding_dim,eval_every,num_layers",  # seqlm.recipe chooses these
}
PRESETS["cpu-quality"] = {**PRESETS["cpu-fast"], "hidden_size": 512, "dropout": 0.2,
                          "optimizer": "adamw", "weight_decay": 0.3, "min_lr_ratio": 0.01,
                          "time_budget": 540.0, "eval_every": 500}
PRESETS["d2l-scratch-random"] = {**PRESETS["d2l-scratch"], "sampler": "random"}
PRESETS["d2l-concise"] = {**PRESETS["d2l-scratch"], "impl": "fused", "hidden_size": 256,
                          "init": "torch"}
BOOK_PERPLEXITY = {"d2l-scratch": 1.0, "d2l-scratch-random": 1.5, "d2l-concise": 1.3}



def preset(name: str) -> dict:
    """A copy of the named recipe's settings.

    Raises:
        ConfigError: no recipe has that name.
    """
    if name not in PRESETS:
        raise choice_error("preset", name, tuple(PRESETS))
    return dict(PRESETS[name])


def merge_choices(values: dict, chosen: dict) -> dict:
    """A preset's ``values`` updated with the user's ``chosen`` settings; a name the user chose
    leaves the preset's ``adapt`` list, so the recipe never changes what the user set."""
    out = {**values, **chosen}
    if out.get("adapt") and "adapt" not in chosen:
        out["adapt"] = ",".join(n for n in out["adapt"].split(",") if n and n not in chosen)
    return out


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
        raise ConfigError(f"`config` {path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"`config` {path}: not valid TOML ({exc}); fix the file") from None
    flat: dict = {}
    for key, value in raw.items():
        if key in ("data", "model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat
