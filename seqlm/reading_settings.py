"""The settings of the neural cache and of dynamic evaluation: chosen on the validation split,
stored with the run, reused unchanged for every other text; and the evaluation that reports
each figure with the evaluation that produced it.

Choosing (:func:`choose`) reads at most :data:`TUNE_TOKENS` tokens of the validation split:

* cache: one read records p_cache for every θ of :data:`THETAS`; each λ of :data:`LAMBDAS`
  is then a mixture of numbers already there, so the whole grid costs one read;
* dynamic: one read per learning rate of :data:`LRS` (decay :data:`DECAYS` [0]); when the
  best rate is the grid's largest or smallest, the grid goes on past that edge
  (:data:`LR_STEP`, at most :data:`LR_REACH` more reads) while the loss keeps falling; then
  one read per other decay at the best rate. lr 0 (no adaptation) is a candidate too, so
  validation may answer that adapting does not help;
* cache+dynamic: the dynamic settings, and λ, θ chosen on the read of the chosen rate (the
  cache does not change what the model learns, so that read holds every θ's figures).

The rms rule's prior (:func:`seqlm.dynamic_eval.gradient_prior`) reads :data:`PRIOR_TOKENS`
tokens of the training split. A run keeps its choice in ``<run>/reading/<best|last>/``:
``settings.json`` (and ``prior.safetensors``), written whole or not at all
(:mod:`seqlm.atomic`) beside the checkpoints, which are never written. The choice names the
SHA-256 of the weights it was made for; once they change (training went on), it is made again.
A bare checkpoint directory (outside a run) gets its choice made on each call, unstored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import safetensors.torch

from seqlm import atomic
from seqlm.checkpoint import MODEL_FILE
from seqlm.dynamic_eval import SEGMENT, DynamicSettings, gradient_prior
from seqlm.errors import ConfigError
from seqlm.metrics import summary
from seqlm.neural_cache import CacheSettings
from seqlm.reading import ROWS, Reading, read, split_batches

# λ, the cache's share, up to 0.8: code's cache chose 0.5, an earlier grid's top (λ costs no read)
LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
THETAS = (0.01, 0.03, 0.1, 0.3, 1.0)  # θ: flatness; h·h grows with H, hence the wide grid
LRS = {"rms": (3e-6, 1e-5, 3e-5, 1e-4, 3e-4), "sgd": (0.001, 0.003, 0.01, 0.03, 0.1)}
LR_STEP, LR_REACH = 3.0, 3  # a best rate at the grid's edge: up to 3 more, x or / 3 each
DECAYS = (0.0, 0.001, 0.01)  # the first with every lr, the others at the best lr
TUNE_TOKENS = 20_000  # validation tokens a choice reads at most
PRIOR_TOKENS = 4_000  # training tokens the rms rule's prior reads at most
STORE, SETTINGS_FILE, PRIOR_FILE = "reading", "settings.json", "prior.safetensors"
FORMAT = 1


# -- choosing ----------------------------------------------------------------------------------
def best_mixture(reading: Reading) -> tuple[float, float, float]:
    """``(λ, θ, mean NLL)`` of the best mixture of :data:`LAMBDAS` × ``reading.thetas``
    (λ = 0, the model alone, included)."""
    grid = [(lam, theta, reading.nll(lam, theta)) for theta in reading.thetas
            for lam in LAMBDAS]
    return min(grid, key=lambda row: row[2])


def choose(model, val: np.ndarray, train: np.ndarray, *, cache_size: int | None,
           rule: str | None, rows: int = ROWS, segment: int = SEGMENT,
           dynamic: dict | None = None, prior: dict | None = None) -> tuple[dict, dict | None]:
    """Choose the settings asked for on ``val``: the cache of ``cache_size`` positions, the
    dynamic ``rule``, and both together when both are asked.

    Args:
        model: the trained model (never changed).
        val, train: the validation and training splits' ids.
        cache_size, rule: what to choose (None: not that).
        rows, segment: the reading layout.
        dynamic, prior: an already chosen dynamic entry of the same rule and layout, and its
            prior, reused.

    Returns:
        ``(entries, prior)``: ``{"static": ..., "cache": ..., "dynamic": ...,
        "cache+dynamic": ...}`` (those asked for), each with its ``val_loss``; the rms prior
        (None for sgd or no dynamic).
    """
    val = val[:TUNE_TOKENS]
    thetas = THETAS if cache_size else ()
    entries: dict = {}
    static = read(model, split_batches(val, rows, segment), cache_size=cache_size,
                  thetas=thetas)
    entries["static"] = {"val_loss": static.nll()}  # what every choice is measured against
    if cache_size:
        lam, theta, loss = best_mixture(static)
        entries["cache"] = {"size": cache_size, "lam": lam, "theta": theta, "val_loss": loss}
    if rule is None:
        return entries, None
    if rule == "rms" and prior is None:
        prior = gradient_prior(model, split_batches(train[:PRIOR_TOKENS], rows, segment))

    def dynamic_read(lr: float, decay: float) -> Reading:
        return read(model, split_batches(val, rows, segment), cache_size=cache_size,
                    thetas=thetas, prior=prior,
                    dynamic=DynamicSettings(lr=lr, rule=rule, decay=decay, segment=segment))

    if dynamic is not None:
        best = (dynamic["lr"], dynamic["decay"], dynamic_read(dynamic["lr"], dynamic["decay"]))
    else:
        best = best_rate(LRS[rule], static, dynamic_read)
    lr, decay, reading = best
    entries["dynamic"] = {"rule": rule, "lr": lr, "decay": decay, "segment": segment,
                          "val_loss": reading.nll()}
    if cache_size:
        lam, theta, loss = best_mixture(reading)
        entries["cache+dynamic"] = {"cache": {"size": cache_size, "lam": lam, "theta": theta},
                                    "dynamic": _settings(entries["dynamic"]),
                                    "val_loss": loss}
    return entries, prior


def best_rate(rates: tuple[float, ...], static: Reading,
              dynamic_read: Callable[[float, float], Reading]) -> tuple[float, float, Reading]:
    """``(lr, decay, reading)`` of the lowest validation loss: lr 0 (``static``, no
    adaptation) and each of ``rates`` with decay :data:`DECAYS` [0]; past the grid's edge
    while its edge is best (:data:`LR_STEP`, at most :data:`LR_REACH` more rates); then the
    other decays at the best rate. ``dynamic_read(lr, decay)`` reads val with those settings.
    """
    def loss(row) -> float:
        return row[2].nll()

    tried = [(0.0, 0.0, static)] + [(lr, DECAYS[0], dynamic_read(lr, DECAYS[0]))
                                    for lr in rates]
    best = min(tried, key=loss)
    for _ in range(LR_REACH):  # the best rate at the grid's edge: step past it
        known = sorted(lr for lr, _, _ in tried if lr > 0)
        if len(known) < 2 or best[0] not in (known[0], known[-1]):
            break
        lr = best[0] * LR_STEP if best[0] == known[-1] else best[0] / LR_STEP
        tried.append((lr, DECAYS[0], dynamic_read(lr, DECAYS[0])))
        if not loss(tried[-1]) < loss(best):  # worse, or diverged (nan)
            break
        best = tried[-1]
    if best[0] > 0:
        tried += [(best[0], d, dynamic_read(best[0], d)) for d in DECAYS[1:]]
        best = min(tried, key=loss)
    return best


def _settings(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "val_loss"}


# -- the store ---------------------------------------------------------------------------------
def store_dir(checkpoint: Path) -> Path | None:
    """``<run>/reading/<best|last>`` for a run's checkpoint; None for a bare checkpoint."""
    checkpoint = Path(checkpoint)
    which = checkpoint.name.strip(".").removesuffix(".old")  # an interrupted save's sibling
    if checkpoint.parent.name == "checkpoints" and which in ("best", "last"):
        return checkpoint.parent.parent / STORE / which
    return None


