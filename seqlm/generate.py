"""Text generation with a torch model: the warm-up on the prefix and the decoding loop on the
model's one-token stepper, driven by :func:`seqlm.decoding.generate_texts` (the driver the
ONNX runtime uses too).

The loop follows the book's ``predict_ch8``: the prefix is read first to set the state
(warm-up; its predictions are ignored), then each produced token is fed back one at a time.
Unlike the book, the prefix is read in one forward call, several samples run as one batch,
and the next token may be sampled rather than taken greedily: the pick is
:func:`seqlm.decoding.make_pick`, a pure function of the logits and the knobs (temperature,
top-k, top-p) drawing from an explicit uniform source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import torch

from seqlm.config import DEFAULT_TEMPERATURE
from seqlm.decoding import (BOS, MAX_NEW_TOKENS, OOVWarning, Decode, check_sampling,
                            encode_prefix, generate_texts, seeded_uniform, warm_up_ids)
from seqlm.errors import ConfigError

__all__ = ["BOS", "OOVWarning", "check_sampling", "decoder", "encode_prefix", "generate",
           "warm_up"]


def _torch_uniform(generator: torch.Generator, n: int) -> np.ndarray:
    """(n,) float64 numbers in [0, 1) from ``generator``."""
    return torch.rand(n, generator=generator, device=generator.device,
                      dtype=torch.float64).cpu().numpy()


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
    bias). Then each new token is picked (:func:`seqlm.decoding.make_pick`) and fed back with
    the carried state through the model's stepper (:func:`decoder`). The model runs in eval
    mode without autograd and is put back in its previous mode afterwards.

    Args:
        model: an :class:`seqlm.models.RNNLM`.
        tokenizer: the tokenizer the model was trained with.
        prefix: text to continue.
        max_new_tokens: tokens to produce per sample (≥ 1).
        temperature: ≥ 0; below 1 sharpens, above 1 flattens the distribution; 0 is the
            book's greedy decoding (default :data:`seqlm.config.DEFAULT_TEMPERATURE`).
        top_k: sample among the k most likely tokens (None: all).
        top_p: sample among the smallest set of most likely tokens whose probability
            reaches p (the nucleus; the most likely token always stays).
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
    if seed is not None and generator is not None:
        raise ConfigError("pass either `seed` or `generator`, not both")
    uniform = seeded_uniform(seed) if generator is None else partial(_torch_uniform, generator)
    return generate_texts(tokenizer, prefix, decoder(model, tokenizer),
                          max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, num_samples=num_samples, uniform=uniform, stop=stop,
                          strict=strict, on_text=on_text)


def decoder(model, tokenizer) -> Decode:
    """The torch backend of :func:`seqlm.decoding.generate_texts`: :func:`warm_up`, then the
    decoding loop on ``model``'s one-token stepper (:meth:`Stepper.steps
    <seqlm.models.stepper.Stepper.steps>`: a row gather and one cell update per layer rather
    than a ``forward`` call on a (B, 1) batch). A single float32 CPU stream steps in numpy,
    and then tokens and logits are numpy arrays, else torch tensors on the model's device."""

    def decode(prefix_ids: list[int], n: int, max_new_tokens: int, pick: Callable,
               greedy: bool) -> Iterator[tuple]:
        logits, state = warm_up(model, tokenizer, prefix_ids, n)
        stepper = model.stepper(batch_size=n)
        return stepper.steps(logits, state, max_new_tokens, pick, greedy=greedy)

    return decode


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
