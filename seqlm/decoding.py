"""Decoding without torch: the sampling knobs, the next-token distribution they give, the
warm-up rule, the decoding loop, the decoded text stream, and :func:`generate_texts`, the one
generation driver.

Both backends generate through this module: :mod:`seqlm.generate` (torch models) and
:mod:`seqlm.runtime` (exported ONNX models, no torch) supply only a ``decode`` function (the
warm-up, then the model's one-token step in :func:`decode_steps`), so a knob means the same
thing, a probability is computed the same way and a seed draws the same tokens whichever one
runs. Arrays are numpy; nothing here imports torch.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np

from seqlm.errors import ConfigError, field_error

BOS = "<bos>"
REPLACEMENT_CHAR = "\ufffd"  # a decoder's stand-in for an unfinished multi-byte character
MAX_NEW_TOKENS = 200  # tokens a call produces unless told otherwise
MAX_SEED = 2**63 - 1  # a seed fits a signed 64-bit integer (JSON clients, torch and numpy)


class OOVWarning(UserWarning):
    """The prefix holds tokens the vocabulary lacks; they were read as ``<unk>``."""


def check_sampling(temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """Validate the sampling knobs.

    Raises:
        ConfigError: temperature < 0 or NaN, top_k < 1, or top_p outside (0, 1].
    """
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0:
        raise field_error("temperature", temperature, ">= 0 (0 means greedy argmax)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise field_error("top_k", top_k, "an integer >= 1 or None to keep all tokens")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise field_error("top_p", top_p, "in (0, 1] or None to keep all tokens")


def check_count(name: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= 1 (``max_new_tokens``...)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise field_error(name, value, "an integer >= 1")


def check_seed(seed: object) -> None:
    """Raise :class:`ConfigError` unless ``seed`` is None or an integer in [0, 2**63 - 1]."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed <= MAX_SEED):
        raise field_error("seed", seed, "an integer from 0 to 2**63 - 1, or None for fresh "
                          "entropy")


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis; ``-inf`` scores get probability 0."""
    scores = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    scores = np.asarray(logits, dtype=np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_probs(logits: np.ndarray, *, temperature: float, top_k: int | None = None,
                     top_p: float | None = None) -> np.ndarray:
    """The distribution one token is drawn from, after the knobs (which are not checked here).

    The logits are divided by the temperature, cut to the ``top_k`` largest, then to the
    smallest set whose probability reaches ``top_p`` (the nucleus; the most likely token
    always stays), and the softmax is taken of what is left. Temperature 0 puts all the mass
    on the argmax (the first one on a tie).

    Args:
        logits: (N, V) unnormalised scores.
        temperature, top_k, top_p: as :func:`seqlm.generate.generate`.

    Returns:
        (N, V) float64 probabilities; each row sums to 1.
    """
    scores = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        probs = np.zeros_like(scores)
        np.put_along_axis(probs, scores.argmax(axis=-1)[:, None], 1.0, axis=-1)
        return probs
    scores = scores / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        keep = np.argpartition(-scores, top_k - 1, axis=-1)[:, :top_k]
        cut = np.full_like(scores, -np.inf)
        np.put_along_axis(cut, keep, np.take_along_axis(scores, keep, axis=-1), axis=-1)
        scores = cut
    if top_p is not None and top_p < 1.0:
        scores = _nucleus(scores, top_p)
    return softmax(scores)


def _nucleus(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Set to −inf every token outside the smallest top set with probability ≥ ``top_p``."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    probs = softmax(np.take_along_axis(scores, order, axis=-1))
    mass_before = np.cumsum(probs, axis=-1) - probs  # probability of the strictly better tokens
    drop = np.empty_like(mass_before, dtype=bool)
    np.put_along_axis(drop, order, mass_before >= top_p, axis=-1)  # set already complete
    return np.where(drop, -np.inf, scores)


def draw(probs: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One token per row of ``probs`` (N, V), by inverting the cumulative distribution at
    ``uniform`` (N,), numbers in [0, 1) from the caller's random source; a token of
    probability 0 is never drawn. Returns (N,) int64."""
    cdf = np.cumsum(probs, axis=-1)
    below = np.asarray(uniform, dtype=np.float64).reshape(-1, 1) * cdf[:, -1:]
    return np.argmax(cdf > below, axis=-1).astype(np.int64)