def weights_digest(checkpoint: Path) -> str:
    """SHA-256 of the checkpoint's weights file: what a stored choice was made for (kept
    while the file's size and modification time stay, so that scoring again costs nothing)."""
    file = Path(checkpoint) / MODEL_FILE
    info = file.stat()
    key = (str(file.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


def load_stored(checkpoint: Path) -> tuple[dict, dict | None]:
    """``(settings, prior)`` stored for ``checkpoint``'s present weights, or ``({}, None)``
    when there are none (a bare checkpoint, nothing chosen yet, other weights, a damaged
    file: each means choosing again)."""
    folder = store_dir(checkpoint)
    if folder is None:
        return {}, None
    try:
        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        if (settings.pop("format", None), settings.pop("weights_sha256", None)) != (
                FORMAT, weights_digest(checkpoint)):
            return {}, None
        prior_file = folder / PRIOR_FILE
        prior = safetensors.torch.load_file(prior_file) if prior_file.exists() else None
    except (OSError, ValueError, AttributeError, safetensors.SafetensorError):
        return {}, None
    return settings, prior


def save_stored(checkpoint: Path, settings: dict, prior: dict | None) -> Path | None:
    """Write ``settings`` (and ``prior``) for ``checkpoint``, whole or not at all; returns
    the folder (None for a bare checkpoint: nothing written).

    Raises:
        ConfigError: the run directory cannot be written.
    """
    folder = store_dir(checkpoint)
    if folder is None:
        return None
    settings = {**settings, "format": FORMAT, "weights_sha256": weights_digest(checkpoint)}
    files = {SETTINGS_FILE: json.dumps(settings, indent=2) + "\n"}
    if prior is not None:
        files[PRIOR_FILE] = safetensors.torch.save({k: v.contiguous() for k, v in prior.items()})
    try:
        folder.parent.mkdir(exist_ok=True)
        atomic.write_directory(folder, files)
    except OSError as exc:
        raise ConfigError(f"cannot store the chosen settings in {folder} ({exc}); make the "
                          "run directory writable") from None
    return folder


def settings_for(model, checkpoint: Path, *, cache_size: int | None, rule: str | None,
                 rows: int = ROWS, segment: int = SEGMENT,
                 splits: Callable[[], tuple[np.ndarray, np.ndarray]],
                 choose_again: bool = False) -> tuple[dict, dict]:
    """The settings asked for: those stored for these weights and this layout, else chosen
    on the validation split (:func:`choose`) and stored.

    Args:
        splits: ``() -> (val, train)`` ids of the run's own corpus, called only to choose.
        choose_again: ignore what is stored (when ``splits`` gives another validation text
            than the stored choice was made on).

    Returns:
        ``(stored settings, {"prior": ..., "chosen_now": bool, "stored_in": str | None})``.
    """
    stored, prior = load_stored(checkpoint) if not choose_again else ({}, None)
    if stored.get("rows") != rows:
        stored, prior = {"rows": rows}, None
    cache, dyn = stored.get("cache"), stored.get("dynamic")
    dyn_ok = dyn is not None and (dyn["rule"], dyn["segment"]) == (rule, segment) and (
        rule != "rms" or prior is not None)
    both = stored.get("cache+dynamic")
    need_cache = cache_size is not None and (cache is None or cache["size"] != cache_size)
    need_dyn = rule is not None and not dyn_ok
    both_ok = both is not None and dyn_ok and both["cache"]["size"] == cache_size and \
        both["dynamic"] == _settings(dyn)
    need_both = cache_size is not None and rule is not None and not both_ok
    if not (need_cache or need_dyn or need_both):
        return stored, {"prior": prior, "chosen_now": False,
                        "stored_in": str(store_dir(checkpoint))}
    val, train = splits()
    entries, new_prior = choose(model, val, train, cache_size=cache_size if (
        need_cache or need_both) else None, rule=rule if (need_dyn or need_both) else None,
        rows=rows, segment=segment, dynamic=None if need_dyn else dyn,
        prior=None if need_dyn else prior)
    if need_dyn:
        stored.pop("cache+dynamic", None)  # chosen with the old dynamic settings
    prior = new_prior
    stored.update({k: v for k, v in entries.items() if k != "cache" or need_cache},
                  chosen_on={"split": "val", "tokens": int(min(len(val), TUNE_TOKENS))})
    folder = save_stored(checkpoint, stored, prior)
    return stored, {"prior": prior, "chosen_now": True,
                    "stored_in": None if folder is None else str(folder)}


# -- evaluating with the stored settings -------------------------------------------------------
def figure(evaluation: str, reading: Reading, settings: dict | None = None, *,
           lam: float = 0.0, theta: float | None = None) -> dict:
    """One labelled figure of a split: ``evaluation``, loss/ppl/bits/tokens, the seconds
    and seconds per 1,000 tokens of its read, and the settings that produced it."""
    tokens = len(reading.logprobs)
    return {"evaluation": evaluation, **summary(reading.nll(lam, theta), tokens),
            "seconds": reading.seconds, "seconds_per_1k": 1000 * reading.seconds / tokens,
            **({"settings": settings} if settings else {})}


def evaluate_split(model, tokens: np.ndarray, settings: dict, prior: dict | None, *,
                   cache: bool, dynamic: bool, rows: int = ROWS,
                   segment: int = SEGMENT) -> list[dict]:
    """The static figure of ``tokens`` and those asked for (cache, dynamic, cache+dynamic),
    each from a read of its own (so each is timed alone) with the stored ``settings``.

    Returns:
        One :func:`figure` per evaluation, static first; each after the first also has
        ``extra_seconds_per_1k`` (over the static read) and the ``val_loss`` it was chosen
        with.
    """
    def batches():
        return split_batches(tokens, rows, segment)

    out = [figure("static", read(model, batches()))]
    wanted = [k for k, on in (("cache", cache), ("dynamic", dynamic),
                              ("cache+dynamic", cache and dynamic)) if on]
    for key in wanted:
        entry = settings[key]
        c = entry.get("cache", entry) if key != "dynamic" else None
        d = entry.get("dynamic", entry) if key != "cache" else None
        c = CacheSettings(c["size"], c["lam"], c["theta"]) if c else None
        d = DynamicSettings(d["lr"], d["rule"], d["decay"], d["segment"]) if d else None
        reading = read(model, batches(), cache_size=c and c.size,
                       thetas=(c.theta,) if c else (), dynamic=d, prior=prior)
        row = figure(key, reading, {**({"cache": asdict(c)} if c else {}),
                                    **({"dynamic": asdict(d)} if d else {})},
                     lam=c.lam if c else 0.0, theta=c and c.theta)
        row["extra_seconds_per_1k"] = row["seconds_per_1k"] - out[0]["seconds_per_1k"]
        row["val_loss"] = entry["val_loss"]
        out.append(row)
    return out


def evaluate_reading(model, checkpoint: Path, tokens: np.ndarray, *, cache_size: int | None,
                     rule: str | None, rows: int = ROWS, segment: int = SEGMENT,
                     splits: Callable[[], tuple[np.ndarray, np.ndarray]],
                     choose_again: bool = False) -> dict:
    """``seqlm evaluate --cache/--dynamic``: the settings (stored, or chosen on validation
    and stored: :func:`settings_for`), then every figure of ``tokens`` asked for
    (:func:`evaluate_split`).

    Returns:
        ``{"evaluations": [figure, ...], "rows", "segment", "chosen_now", "stored_in",
        "chosen_on"}``.
    """
    settings, info = settings_for(model, checkpoint, cache_size=cache_size, rule=rule,
                                  rows=rows, segment=segment, splits=splits,
                                  choose_again=choose_again)
    figures = evaluate_split(model, tokens, settings, info["prior"], rows=rows,
                             segment=segment, cache=cache_size is not None,
                             dynamic=rule is not None)
    return {"evaluations": figures, "rows": rows, "segment": segment,
            "chosen_now": info["chosen_now"], "stored_in": info["stored_in"],
            "chosen_on": settings.get("chosen_on")}


def resolve_settings(checkpoint: Path, cache, dynamic) -> tuple:
    """``(CacheSettings | None, DynamicSettings | None, prior)`` for ``LanguageModel.score``
    and ``generate``: each of ``cache`` and ``dynamic`` None or False (off), True (the
    settings stored for ``checkpoint``: ``'cache+dynamic'``'s when both are True), or the
    settings themselves. The rms rule's prior is the stored one.

    Raises:
        ConfigError: True where nothing is stored for these weights, a value of another
            kind, or the rms rule without a stored prior.
    """
    rms = isinstance(dynamic, DynamicSettings) and dynamic.rule == "rms"
    stored, prior = load_stored(checkpoint) if True in (cache, dynamic) or rms else ({}, None)
    key = "cache+dynamic" if cache is True and dynamic is True else None
    flags = {"cache": "--cache SIZE", "dynamic": "--dynamic"}

    def one(name: str, value, cls, fields: tuple[str, ...]):
        if value is None or value is False:
            return None
        if isinstance(value, cls):
            return value
        if value is not True:
            raise ConfigError(f"`{name}` must be None, True (the settings stored with the run) "
                              f"or a {cls.__name__}, got {value!r}")
        entry = stored.get(key or name)
        if entry is None:
            raise ConfigError(f"`{name}` True asks for settings chosen on the validation split, "
                              f"and none are stored for the weights in {checkpoint}; choose "
                              f"them with `seqlm evaluate RUN {flags[name]}` (a run keeps "
                              f"them) or pass a {cls.__name__}")
        entry = entry[name] if key else entry
        return cls(**{f: entry[f] for f in fields})

    c = one("cache", cache, CacheSettings, ("size", "lam", "theta"))
    d = one("dynamic", dynamic, DynamicSettings, ("lr", "rule", "decay", "segment"))
    if d is not None and d.rule == "rms" and prior is None:
        raise ConfigError(f"the 'rms' rule needs the mean squared gradients of training text, "
                          f"and none are stored for the weights in {checkpoint}; run "
                          "`seqlm evaluate RUN --dynamic` once (a run keeps them) or use "
                          "DynamicSettings(rule='sgd')")
    return c, d, prior
