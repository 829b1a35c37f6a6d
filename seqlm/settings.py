"""The one home of a run's settings: a preset, a TOML file and the caller's own choices become
the data, model and training configs (:func:`resolve`); a saved run's config.json becomes them
again (:func:`saved`), with only its budgets changed on resume (:func:`resume_budgets`).

Every front end goes through here: ``seqlm train`` and ``seqlm.train``, the chapter's
exercises, the benchmarks and ``--resume``. Settings are flat ``name -> value`` maps; each
name belongs to the config class that has a field of that name (:func:`route`).

Precedence, lowest first: field defaults < preset < config file < the caller's choices. A
budget among the file's or the caller's settings (:data:`~seqlm.config.BUDGETS`) replaces all
of the preset's budgets, and a name the caller chose leaves the preset's ``adapt`` list
(:func:`merge_choices`), so the adaptive recipe never changes what the user set.

The model's ``vocab_size`` is not a setting: it comes from the corpus's vocabulary.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from seqlm.config import BUDGETS, DataConfig, ModelConfig, TrainConfig
from seqlm.errors import ConfigError
from seqlm.presets import DEFAULT_PRESET, preset

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
FROM_CORPUS = "vocab_size"  # ModelConfig's V: the corpus's vocabulary decides it
# What --resume may change: the budgets and the patience; anything else must match the run.
RESUMABLE = (*BUDGETS, "early_stopping")
# Names saved by earlier versions: DataConfig.vocab_size was the BPE target.
RENAMED = {"data": {"vocab_size": "bpe_vocab_size"}}


@dataclass
class Settings:
    """A run's settings, validated: the data and training configs, and the model's fields
    (all but ``vocab_size``, which :meth:`model_config` takes from the corpus)."""

    data: DataConfig
    model: dict[str, Any]
    train: TrainConfig

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, **self.model)


def resolve(preset_name: str | None = None, config: str | Path | None = None,
            choices: Mapping[str, Any] | None = None, *,
            fixed: Mapping[str, Any] | None = None) -> Settings:
    """Defaults < preset ``preset_name`` (:data:`~seqlm.presets.DEFAULT_PRESET` when None) <
    the TOML file ``config`` < ``choices``, validated before any data is read.

    Args:
        preset_name: a name in :data:`~seqlm.presets.PRESETS`.
        config: a settings file (:func:`read_toml`).
        choices: the caller's own settings.
        fixed: settings a harness imposes last (a benchmark's protocol: its corpus, budget and
            threads); unlike ``choices`` they do not leave the preset's ``adapt`` list.

    Raises:
        ConfigError: an unknown name, a value of the wrong type or out of range, an unknown
            preset or an unreadable file.
    """
    chosen = read_toml(config) if config else {}
    chosen.update(choices or {})
    values = preset(preset_name or DEFAULT_PRESET)
    if any(name in chosen for name in BUDGETS):  # the user's budget replaces the preset's
        values = {k: v for k, v in values.items() if k not in BUDGETS}
    values = {**merge_choices(values, chosen), **(fixed or {})}
    return _validated(route(values))


def saved(configs: Mapping[str, Any], budgets: Mapping[str, Any] | None = None) -> Settings:
    """The settings of a saved run (its config.json, or a checkpoint's), names from earlier
    versions read under their new names (:data:`RENAMED`) and training settings this version
    does not know dropped. ``budgets`` (from :func:`resume_budgets`) change the saved ones;
    as on a start, a budget among them replaces all of the saved budgets.

    Raises:
        ConfigError: a saved value this version refuses.
    """
    sections = {}
    for name, cls in SECTIONS.items():
        values = dict(configs.get(name) or {})
        for old, new in RENAMED.get(name, {}).items():
            if old in values:
                values.setdefault(new, values.pop(old))
        known = {f.name for f in dataclasses.fields(cls)}
        sections[name] = {k: v for k, v in values.items() if k in known}
    sections["model"].pop(FROM_CORPUS, None)
    if any(name in (budgets or {}) for name in BUDGETS):  # as on a start: a budget given
        sections["train"].update(dict.fromkeys(BUDGETS))  # replaces all the saved ones
    sections["train"].update(budgets or {})
    return _validated(sections)


def resume_budgets(configs: Mapping[str, Any], given: Mapping[str, Any]) -> dict:
    """The settings given for a resume of the run saved as ``configs``: only
    :data:`RESUMABLE` ones may change; the others must repeat the saved values.

    Raises:
        ConfigError: a setting contradicts the saved run.
    """
    allowed = ", ".join(f"`{name}`" for name in RESUMABLE)
    for name, value in given.items():
        if name in RESUMABLE:
            continue
        for section in SECTIONS:
            old = (configs.get(section) or {}).get(name, value)
            if old != value:
                raise ConfigError(f"`{name}` {value} contradicts the saved run ({old}); only "
                                  f"{allowed} may change on `resume`; start a new run for "
                                  "other settings")
    return {k: v for k, v in given.items() if k in RESUMABLE}


def _validated(sections: dict[str, dict]) -> Settings:
    model = {k: v for k, v in sections["model"].items() if k != FROM_CORPUS}
    # Validate now with a vocabulary larger than any (the corpus sets vocab_size; cutoffs
    # are checked against it once it is known).
    ModelConfig(vocab_size=1 << 40, **model)
    return Settings(DataConfig(**sections["data"]), model, TrainConfig(**sections["train"]))


def merge_choices(values: dict, chosen: Mapping[str, Any]) -> dict:
    """A preset's ``values`` updated with the user's ``chosen`` settings; a name the user chose
    leaves the preset's ``adapt`` list, so the recipe never changes what the user set."""
    out = {**values, **chosen}
    if out.get("adapt") and "adapt" not in chosen:
        out["adapt"] = ",".join(n for n in out["adapt"].split(",") if n and n not in chosen)
    return out


def route(values: Mapping[str, Any]) -> dict[str, dict]:
    """Routes flat ``name -> value`` pairs to the config class that owns each name
    (:data:`SECTIONS`), checking each value's type.

    Raises:
        ConfigError: ``vocab_size`` (the corpus decides it), a name no config has, or a value
            of the wrong type.
    """
    owners = {f.name: key for key, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    out: dict[str, dict] = {key: {} for key in SECTIONS}
    for name, value in values.items():
        if name == FROM_CORPUS:
            raise ConfigError("`vocab_size` is not a setting: the model's vocabulary comes "
                              "from the corpus; cap it with `max_vocab`, or set the BPE "
                              "tokenizer's target with `bpe_vocab_size`")
        if name not in owners:
            raise ConfigError(f"unknown setting {name!r}; see seqlm train --help for the names")
        out[owners[name]][name] = coerce(SECTIONS[owners[name]], name, value)
    return out


def field_types(cls) -> dict[str, type]:
    """Each field's base type (``int | None`` -> ``int``) for parsing flags and TOML values."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


def optional_fields(cls) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {n for n, h in hints.items() if type(None) in typing.get_args(h)}


def coerce(cls, name: str, value):
    """Checks a TOML, preset or keyword value against the field's type (ints accepted for
    floats).

    Raises:
        ConfigError: the value has another type.
    """
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
    ``[model]`` and ``[train]`` tables (``vocab_size`` in ``[data]``, the BPE target's name
    before 0.2, is read as ``bpe_vocab_size`` with a warning).

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
        if key in SECTIONS and isinstance(value, dict):
            for old, new in RENAMED.get(key, {}).items():
                if old in value:
                    warnings.warn(f"{path}: [{key}] `{old}` is now `{new}`; rename it",
                                  DeprecationWarning, stacklevel=2)
                    value = {(new if k == old else k): v for k, v in value.items()}
            flat.update(value)
        else:
            flat[key] = value
    return flat
