"""Text generation: a pure :func:`sample_next` and a loop that warms up on the prefix.

The loop follows the book's ``predict_ch8``: the prefix is read first to set the state
(warm-up; its predictions are ignored), then each produced token is fed back one at a time.
Unlike the book, the prefix is read in one forward call, several samples run as one batch,
and the next token may be sampled rather than taken greedily.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlm.config import DEFAULT_TEMPERATURE
from seqlm.errors import ConfigError, field_error

BOS = "<bos>"
REPLACEMENT_CHAR = "\ufffd"  # a decoder's stand-in for an unfinished multi-byte character


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


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row of ``logits``.

    With temperature 0 the pick is the argmax (the book's greedy decoding). Otherwise the
    logits are divided by the temperature, cut to the ``top_k`` largest, then to the smallest
    set whose probability reaches ``top_p`` (the nucleus; the most likely token always stays),
    and one token is drawn from the softmax of what is left.

    Args:
        logits: (N, V) unnormalised scores.
        temperature: ≥ 0; below 1 sharpens, above 1 flattens the distribution.
        top_k: keep only the k most likely tokens (None: all).
        top_p: keep the smallest set of most likely tokens with total probability ≥ p.
        generator: random source, on the device of ``logits``; None uses torch's default.

    Returns:
        (N,) int64 token ids.

    Raises:
        ConfigError: a knob is out of range (see :func:`check_sampling`).
    """
    check_sampling(temperature, top_k, top_p)
    return _pick(logits, temperature, top_k, top_p, generator)


def _pick(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
          generator: torch.Generator | None) -> Tensor:
    """:func:`sample_next` without the checks (the decoding loop checks the knobs once)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kept, index = scores.topk(top_k, dim=-1)
        scores = torch.full_like(scores, -math.inf).scatter_(-1, index, kept)
    if top_p is not None and top_p < 1.0:
        scores = _nucleus(scores, top_p)
    probs = F.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _nucleus(scores: Tensor, top_p: float) -> Tensor:
    """Mask (−inf) every token outside the smallest top set with probability ≥ ``top_p``."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = F.softmax(sorted_scores, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly better tokens
    drop_sorted = mass_before >= top_p  # the set was already complete before this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, -math.inf)


