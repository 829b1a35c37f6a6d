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

from seqlm.config import DEFAULT_TEMPERATURE
from seqlm.decoding import (BOS, MAX_NEW_TOKENS, OOVWarning, TextStream, check_count,
                            check_sampling, collect, encode_prefix, flush_all, make_pick,
                            push_all, seeded_uniform, warm_up_ids)
from seqlm.errors import ConfigError

__all__ = ["BOS", "OOVWarning", "check_sampling", "encode_prefix", "generate", "sample_next",
           "token_steps", "warm_up"]


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row of ``logits``.

    With temperature 0 the pick is the argmax (the book's greedy decoding). Otherwise the
    logits are divided by the temperature, cut to the ``top_k`` largest, then to the smallest
    set whose probability reaches ``top_p`` (the nucleus; the most likely token always stays),
    and one token is drawn from the softmax of what is left: the cumulative distribution is
    inverted at one uniform number per row from ``generator``. The distribution and the draw
    are :func:`seqlm.decoding.make_pick`'s, shared with the torch-free runtime; they run in
    numpy on the host, so sampling a CUDA model's logits copies them once per token (greedy
    decoding does not).

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
    if temperature == 0:
        return logits.argmax(dim=-1)
    pick = make_pick(temperature=temperature, top_k=top_k, top_p=top_p,
                     uniform=partial(_torch_uniform, generator))
    return torch.from_numpy(pick(logits.detach().float().cpu().numpy())).to(logits.device)


def _torch_uniform(generator: torch.Generator | None, n: int) -> np.ndarray:
    """(n,) float64 numbers in [0, 1) from ``generator`` (None: torch's default)."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu().numpy()


def generate(model, tokenizer, prefix: str, *, max_new_tokens: int = MAX_NEW_TOKENS,
             temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
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
        temperature, top_k, top_p: as :func:`sample_next` (default temperature:
            :data:`seqlm.config.DEFAULT_TEMPERATURE`); 0 is the book's greedy decoding.
        num_samples: continuations to produce side by side (≥ 1).
        seed: seeds the draws (:func:`seqlm.decoding.seeded_uniform`, the source the ONNX
            runtime uses too: one seed, the same samples on both); None draws fresh entropy.
        generator: draw from this torch generator instead of a seed.
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
    if seed is not None and generator is not None:
        raise ConfigError("pass either `seed` or `generator`, not both")
    uniform = seeded_uniform(seed) if generator is None else partial(_torch_uniform, generator)
    prefix_ids = encode_prefix(tokenizer, prefix, strict=strict)
    streams = [TextStream(tokenizer, prefix_ids, stop) for _ in range(num_samples)]
    logits, state = warm_up(model, tokenizer, prefix_ids, num_samples)
    with torch.inference_mode():
        steps = token_steps(model, logits, state, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            uniform=uniform)
        on_tokens = partial(push_all, streams, on_text=on_text) if (stop or on_text) else None
        tokens = collect(steps, on_tokens)
    if on_tokens is not None and on_text is not None:
        flush_all(streams, on_text)
    stack = np.stack if isinstance(tokens[0], np.ndarray) else torch.stack
    new_ids = stack(tokens, 1).tolist()
    if stop is None:
        return [tokenizer.decode(prefix_ids + row) for row in new_ids]
    return [s.prefix_text + s.generated for s in streams]


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
                uniform: Callable[[int], np.ndarray]) -> Iterator[tuple]:
    """The decoding loop on ``model``'s one-token stepper (:meth:`Stepper.steps
    <seqlm.models.stepper.Stepper.steps>`: a row gather and one cell update per layer, rather
    than a full ``forward`` call on a (B, 1) batch). A single float32 CPU stream steps in
    numpy, and then tokens and logits are numpy arrays, else torch tensors on the model's
    device. The knobs are not checked here (:func:`check_sampling` does that).

    Args:
        model: an :class:`seqlm.models.RNNLM`.
        logits, state: from :func:`warm_up`; logits (B, V).
        max_new_tokens, temperature, top_k, top_p: as :func:`generate`.
        uniform: ``uniform(n)``, n numbers in [0, 1) for the draws
            (:func:`seqlm.decoding.seeded_uniform`).

    Yields:
        ``(tokens (B,), logits (B, V))`` per new token, the logits it was picked from.
    """
    stepper = model.stepper(batch_size=logits.shape[0])
    pick = make_pick(temperature=temperature, top_k=top_k, top_p=top_p, uniform=uniform)
    return stepper.steps(logits, state, max_new_tokens, pick, greedy=temperature == 0)