def seeded_uniform(seed: int | None = None) -> Callable[[int], np.ndarray]:
    """``uniform(n) -> (n,)`` float64 numbers in [0, 1) from numpy's PCG64 seeded with
    ``seed`` (None: fresh entropy): the random source a ``seed`` means on both backends, so
    one seed draws the same tokens from the same probabilities.

    Raises:
        ConfigError: ``seed`` is not None or an integer in [0, 2**63 - 1] (:func:`check_seed`).
    """
    check_seed(seed)
    return np.random.default_rng(seed).random


def make_pick(*, temperature: float, top_k: int | None, top_p: float | None,
              uniform: Callable[[int], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``pick(logits (N, V)) -> (N,) int64``: the argmax for temperature 0, else a draw
    (:func:`draw`, one ``uniform`` number per row) from :func:`next_token_probs`."""
    if temperature == 0:
        return partial(np.argmax, axis=-1)

    def pick(logits: np.ndarray) -> np.ndarray:
        probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return draw(probs, uniform(len(probs)))

    return pick


def encode_prefix(tokenizer, prefix: str, *, strict: bool = False) -> list[int]:
    """Token ids of ``prefix``; unknown tokens become ``<unk>`` with an :class:`OOVWarning`.

    Raises:
        ConfigError: ``strict`` and the prefix holds unknown tokens.
    """
    known = tokenizer.vocab.token_to_idx
    unknown = list(dict.fromkeys(t for t in tokenizer.tokens(prefix) if t not in known))
    if unknown and strict:
        raise ConfigError(f"prefix {prefix!r} holds tokens outside the vocabulary: "
                          f"{_listed(unknown)}; rephrase the prefix or drop strict to read "
                          "them as <unk>")
    if unknown:
        warn_unknown("prefix", unknown, stacklevel=3)
    return [int(i) for i in tokenizer.encode(prefix)]


def warn_unknown(what: str, unknown: list[str], *, stacklevel: int = 2) -> None:
    """Warn (:class:`OOVWarning`) that ``what``'s tokens ``unknown`` are read as ``<unk>``;
    ``stacklevel`` counts from the caller of this function, as in :func:`warnings.warn`."""
    warnings.warn(f"{what} tokens outside the vocabulary are read as <unk>: "
                  f"{_listed(unknown)}", OOVWarning, stacklevel=stacklevel + 1)


def _listed(tokens: list[str]) -> str:
    return ", ".join(repr(t) for t in tokens[:10]) + (" ..." if len(tokens) > 10 else "")


def warm_up_ids(tokenizer, prefix_ids: list[int]) -> list[int]:
    """What the warm-up reads: the prefix, or ``[<bos>]`` for an empty prefix when the
    vocabulary has ``<bos>``, or nothing (start from the zero state's prediction)."""
    if not prefix_ids and BOS in tokenizer.vocab.token_to_idx:
        return [tokenizer.vocab.token_to_idx[BOS]]
    return list(prefix_ids)


def decode_steps(advance: Callable, logits, state, max_new_tokens: int,
                 pick: Callable) -> Iterator[tuple]:
    """The decoding loop: pick a token from ``logits``, yield it, feed it back, repeat.

    Args:
        advance: ``advance(tokens (B,), state) -> (logits (B, V), state)``, a model's stepper.
        logits: (B, V) scores of the first new token (from the warm-up).
        state: the state after the warm-up, in whatever form ``advance`` takes.
        max_new_tokens: tokens to produce (the last one is not fed back).
        pick: ``pick(logits (B, V)) -> tokens (B,)``.

    Yields:
        ``(tokens (B,), logits (B, V))``: each new token and the scores it was picked from.
        The caller may stop early by leaving the loop.
    """
    for step in range(max_new_tokens):
        token = pick(logits)
        yield token, logits
        if step + 1 < max_new_tokens:
            logits, state = advance(token, state)


class TextStream:
    """Decoded text of one sample, the stop-string check, and the pieces not yet emitted.

    Each token re-decodes the whole sample (quadratic in its length) because only a full
    decode gets word spacing and multi-byte BPE characters right; it runs only when the caller
    streams or gives a stop string.

    Args:
        tokenizer: decodes the ids.
        prefix_ids: the ids of the prefix (their text is not emitted).
        stop: end the sample where this text appears in the continuation, or None.
    """

    def __init__(self, tokenizer, prefix_ids: list[int], stop: str | None) -> None:
        self.tokenizer, self.ids, self.stop = tokenizer, list(prefix_ids), stop
        self.prefix_text = tokenizer.decode(self.ids)
        self.generated = ""  # decoded text after the prefix, cut before a stop string
        self.emitted = 0  # characters of ``generated`` already handed out
        self.done = False

    def push(self, token_id: int) -> str:
        """Add a token; return the new text that is safe to emit (maybe '')."""
        self.ids.append(token_id)
        self.generated = self.tokenizer.decode(self.ids)[len(self.prefix_text):]
        end = len(self.generated)
        if self.stop:
            found = self.generated.find(self.stop, max(0, self.emitted - len(self.stop)))
            if found >= 0:
                self.generated, self.done, end = self.generated[:found], True, found
            else:  # hold back what could be the start of the stop string
                end = max(self.emitted, end - len(self.stop) + 1)
        while end > self.emitted and self.generated[end - 1] == REPLACEMENT_CHAR and not self.done:
            end -= 1  # wait for the rest of a multi-byte character
        return self.flush(end)

    def flush(self, end: int | None = None) -> str:
        """Hand out the text held back so far, up to ``end`` (default: all of it)."""
        end = len(self.generated) if end is None else end
        piece, self.emitted = self.generated[self.emitted:end], max(self.emitted, end)
        return piece


# decode(prefix_ids, n, max_new_tokens, pick, greedy) -> Iterator[(tokens (n,), logits (n, V))]:
# a backend's warm-up on the prefix (:func:`warm_up_ids`) and its decoding loop for n rows
# (:func:`decode_steps`), tokens and logits in the backend's own arrays.
Decode = Callable[[list[int], int, int, Callable, bool], Iterator[tuple]]


def generate_texts(tokenizer, prefix: str, decode: Decode, *, max_new_tokens: int,
                   temperature: float, top_k: int | None, top_p: float | None,
                   num_samples: int, uniform: Callable[[int], np.ndarray], stop: str | None,
                   strict: bool, on_text: Callable[[int, str], None] | None) -> list[str]:
    """Continue ``prefix`` ``num_samples`` times side by side: the knobs checked, the prefix
    encoded (unknown tokens warned about, or refused with ``strict``), the tokens drawn by
    ``decode``'s loop with :func:`make_pick`, stop strings cut and text streamed to
    ``on_text(sample_index, piece)``.

    Returns:
        ``num_samples`` strings, each the decoded prefix followed by its continuation.

    Raises:
        ConfigError: a bad knob or count, or (with ``strict``) unknown prefix tokens.
    """
    check_sampling(temperature, top_k, top_p)
    check_count("max_new_tokens", max_new_tokens)
    check_count("num_samples", num_samples)
    prefix_ids = encode_prefix(tokenizer, prefix, strict=strict)
    streams = [TextStream(tokenizer, prefix_ids, stop) for _ in range(num_samples)]
    pick = make_pick(temperature=temperature, top_k=top_k, top_p=top_p, uniform=uniform)
    steps = decode(prefix_ids, num_samples, max_new_tokens, pick, temperature == 0)
    tokens = []
    for token, _ in steps:
        tokens.append(token)  # kept in the backend's arrays: no host sync per token
        if (stop or on_text) and _push_all(streams, token.tolist(), on_text):
            break
    if on_text is not None:
        for i, s in enumerate(streams):
            if piece := s.flush():
                on_text(i, piece)
    if stop is not None:
        return [s.prefix_text + s.generated for s in streams]
    rows = zip(*(t.tolist() for t in tokens))
    return [tokenizer.decode(prefix_ids + list(row)) for row in rows]


def _push_all(streams: list[TextStream], ids: list[int], on_text) -> bool:
    """Push one token to each unfinished stream, handing new text to ``on_text(i, piece)``;
    True once every stream has stopped."""
    for i, (s, token_id) in enumerate(zip(streams, ids)):
        if s.done:
            continue
        piece = s.push(token_id)
        if piece and on_text is not None:
            on_text(i, piece)
    return all(s.done for s in streams)
