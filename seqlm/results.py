"""What a loaded model returns when it streams and scores: :class:`TokenStep` and
:class:`TextScore`, the numpy code that builds them from logits, and :class:`TextModel`, the
methods both model objects share (no torch).

The two model objects are :class:`seqlm.api.LanguageModel` (torch) and
:class:`seqlm.runtime.OnnxLanguageModel` (onnxruntime). Shapes: N tokens, V the vocabulary,
k alternatives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from seqlm.config import DEFAULT_TEMPERATURE
from seqlm.decoding import (MAX_NEW_TOKENS, TextStream, check_count, check_sampling,
                            check_seed, encode_prefix, generate_texts, log_softmax,
                            make_pick, seeded_uniform, softmax, warn_unknown)
from seqlm.errors import ConfigError, field_error


@dataclass
class TokenStep:
    """One generated token, as ``stream`` yields it.

    Attributes:
        text: the text this token adds to the output ('' while a stop string or a
            multi-byte character is still undecided; the held text comes with a later step,
            the last step carries what remains). The steps' texts add up to the continuation
            ``generate`` returns.
        id: the token id.
        prob: the probability the model gave this token (its plain softmax, before the
            temperature and the top-k / top-p cuts).
        top: the ``top`` most likely tokens at this step as ``(token text, probability)``,
            most likely first (plain softmax).
        entropy: entropy of the plain softmax, in nats.
    """

    text: str
    id: int
    prob: float
    top: list[tuple[str, float]]
    entropy: float


@dataclass
class TextScore:
    """Per-token log-probabilities of a text, as ``score`` returns them.

    Attributes:
        tokens: (N) the text of each token (for char and word tokenizers the token as it
            appears in the text, also when the vocabulary lacks it).
        ids: (N,) int64 token ids (0, ``<unk>``, for unknown tokens).
        logprobs: (N,) float64 natural-log probability of each token given the ones before.
        unknown: (N,) bool, the token is outside the vocabulary (scored as ``<unk>``).
        top_ids: (N, k) int64 the k most likely tokens at each position (k may be 0).
        top_logprobs: (N, k) float64 their log-probabilities.
        entropy: (N,) float64 entropy in nats of the model's distribution at each position
            (the one the token was drawn from; empty when built without it).
        evaluation: what produced ``logprobs``: ``'static'`` (the trained weights alone),
            ``'cache'``, ``'dynamic'`` or ``'cache+dynamic'`` (:mod:`seqlm.reading`).
        static_logprobs: (N,) float64 the trained model's own log-probabilities of the same
            tokens when ``evaluation`` is not static (for showing both side by side), else
            None.
    """

    tokens: list[str]
    ids: np.ndarray
    logprobs: np.ndarray
    unknown: np.ndarray
    top_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    top_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    entropy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    evaluation: str = "static"
    static_logprobs: np.ndarray | None = None

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood, nats per token (the training loss)."""
        return float(-self.logprobs.mean())

    @property
    def perplexity(self) -> float:
        """exp(mean NLL): the chapter's perplexity of this text."""
        return float(np.exp(self.nll))

    @property
    def bits_per_token(self) -> float:
        """Mean NLL in bits (bits per character for a char tokenizer)."""
        return self.nll / float(np.log(2.0))


SCORE_CHUNK = 4096  # tokens per forward call when scoring: bounds the (chunk, V) logits


def host(array) -> np.ndarray:
    """A numpy array of a backend's array (a torch tensor on any device, or numpy)."""
    return np.asarray(array.cpu() if hasattr(array, "cpu") else array)


