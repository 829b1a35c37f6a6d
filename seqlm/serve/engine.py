"""What the playground asks of a model: per-token generation, scoring and hidden states.

This module is the playground's only door to the model. Every figure the page shows comes
from the three functions here, so the page, the API and the tests all see the same numbers:

* :func:`stream` warms up on a prefix (reporting how likely the model found each prefix
  token) and then samples, yielding one :class:`TokenStep` per token;
* :func:`score` gives the log-probability of every token of a text (:class:`TextScore`);
* :func:`states` gives the hidden state after every token, per layer: (L, N, H).

Probabilities, the top alternatives and the entropy are those of the model's own
distribution (temperature 1), whatever temperature the sample was drawn at. The warm-up and
the decoding loop follow :func:`seqlm.generate.generate`: the prefix is read in one forward
call, then each token goes through :meth:`RNNLM.stepper <seqlm.models.RNNLM.stepper>` and is
picked by :func:`seqlm.generate.sample_next`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from seqlm.errors import ConfigError
from seqlm.generate import BOS, check_sampling, encode_prefix, sample_next

LN2 = math.log(2.0)
TOP = 10  # alternatives reported per step


@dataclass
class TokenStep:
    """One token and what the model thought of it at that step.

    Attributes:
        text: the token's text as it appears in the decoded output.
        id: its vocabulary index.
        prob: the probability the model gave it (None for the first token of a text, which
            nothing predicts).
        top: the ``TOP`` likeliest next tokens at that step, ``[(text, prob), ...]``.
        entropy: entropy of the model's next-token distribution at that step, in bits.
    """

    text: str
    id: int
    prob: float | None
    top: list[tuple[str, float]]
    entropy: float | None


@dataclass
class TextScore:
    """Per-token log-probabilities of a text.

    Attributes:
        tokens: the text of each token (they concatenate to the decoded text).
        ids: their vocabulary indices.
        logprobs: natural-log probability of each token given the ones before; the first
            token has none (NaN).
        unknown: True where the token is outside the vocabulary (read as ``<unk>``).
        perplexity: exp(mean NLL) over the predicted tokens.
        bits_per_token: mean NLL in bits over the predicted tokens.
    """

    tokens: list[str]
    ids: list[int]
    logprobs: list[float]
    unknown: list[bool]
    perplexity: float
    bits_per_token: float


def pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded string, so that ``"".join`` is the decode.

    Char tokens are their own text; other tokenizers decode with context (word spacing, BPE
    byte pieces), so each piece is the growth of the decoded prefix.
    """
    if tokenizer.kind == "char":
        return tokenizer.vocab.decode(ids)
    out, before = [], ""
    for i in range(len(ids)):
        now = tokenizer.decode(ids[: i + 1])
        out.append(now[len(before):] if now.startswith(before) else now)
        before = now
    return out


def text_pieces(tokenizer, text: str, ids: list[int]) -> list[str]:
    """:func:`pieces` of ``tokenizer.encode(text)``, with each unknown char or word token
    shown as the text has it rather than as ``<unk>``."""
    decoded = pieces(tokenizer, ids)
    if tokenizer.kind not in ("char", "word"):
        return decoded
    originals = tokenizer.tokens(text)
    if len(originals) != len(ids):
        return decoded
    known = tokenizer.vocab.token_to_idx
    return [piece if word in known else piece.replace(tokenizer.vocab.decode([i])[0], word)
            for piece, word, i in zip(decoded, originals, ids)]


def _distribution(logits: np.ndarray) -> np.ndarray:
    """Softmax of one row of logits, in float64."""
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z)
    return p / p.sum()


def _summary(tokenizer, probs: np.ndarray) -> tuple[list[tuple[str, float]], float]:
    """The top alternatives and the entropy (bits) of one next-token distribution."""
    k = min(TOP, len(probs))
    best = np.argpartition(-probs, k - 1)[:k]
    best = best[np.argsort(-probs[best])]
    words = tokenizer.vocab.decode(best.tolist())
    nz = probs[probs > 0]
    return ([(w, float(probs[i])) for w, i in zip(words, best)],
            float(-(nz * np.log(nz)).sum() / LN2))


def _forward(model, ids: list[int]) -> np.ndarray:
    """(N, V) float64 next-token probabilities after each of ``ids`` (one forward call)."""
    tokens = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    with torch.inference_mode():
        logits, _ = model(tokens)
    return torch.softmax(logits[0].double(), dim=-1).cpu().numpy()


