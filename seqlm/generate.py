"""Text generation: a pure :func:`sample_next` and a loop that warms up on the prefix.

The loop follows the book's ``predict_ch8``: the prefix is read first to set the state
(warm-up; its predictions are ignored), then each produced token is fed back one at a time.
Unlike the book, the prefix is read in one forward call, several samples run as one batch,
and the next token may be sampled rather than taken greedily.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor

from seqlm.decoding import (BOS, MAX_NEW_TOKENS, TEMPERATURE, OOVWarning, TextStream,
                            check_count, check_sampling, decode_steps, draw, encode_prefix,
                            next_token_probs, stream_text, warm_up_ids)
from seqlm.errors import ConfigError
from seqlm.models.cpu_step import NumpyStepper

__all__ = ["BOS", "OOVWarning", "check_sampling", "encode_prefix", "generate",
           "make_generator", "sample_next", "token_steps", "warm_up"]


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row of ``logits``.

    With temperature 0 the pick is the argmax (the book's greedy decoding). Otherwise the
    logits are divided by the temperature, cut to the ``top_k`` largest, then to the smallest
    set whose probability reaches ``top_p`` (the nucleus; the most likely token always stays),
    and one token is drawn from the softmax of what is left: the cumulative distribution is
    inverted at one uniform number per row from ``generator``. The distribution and the draw
    are :func:`seqlm.decoding.next_token_probs` and :func:`seqlm.decoding.draw`, shared with
    the torch-free runtime; they run in numpy on the host, so sampling a CUDA model's logits
    copies them once per token (greedy decoding does not).

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
    ids = _pick_numpy(logits.detach().float().cpu().numpy(), temperature, top_k, top_p,
                      generator)
    return torch.from_numpy(ids).to(logits.device)


def _pick_numpy(logits: np.ndarray, temperature: float, top_k: int | None,
                top_p: float | None, generator: torch.Generator | None) -> np.ndarray:
    """The sampling pick on numpy (N, V) logits: the shared distribution and draw of
    :mod:`seqlm.decoding`, with one uniform number per row from ``generator``."""
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    device = generator.device if generator is not None else "cpu"
    uniform = torch.rand(len(probs), generator=generator, device=device, dtype=torch.float64)
    return draw(probs, uniform.cpu().numpy())


def generate(model, tokenizer, prefix: str, *, max_new_tokens: int = MAX_NEW_TOKENS,
             temperature: float = TEMPERATURE, top_k: int | None = None,
             top_p: float | None = None, num_samples: int = 1, seed: int | None = None,
             generator: torch.Generator | None = None, stop: str | None = None,
             strict: bool = False,
             on_text: Callable[[int, str], None] | None = None) -> list[str]:
    """Continue ``prefix`` with ``max_new_tokens`` tokens, ``num_samples`` times in one batch.

    Warm-up (:func:`warm_up`): the prefix is read in one forward call from the zero state,
    and only the last logits are kept; an empty prefix starts from ``<bos>`` when the
    vocabulary has it, else from the zero state (whose next-token logits are the decoder
    bias). Then each new token is drawn with :func:`sample_next` and fed back with the
    carried state (:func:`token_steps`). The model runs in eval mode under
    ``torch.inference_mode()`` and is put back in its previous mode afterwards.

    Args:
        model: an :class:`seqlm.models.RNNLM`.
        tokenizer: the tokenizer the model was trained with.
        prefix: text to continue.
        max_new_tokens: tokens to produce per sample (≥ 1).
        temperature, top_k, top_p: as :func:`sample_next`; the default 0 is the book's greedy
            decoding, which makes every sample identical.
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
    check_count("max_new_tokens", max_new_tokens)
    check_count("num_samples", num_samples)
    generator = make_generator(model, seed, generator)
    prefix_ids = encode_prefix(tokenizer, prefix, strict=strict)
    streams = [TextStream(tokenizer, prefix_ids, stop) for _ in range(num_samples)]
    logits, state = warm_up(model, tokenizer, prefix_ids, num_samples)
    with torch.inference_mode():
        steps = token_steps(model, logits, state, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            generator=generator)
        tokens = stream_text(steps, streams if (stop or on_text) else None, on_text)
    stack = np.stack if isinstance(tokens[0], np.ndarray) else torch.stack
    new_ids = stack(tokens, 1).tolist()
    if stop is None:
        return [tokenizer.decode(prefix_ids + row) for row in new_ids]
    return [s.prefix_text + s.generated for s in streams]


def make_generator(model, seed: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Generator:
    """``generator``, or a fresh one on the model's device seeded with ``seed`` (or entropy).

    Raises:
        ConfigError: both ``seed`` and ``generator`` given.
    """
    if seed is not None and generator is not None:
        raise ConfigError("pass either seed or generator to generate, not both")
    if generator is not None:
        return generator
    generator = torch.Generator(device=next(model.parameters()).device)
    if seed is None:
        generator.seed()  # fresh entropy, still never torch's global generator
    else:
        generator.manual_seed(seed)
    return generator


def warm_up(model, tokenizer, prefix_ids: Sequence[int], num_samples: int = 1):
    """Read the prefix once (:func:`seqlm.decoding.warm_up_ids` says what is read) in eval
    mode under ``torch.inference_mode()``, restoring the model's mode after.

    Returns:
        ``(logits (num_samples, V), state)``: the scores of the first new token and the
        state after the prefix, each row the same.
    """
    ids = warm_up_ids(tokenizer, list(prefix_ids))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if not ids:
                state = model.begin_state(num_samples, device=device)
                return model.next_logits(state), state
            tokens = torch.tensor(ids, dtype=torch.long, device=device).expand(num_samples, -1)
            logits, state = model(tokens)
            return logits[:, -1], state
    finally:
        model.train(was_training)


def token_steps(model, logits: Tensor, state, *, max_new_tokens: int, temperature: float,
                top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> Iterator[tuple]:
    """The decoding loop of :func:`seqlm.decoding.decode_steps` on ``model``'s stepper.

    Each token goes through :meth:`RNNLM.stepper <seqlm.models.RNNLM.stepper>` (a row gather
    and one cell update per layer) rather than a full ``forward`` call on a (B, 1) batch; a
    single float32 stream on the CPU steps in numpy (:mod:`seqlm.models.cpu_step`), and then
    tokens and logits are numpy arrays, else torch tensors on the model's device. The knobs
    are not checked here (:func:`check_sampling` does that).

    Args:
        model: an :class:`seqlm.models.RNNLM`.
        logits, state: from :func:`warm_up`; logits (B, V).
        max_new_tokens, temperature, top_k, top_p, generator: as :func:`generate`.

    Yields:
        ``(tokens (B,), logits (B, V))`` per new token, the logits it was picked from.
    """
    advance = model.stepper(batch_size=logits.shape[0])
    pick = partial(_pick, temperature=temperature, top_k=top_k, top_p=top_p,
                   generator=generator)
    if isinstance(advance, NumpyStepper):  # ids, logits and state stay numpy arrays
        logits, state = logits.numpy(), advance.numpy_state(state)
        pick = partial(np.argmax, axis=-1) if temperature == 0 else partial(
            _pick_numpy, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        advance = advance.step
    return decode_steps(advance, logits, state, max_new_tokens, pick)