def check_top(top: object) -> None:
    """Raise :class:`ConfigError` unless ``top`` is an integer >= 0."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise field_error("top", top, "an integer >= 0")


def text_ids(tokenizer, text: str) -> np.ndarray:
    """(N,) int64 ids of ``text``.

    Raises:
        ConfigError: the text has no tokens.
    """
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if not len(ids):
        raise ConfigError(f"text {text[:40]!r} has no tokens for this {tokenizer.kind} "
                          "tokenizer; pass at least one token of text")
    return ids


def token_texts(tokenizer, text: str, ids: np.ndarray) -> list[str]:
    """The text of each of ``ids`` (``tokenizer.encode(text)``): char and word tokens as the
    text has them, BPE tokens decoded one by one."""
    if tokenizer.kind in ("char", "word"):
        return list(tokenizer.tokens(text))
    return [tokenizer.decode([int(i)]) for i in ids]


def text_score(tokenizer, text: str, ids: np.ndarray, chunks: Iterable[tuple],
               top: int) -> TextScore:
    """Assemble a :class:`TextScore` from the logits of consecutive positions.

    Args:
        tokenizer, text, ids: the text and its (N,) ids.
        chunks: ``(logits (n, V), targets (m,))`` in order, m ≤ n: each row's scores of the
            token that follows; rows past the targets (the prediction after the text's
            last token) are ignored. The targets add up to ``ids``.
        top: alternatives to keep per position.
    """
    parts = []
    for logits, targets in chunks:
        logprobs = log_softmax(np.asarray(logits)[:len(targets)])
        best = np.argsort(-logprobs, axis=-1, kind="stable")[:, :top]
        plogp = np.where(np.isfinite(logprobs), np.exp(logprobs) * logprobs, 0.0)
        parts.append((np.take_along_axis(logprobs, targets[:, None], -1)[:, 0], best,
                      np.take_along_axis(logprobs, best, -1), -plogp.sum(-1)))
    logprobs, top_ids, top_logprobs, entropy = (np.concatenate(p) for p in zip(*parts))
    return TextScore(tokens=token_texts(tokenizer, text, ids), ids=ids, logprobs=logprobs,
                     unknown=ids == tokenizer.vocab.unk, top_ids=top_ids.astype(np.int64),
                     top_logprobs=top_logprobs, entropy=entropy)


def token_stream(tokenizer, prefix_ids: list[int], steps: Iterator[tuple], *,
                 max_new_tokens: int, stop: str | None, top: int) -> Iterator[TokenStep]:
    """One :class:`TokenStep` per token of a one-row decoding loop.

    Args:
        tokenizer: decodes the tokens.
        prefix_ids: the prefix's ids (the text is continued after them).
        steps: :func:`seqlm.decoding.decode_steps` of one row: ``(tokens (1,), logits (1, V))``.
        max_new_tokens: the loop's length (its last step carries the held-back text).
        stop: end where this text appears, or None.
        top: likeliest tokens listed per step.
    """
    text = TextStream(tokenizer, prefix_ids, stop)
    for i, (token, logits) in enumerate(steps):
        token_id = int(token[0])
        piece = text.push(token_id)
        if i + 1 == max_new_tokens:
            piece += text.flush()
        probs = softmax(host(logits)[0])
        best = np.argsort(-probs, kind="stable")[:top]
        nonzero = probs[probs > 0]
        yield TokenStep(text=piece, id=token_id, prob=float(probs[token_id]),
                        top=[(tokenizer.decode([int(i)]), float(probs[i])) for i in best],
                        entropy=float(-(nonzero * np.log(nonzero)).sum()))
        if text.done:
            return


class TextModel(ABC):
    """``generate``, ``generate_many``, ``stream``, ``score`` and ``perplexity`` of a loaded
    model, over the hooks each model class implements: :meth:`_decode` (the backend of
    :func:`seqlm.decoding.generate_texts`), :meth:`_start` and :meth:`_forward`. Subclasses
    set ``tokenizer``.
    """

    tokenizer = None

    @abstractmethod
    def _decode(self, prefix_ids: list[int], n: int, max_new_tokens: int, pick: Callable,
                greedy: bool) -> Iterator[tuple]:
        """The warm-up on ``prefix_ids`` and the decoding loop of ``n`` rows
        (:data:`seqlm.decoding.Decode`)."""

    @abstractmethod
    def _start(self) -> tuple:
        """``(logits (1, V), state)``: where generation starts with an empty prefix."""

    @abstractmethod
    def _forward(self, ids: np.ndarray, state) -> tuple:
        """``(logits (n, V), state)`` after reading ``ids`` (n,) from ``state``."""

    def _logits(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(logits (n, V), targets)`` chunks over ``ids`` (N,), as :func:`text_score` takes
        them: the first row from where generation starts, the rest from :meth:`_forward` with
        the state carried, :data:`SCORE_CHUNK` rows at a time."""
        logits, state = self._start()
        yield host(logits), ids[:1]
        for start in range(0, len(ids) - 1, SCORE_CHUNK):
            chunk = ids[start:start + SCORE_CHUNK]
            logits, state = self._forward(chunk, state)
            yield host(logits), ids[start + 1:start + 1 + len(chunk)]

    def generate(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 stop: str | None = None) -> str:
        """Continue ``prefix``: :meth:`generate_many` with one sample.

        Args:
            prefix: text to continue ('' starts from ``<bos>`` or the zero state).
            max_new_tokens: tokens to produce (≥ 1).
            temperature: 0 is greedy; > 0 samples (default:
                :data:`seqlm.config.DEFAULT_TEMPERATURE`).
            top_k, top_p: keep only the k likeliest / the nucleus of mass p when sampling.
            seed: the same seed gives the same text; None draws fresh entropy.
            stop: end where this text appears; the result ends just before it.

        Returns:
            The prefix followed by the continuation.

        Raises:
            ConfigError: a knob out of range (the message names it).
        """
        return self.generate_many(prefix, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  seed=seed, stop=stop)[0]

    def generate_many(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
                      temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                      top_p: float | None = None, num_samples: int = 1,
                      seed: int | None = None, stop: str | None = None, strict: bool = False,
                      on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """``num_samples`` continuations side by side, with the arguments of
        :func:`seqlm.generate.generate` (a seed draws the same tokens on every backend).

        Raises:
            ConfigError: a bad knob or count, or (with ``strict``) unknown prefix tokens.
        """
        return generate_texts(self.tokenizer, prefix, self._decode,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, num_samples=num_samples,
                              uniform=seeded_uniform(seed), stop=stop, strict=strict,
                              on_text=on_text)

    def stream(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
               temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: str | None = None,
               top: int = 10) -> Iterator[TokenStep]:
        """Generate as ``generate`` does, one :class:`TokenStep` per new token.

        Same warm-up, stepper and sampling as ``generate`` (the same seed gives the same
        tokens). Knobs are checked when the first step is asked for.

        Args:
            prefix, max_new_tokens, temperature, top_k, top_p, seed, stop: as ``generate``.
            top: how many likeliest tokens each step lists (0 for none).

        Yields:
            :class:`TokenStep`, until ``max_new_tokens`` or the stop string.

        Raises:
            ConfigError: a knob or the seed out of range, or ``top`` < 0.
        """
        check_sampling(temperature, top_k, top_p)
        check_count("max_new_tokens", max_new_tokens)
        check_seed(seed)
        check_top(top)
        prefix_ids = encode_prefix(self.tokenizer, prefix)
        pick = make_pick(temperature=temperature, top_k=top_k, top_p=top_p,
                         uniform=seeded_uniform(seed))
        steps = self._decode(prefix_ids, 1, max_new_tokens, pick, temperature == 0)
        yield from token_stream(self.tokenizer, prefix_ids, steps,
                                max_new_tokens=max_new_tokens, stop=stop, top=top)

    def score(self, text: str, *, top: int = 0) -> TextScore:
        """Log-probability of each token of ``text`` given the tokens before it.

        The first token is scored from where generation starts (the prediction after
        ``<bos>`` when the vocabulary has it, else the zero state's), then the text is read
        in one pass with the state carried, as the training loss and ``seqlm evaluate`` read
        it. Tokens outside the vocabulary are scored as ``<unk>``, with an
        :class:`~seqlm.decoding.OOVWarning` naming them (the figure then says little about
        the text: check ``unknown``).

        Args:
            text: the text to score.
            top: also keep the ``top`` likeliest tokens at each position (0: none).

        Returns:
            A :class:`TextScore` of the N tokens.

        Raises:
            ConfigError: the text has no tokens, or ``top`` < 0.
        """
        check_top(top)
        ids = text_ids(self.tokenizer, text)
        result = text_score(self.tokenizer, text, ids, self._logits(ids), top)
        if result.unknown.any():
            unknown = [t for t, u in zip(result.tokens, result.unknown) if u]
            warn_unknown("text", list(dict.fromkeys(unknown)), stacklevel=2)
        return result

    def perplexity(self, text: str) -> float:
        """exp of the mean NLL of ``text``'s tokens (:meth:`score`'s ``perplexity``; warns
        as it does about tokens outside the vocabulary).

        Raises:
            ConfigError: the text has no tokens.
        """
        return self.score(text).perplexity
