"""The playground's numbers, from the model object and nothing else.

Generation, scoring and hidden states come from the same object a Python user gets from
``seqlm.load`` (or, for an export, ``seqlm.runtime.load``, which has the same methods): :meth:`~seqlm.api.LanguageModel.stream` (one :class:`~seqlm.results.TokenStep`
per token), :meth:`~seqlm.api.LanguageModel.score` (a :class:`~seqlm.results.TextScore`) and
:meth:`~seqlm.api.LanguageModel.states` (L, N, H). This module only turns them into the
API's JSON rows: probabilities as they are, entropies and surprisals in bits, and each token's
text as it reads on the page (word tokens with their spaces, unknown tokens as written).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np

from seqlm.decoding import OOVWarning
from seqlm.errors import ConfigError, SeqlmError
from seqlm.results import TextScore, TokenStep, text_ids
from seqlm.serve.schemas import FieldError
from seqlm.serve.units import rank_units

LN2 = math.log(2.0)
TOP = 10  # alternatives reported per step


def finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def step_row(step: TokenStep) -> dict:
    """A generated token as the API streams it (entropy in bits)."""
    return {"text": step.text, "id": step.id, "prob": step.prob,
            "top": [[t, p] for t, p in step.top], "entropy": step.entropy / LN2}


def display_pieces(tokenizer, text: str, ids: np.ndarray) -> list[str]:
    """The text each token adds to the page, so that the pieces read like the text: char
    tokens as written; word and BPE tokens as the growth of the decoded prefix (spaces
    included), an unknown word shown as written rather than as ``<unk>``."""
    ids = [int(i) for i in ids]
    if tokenizer.kind == "char":
        return list(tokenizer.tokens(text))
    out, before = [], ""
    for i in range(len(ids)):
        now = tokenizer.decode(ids[: i + 1])
        out.append(now[len(before):] if now.startswith(before) else now)
        before = now
    if tokenizer.kind == "word":
        words, unk = tokenizer.tokens(text), tokenizer.vocab.idx_to_token[0]
        if len(words) == len(ids):
            out = [p.replace(unk, w) if i == 0 else p for p, w, i in zip(out, words, ids)]
    return out


def score_rows(lm, text: str, **reading) -> tuple[TextScore, list[dict]]:
    """Every token of ``text`` with its probability, surprisal (bits), the entropy (bits) of
    the model's distribution there, its top alternatives and whether it is outside the
    vocabulary. The first token is scored from where generation starts, as
    :meth:`~seqlm.results.TextModel.score` scores it. ``reading`` (``cache=True``,
    ``dynamic=True``) reads with the settings stored with the run, and each row then also
    holds the trained weights' own log-probability (``static_logprob``).

    Raises:
        ConfigError: the text has no tokens, or the reading asked for has no stored settings.
    """
    with warnings.catch_warnings():  # the answer marks unknown tokens itself
        warnings.simplefilter("ignore", OOVWarning)
        result = lm.score(text, top=TOP, **reading)
    texts = display_pieces(lm.tokenizer, text, result.ids)
    rows = []
    for i, lp in enumerate(result.logprobs):
        top = [[lm.tokenizer.decode([int(j)]), math.exp(v)]
               for j, v in zip(result.top_ids[i], result.top_logprobs[i])]
        rows.append({"text": texts[i], "id": int(result.ids[i]), "prob": math.exp(lp),
                     "logprob": finite(lp), "surprisal": finite(-lp / LN2), "top": top,
                     "entropy": finite(result.entropy[i] / LN2) if len(result.entropy)
                     else None,  # a reading that learns gives no whole distribution here
                     "unknown": bool(result.unknown[i])})
        if result.static_logprobs is not None:
            rows[-1]["static_logprob"] = finite(float(result.static_logprobs[i]))
    return result, rows


def stream(lm, prefix: str, *, max_new_tokens: int, temperature: float, top_k: int | None,
           top_p: float | None, seed: int | None) -> tuple[list[dict], Iterator[dict]]:
    """The prefix as scored rows (the warm-up: how surprised the model was by it), and an
    iterator of one row per generated token.

    Raises:
        ConfigError: a knob out of range (checked before anything runs).
    """
    steps = lm.stream(prefix, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_k=top_k, top_p=top_p, seed=seed, top=TOP)
    try:
        warm = score_rows(lm, prefix)[1] if prefix else []
    except ConfigError:  # a prefix of no tokens (e.g. only characters a BPE drops)
        warm = []
    return warm, (step_row(s) for s in steps)


def score_answer(run, text: str, reading: str = "static") -> dict:
    """The ``/api/score`` answer for ``run`` (a :class:`~seqlm.serve.runs.ServedRun`).

    The model and the bigram baseline are scored on the same N tokens: the model's first
    token from where generation starts, the bigram's (which has no token before it) by the
    unigram, as ``seqlm train``'s baseline scores it. A ``reading`` other than ``'static'``
    reads with the neural cache and/or dynamic evaluation at the run's stored settings;
    ``evaluation`` names what produced the figures and ``static_perplexity`` gives the
    trained weights' own, so the two are never mixed.

    Raises:
        FieldError: the text has no tokens (``text``), or the reading cannot run here or has
            no stored settings (``reading``).
    """
    if reading != "static" and run.backend != "torch":
        raise FieldError("reading", f"run {run.name!r} is served from its ONNX export, which "
                         "reads statically only; serve the run with --backend torch")
    try:
        text_ids(run.tokenizer, text)
    except SeqlmError as exc:
        raise FieldError("text", str(exc)) from None
    options = {} if reading == "static" else {"cache": "cache" in reading or None,
                                              "dynamic": "dynamic" in reading or None}
    try:
        result, rows = score_rows(run.lm, text, **options)
    except SeqlmError as exc:  # the text has tokens: what fails is the reading asked for
        raise FieldError("reading", str(exc)) from None
    out = {"run": run.name, "tokens": rows, "perplexity": finite(result.perplexity),
           "bits_per_token": finite(result.bits_per_token),
           "unknown": int(result.unknown.sum()), "evaluation": result.evaluation}
    if result.static_logprobs is not None:
        out["static_perplexity"] = finite(math.exp(min(-float(np.mean(
            result.static_logprobs)), 700)))
    bigram = run.bigram()
    if isinstance(bigram, str):
        out["baseline"] = {"unavailable": bigram}
        return out
    base = bigram.logprobs(result.ids)
    for row, lp in zip(rows, base):
        row["bigram_logprob"] = finite(float(lp))
    nll = -float(np.mean(base))
    out["baseline"] = {"name": f"add-{bigram.k:g} bigram", "bits_per_token": nll / LN2,
                       "perplexity": finite(math.exp(min(nll, 700)))}
    return out


def states_answer(run, text: str, max_tokens: int) -> dict:
    """The ``/api/states`` answer: h (and an LSTM's c) after every token, L × N × H, the
    token texts, which are unknown, and the units' rankings (:func:`rank_units`).

    Raises:
        FieldError: the text has no tokens, or more than ``max_tokens``.
    """
    ids = run.tokenizer.encode(text)
    if len(ids) > max_tokens:
        raise FieldError("text", f"`text` has {len(ids):,} tokens; hidden states are served "
                         f"for at most {max_tokens:,} (seqlm serve --max-state-tokens)")
    try:
        h = run.lm.states(text)
        c = run.lm.states(text, cell=True) if run.cell == "lstm" else None
    except SeqlmError as exc:
        raise FieldError("text", str(exc)) from None
    # A diverged model's NaN or inf would not be JSON: shown as 0 and ±1e6.
    h = np.nan_to_num(h, nan=0.0, posinf=1e6, neginf=-1e6)
    c = None if c is None else np.nan_to_num(c, nan=0.0, posinf=1e6, neginf=-1e6)
    pieces = display_pieces(run.tokenizer, text, ids)
    out = {"run": run.name, "tokens": pieces,
           "unknown": (np.asarray(ids) == run.tokenizer.vocab.unk).tolist(),
           "layers": int(h.shape[0]), "hidden_size": int(h.shape[2]),
           "states": np.round(h, 4).tolist(), "ranking": rank_units(h, pieces),
           "cells": None, "cell_ranking": None}
    if c is not None:
        out["cells"], out["cell_ranking"] = np.round(c, 4).tolist(), rank_units(c, pieces)
    return out