def encode_prefix(tokenizer, prefix: str, *, strict: bool = False) -> list[int]:
    """Token ids of ``prefix``; unknown tokens become ``<unk>`` with an :class:`OOVWarning`.

    Raises:
        ConfigError: ``strict`` and the prefix holds unknown tokens.
    """
    known = tokenizer.vocab.token_to_idx
    unknown = list(dict.fromkeys(t for t in tokenizer.tokens(prefix) if t not in known))
    if unknown:
        names = ", ".join(repr(t) for t in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        if strict:
            raise ConfigError(f"prefix {prefix!r} holds tokens outside the vocabulary: {names}; "
                              "rephrase the prefix or drop strict to read them as <unk>")
        warnings.warn(f"prefix tokens outside the vocabulary are read as <unk>: {names}",
                      OOVWarning, stacklevel=3)
    return [int(i) for i in tokenizer.encode(prefix)]


class _Stream:
    """Decoded text of one sample, the stop-string check, and the pieces not yet emitted.

    Each token re-decodes the whole sample (quadratic in its length) because only a full
    decode gets word spacing and multi-byte BPE characters right; it runs only when the caller
    streams or gives a stop string.
    """

    def __init__(self, tokenizer, prefix_ids: list[int], stop: str | None) -> None:
        self.tokenizer, self.ids, self.stop = tokenizer, list(prefix_ids), stop
        self.prefix_text = tokenizer.decode(self.ids)
        self.generated = ""  # decoded text after the prefix, cut before a stop string
        self.emitted = 0  # characters of ``generated`` already handed to on_text
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
        end = len(self.generated) if end is None else end
        piece, self.emitted = self.generated[self.emitted:end], max(self.emitted, end)
        return piece


def generate(model, tokenizer, prefix: str, *, max_new_tokens: int,
             temperature: float = DEFAULT_TEMPERATURE,
             top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
             seed: int | None = None, generator: torch.Generator | None = None,
             stop: str | None = None, strict: bool = False,
             on_text: Callable[[int, str], None] | None = None) -> list[str]:
    """Continue ``prefix`` with ``max_new_tokens`` tokens, ``num_samples`` times in one batch.

    Warm-up: the prefix is read in one forward call from the zero state, and only the last
    logits are kept; an empty prefix starts from ``<bos>`` when the vocabulary has it, else
    from the zero state (whose next-token logits are the decoder bias). Then each new token is
    drawn with :func:`sample_next` and fed back with the carried state. The model runs in eval
    mode under ``torch.inference_mode()`` and is put back in its previous mode afterwards.

    Args:
        model: an :class:`seqlm.models.RNNLM`.
        tokenizer: the tokenizer the model was trained with.
        prefix: text to continue.
        max_new_tokens: tokens to produce per sample (≥ 1).
        temperature, top_k, top_p: as :func:`sample_next` (default temperature:
            :data:`seqlm.config.DEFAULT_TEMPERATURE`); 0 is the book's greedy decoding.
        num_samples: continuations to produce side by side (≥ 1).
        seed: seed for a fresh generator on the model's device; or pass ``generator``.
        stop: stop a sample where this text appears in its continuation; the returned text
            ends just before it.
        strict: raise instead of warning when the prefix has out-of-vocabulary tokens.
        on_text: called as ``on_text(sample_index, piece)`` with each new piece of decoded text.

    Returns:
        ``num_samples`` strings, each the decoded prefix followed by its continuation.

    Raises:
        ConfigError: a bad knob, ``max_new_tokens`` or ``num_samples`` < 1, both ``seed`` and
            ``generator`` given, or (with ``strict``) unknown prefix tokens.
    """
    check_sampling(temperature, top_k, top_p)
    for name, value in (("max_new_tokens", max_new_tokens), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise field_error(name, value, "an integer >= 1")
    device = next(model.parameters()).device
    generator = make_generator(device, seed, generator)
    prefix_ids = encode_prefix(tokenizer, prefix, strict=strict)
    streams = [_Stream(tokenizer, prefix_ids, stop) for _ in range(num_samples)]
    knobs = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits, state = _warm_up(model, tokenizer, prefix_ids, num_samples, device)
            new_ids = _decode_loop(model, logits, state, max_new_tokens, knobs,
                                   streams if (stop or on_text) else None, on_text)
    finally:
        model.train(was_training)
    if stop is None:
        return [tokenizer.decode(prefix_ids + row) for row in new_ids]
    return [s.prefix_text + s.generated for s in streams]


def make_generator(device: torch.device, seed: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Generator:
    """``generator`` itself, or a new one on ``device`` seeded with ``seed`` (fresh entropy
    when None; never torch's global generator).

    Raises:
        ConfigError: both ``seed`` and ``generator`` are given.
    """
    if seed is not None and generator is not None:
        raise ConfigError("pass either `seed` or `generator`, not both")
    if generator is not None:
        return generator
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _warm_up(model, tokenizer, prefix_ids: Sequence[int], n: int, device):
    """Read the prefix once; return the (n, V) logits of the first new token and the state."""
    ids = list(prefix_ids)
    if not ids and BOS in tokenizer.vocab.token_to_idx:
        ids = [tokenizer.vocab.token_to_idx[BOS]]
    if not ids:
        state = model.begin_state(n, device=device)
        return model.next_logits(state), state
    tokens = torch.tensor(ids, dtype=torch.long, device=device).expand(n, -1)
    logits, state = model(tokens)
    return logits[:, -1], state


def _decode_loop(model, logits: Tensor, state, max_new_tokens: int, knobs: dict,
                 streams: list[_Stream] | None, on_text) -> list[list[int]]:
    """Sample, feed back, repeat, through the model's one-token stepper (a row gather and one
    cell update per layer, :mod:`seqlm.models.stepper`) rather than a full ``forward`` call on a
    (B, 1) batch. Syncs with the host once per token only when streaming."""
    stepper = model.stepper(batch_size=logits.shape[0])
    on_tokens = None if streams is None else partial(_stream, streams, on_text=on_text)
    tokens = stepper.run(logits, state, max_new_tokens, partial(_pick, **knobs),
                         greedy=knobs["temperature"] == 0, on_tokens=on_tokens)
    if streams is not None and on_text is not None:
        for i, s in enumerate(streams):
            if piece := s.flush():
                on_text(i, piece)
    return tokens


def _stream(streams: list[_Stream], ids: list[int], *, on_text) -> bool:
    """Push one token to each unfinished stream; return True once every stream has stopped."""
    for i, (s, token_id) in enumerate(zip(streams, ids)):
        if s.done:
            continue
        piece = s.push(token_id)
        if piece and on_text is not None:
            on_text(i, piece)
    return all(s.done for s in streams)