def check_knobs(*, max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None) -> None:
    """The library's sampling rules (:func:`seqlm.generate.check_sampling`) plus the length.

    Raises:
        ConfigError: naming the knob and the value.
    """
    check_sampling(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")


def stream(model, tokenizer, prefix: str, *, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stepper=None) -> tuple[list[TokenStep], Iterator[TokenStep]]:
    """Warm up on ``prefix``, then sample ``max_new_tokens`` tokens one at a time.

    Args:
        model: an :class:`seqlm.models.RNNLM` in eval mode.
        tokenizer: its tokenizer.
        prefix: the text to continue (may be empty).
        max_new_tokens, temperature, top_k, top_p: as :func:`seqlm.generate.generate`.
        seed: seed of the sampling generator (None: fresh entropy).
        stepper: a ``model.stepper(batch_size=1)`` to reuse (it is read-only); None builds one.

    Returns:
        ``(warm_up, steps)``: a :class:`TokenStep` per prefix token (the first without a
        probability), and an iterator yielding one per generated token.

    Raises:
        ConfigError: a knob is out of range.
    """
    check_knobs(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                top_p=top_p)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    ids = encode_prefix(tokenizer, prefix) if prefix else []
    start = ids or ([tokenizer.vocab.token_to_idx[BOS]] if BOS in tokenizer.vocab.token_to_idx
                    else [])
    warm = _warm_steps(model, tokenizer, ids, text_pieces(tokenizer, prefix, ids)) if ids else []
    step = stepper or model.stepper(batch_size=1)

    def steps() -> Iterator[TokenStep]:
        with torch.inference_mode():
            if start:
                tokens = torch.tensor([start], dtype=torch.long, device=device)
                logits, state = model(tokens)
                logits = logits[:, -1]
            else:
                state = model.begin_state(1, device=device)
                logits = model.next_logits(state)
            context = list(ids)
            for n in range(max_new_tokens):
                token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                    generator=generator)
                probs = _distribution(logits[0].float().cpu().numpy())
                top, entropy = _summary(tokenizer, probs)
                token_id = int(token[0])
                text = pieces(tokenizer, context[-1:] + [token_id])[-1] if context \
                    else tokenizer.decode([token_id])
                context.append(token_id)
                yield TokenStep(text, token_id, float(probs[token_id]), top, entropy)
                if n + 1 < max_new_tokens:
                    logits, state = step(token, state)

    return warm, steps()


def _warm_steps(model, tokenizer, ids: list[int], texts: list[str]) -> list[TokenStep]:
    """The prefix as steps: each token with the probability the model gave it from the
    tokens before (and the alternatives it preferred)."""
    probs = _forward(model, ids)  # row t: the distribution of token t + 1
    out = [TokenStep(texts[0], ids[0], None, [], None)]
    for t in range(1, len(ids)):
        top, entropy = _summary(tokenizer, probs[t - 1])
        out.append(TokenStep(texts[t], ids[t], float(probs[t - 1, ids[t]]), top, entropy))
    return out


def score(model, tokenizer, text: str) -> tuple[TextScore, list[TokenStep]]:
    """Log-probability of every token of ``text`` under the model (one forward call).

    Returns:
        The :class:`TextScore` and the same tokens as :class:`TokenStep` (with the top
        alternatives and entropy at each step, for the page's hover).

    Raises:
        ConfigError: the text has fewer than two tokens (nothing to predict).
    """
    ids = [int(i) for i in tokenizer.encode(text)]
    if len(ids) < 2:
        raise ConfigError(f"text has {len(ids)} token(s); scoring needs at least 2")
    known = tokenizer.vocab.token_to_idx
    unknown = [t not in known for t in tokenizer.tokens(text)]
    if len(unknown) != len(ids):  # a tokenizer whose split and ids differ (BPE specials)
        unknown = [i == 0 and "<unk>" in known for i in ids]
    steps = _warm_steps(model, tokenizer, ids, text_pieces(tokenizer, text, ids))
    logprobs = [math.nan] + [math.log(max(s.prob, 1e-300)) for s in steps[1:]]
    nll = -sum(logprobs[1:]) / (len(ids) - 1)
    result = TextScore([s.text for s in steps], ids, logprobs, unknown,
                       math.exp(nll) if nll < 700 else math.inf, nll / LN2)
    return result, steps


def states(model, tokenizer, text: str) -> tuple[np.ndarray, list[str]]:
    """The hidden state h after every token of ``text``, per layer.

    For an LSTM this is h (not the cell c). Computed token by token with the model's stepper,
    which equals :meth:`forward` in eval mode.

    Returns:
        ``(h (L, N, H) float32, token texts (N,))``.

    Raises:
        ConfigError: ``text`` has no tokens.
    """
    ids = [int(i) for i in tokenizer.encode(text)]
    if not ids:
        raise ConfigError("text has no tokens; give some text to look at")
    device = next(model.parameters()).device
    step = model.stepper(backend="torch")
    state = model.begin_state(1, device=device)
    rows = []
    with torch.inference_mode():
        for token in torch.tensor(ids, dtype=torch.long, device=device):
            _, state = step(token.view(1), state)
            h = state[0] if isinstance(state, tuple) else state
            rows.append(h[:, 0].float().cpu())
    return torch.stack(rows, dim=1).numpy(), text_pieces(tokenizer, text, ids)
