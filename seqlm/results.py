"""What a loaded model returns when it streams and scores: :class:`TokenStep` and
:class:`TextScore`, and the numpy code that builds them from logits (no torch).

Both model objects build their results here: :class:`seqlm.api.LanguageModel` (torch) and
:class:`seqlm.runtime.OnnxLanguageModel` (onnxruntime). Shapes: N tokens, V the vocabulary,
k alternatives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from seqlm.decoding import TextStream, log_softmax, softmax
from seqlm.errors import ConfigError


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
    """

    tokens: list[str]
    ids: np.ndarray
    logprobs: np.ndarray
    unknown: np.ndarray
    top_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    top_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

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


def check_top(top: object) -> None:
    """Raise :class:`ConfigError` unless ``top`` is an integer >= 0."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ConfigError(f"top={top!r} must be an integer >= 0")


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
        parts.append((np.take_along_axis(logprobs, targets[:, None], -1)[:, 0], best,
                      np.take_along_axis(logprobs, best, -1)))
    logprobs, top_ids, top_logprobs = (np.concatenate(p) for p in zip(*parts))
    return TextScore(tokens=token_texts(tokenizer, text, ids), ids=ids, logprobs=logprobs,
                     unknown=ids == tokenizer.vocab.unk, top_ids=top_ids.astype(np.int64),
                     top_logprobs=top_logprobs)


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
        probs = softmax(np.asarray(logits)[0])
        best = np.argsort(-probs, kind="stable")[:top]
        nonzero = probs[probs > 0]
        yield TokenStep(text=piece, id=token_id, prob=float(probs[token_id]),
                        top=[(tokenizer.decode([int(i)]), float(probs[i])) for i in best],
                        entropy=float(-(nonzero * np.log(nonzero)).sum()))
        if text.done:
            return
