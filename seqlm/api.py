"""Use a trained model from Python: ``seqlm.load(path)`` and the :class:`LanguageModel` it gives.

::

    import seqlm
    lm = seqlm.load("runs/timemachine")
    print(lm.generate("time traveller", max_new_tokens=50))

The object holds the same :class:`~seqlm.models.RNNLM` and tokenizer the command line loads
(:func:`seqlm.checkpoint.load_checkpoint`) and generates through the same code
(:mod:`seqlm.generate`); scoring runs the model's ``forward``. Shapes: N tokens of a text,
V the vocabulary, L layers, H hidden units, k alternatives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqlm.checkpoint import load_checkpoint, resolve_checkpoint
from seqlm.decoding import (MAX_NEW_TOKENS, TEMPERATURE, TextStream, check_count,
                            check_sampling, encode_prefix, softmax)
from seqlm.errors import ConfigError
from seqlm.generate import generate, make_generator, token_steps, warm_up

SCORE_CHUNK = 4096  # tokens per forward call when scoring: bounds the (chunk, V) logits


@dataclass
class TokenStep:
    """One generated token, as :meth:`LanguageModel.stream` yields it.

    Attributes:
        text: the text this token adds to the output ('' while a stop string or a
            multi-byte character is still undecided; the held text comes with a later step,
            the last step carries what remains). The steps' texts add up to the continuation
            :meth:`LanguageModel.generate` returns.
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
    """Per-token log-probabilities of a text, as :meth:`LanguageModel.score` returns them.

    Attributes:
        tokens: (N) the text of each token (for char and word tokenizers the token as it
            appears in the text, also when the vocabulary lacks it).
        ids: (N,) int64 token ids (0, ``<unk>``, for unknown tokens).
        logprobs: (N,) float64 natural-log probability of each token given the ones before.
        unknown: (N,) bool, the token is outside the vocabulary (scored as ``<unk>``).
        top_ids: (N, k) int64 the k most likely tokens at each position, or (N, 0).
        top_logprobs: (N, k) float64 their log-probabilities, or (N, 0).
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


def load(path: str | Path, *, device: str = "cpu") -> LanguageModel:
    """Load a trained model: a run directory (its ``checkpoints/best`` if present, else
    ``checkpoints/last``) or a checkpoint directory.

    Args:
        path: the directory.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'mps'`` or ``'auto'``.

    Returns:
        A :class:`LanguageModel`.

    Raises:
        CheckpointError: ``path`` holds no checkpoint, or a file of it is missing or corrupt.
        ConfigError: ``device`` is not available.
    """
    found = resolve_checkpoint(path)
    ckpt = load_checkpoint(found, device=device)
    which = found.name.strip(".").removesuffix(".old")  # an interrupted save's sibling
    in_run = found.parent.name == "checkpoints" and which in ("best", "last")
    name = found.resolve().parent.parent.name if in_run else found.name
    return LanguageModel(ckpt.model, ckpt.tokenizer, ckpt.config, found, name=name,
                         checkpoint=which if in_run else "checkpoint")


class LanguageModel:
    """A trained recurrent language model with its tokenizer: generate, stream, score.

    Attributes:
        model: the :class:`~seqlm.models.RNNLM` (in eval mode).
        tokenizer: the tokenizer it was trained with.
        config: the checkpoint's config.json as a dict (``"model"``, ``"data"``, ...).
        path: the checkpoint directory that was read.
        name: the run's name (its directory), or the checkpoint directory's name.
        checkpoint: ``'best'`` or ``'last'`` when loaded from a run, else ``'checkpoint'``.
        vocab_size: V.
    """

    def __init__(self, model, tokenizer, config: dict, path: Path, *, name: str,
                 checkpoint: str = "checkpoint") -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.path, self.name, self.checkpoint = Path(path), name, checkpoint
        self.vocab_size = model.config.vocab_size

    def __repr__(self) -> str:
        c = self.model.config
        return (f"LanguageModel({self.name!r}, {self.checkpoint}, {c.cell} x{c.num_layers} "
                f"H={c.hidden_size}, vocab {self.vocab_size}, {self.tokenizer.kind} tokens)")

    def generate(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
                 temperature: float = TEMPERATURE, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 stop: str | None = None) -> str:
        """Continue ``prefix``: :func:`seqlm.generate.generate` with one sample.

        Args:
            prefix: text to continue ('' starts from ``<bos>`` or the zero state).
            max_new_tokens: tokens to produce (≥ 1).
            temperature: 0 (the default) is greedy; > 0 samples.
            top_k, top_p: keep only the k likeliest / the nucleus of mass p when sampling.
            seed: the same seed gives the same text; None draws fresh entropy.
            stop: end where this text appears; the result ends just before it.

        Returns:
            The prefix followed by the continuation.

        Raises:
            ConfigError: a knob out of range (the message names it).
        """
        return generate(self.model, self.tokenizer, prefix, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        stop=stop)[0]

    def stream(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
               temperature: float = TEMPERATURE, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: str | None = None,
               top: int = 10) -> Iterator[TokenStep]:
        """Generate as :meth:`generate` does, one :class:`TokenStep` per new token.

        Same warm-up, stepper and sampling as :meth:`generate` (the same seed gives the same
        tokens). Knobs are checked when the first step is asked for.

        Args:
            prefix, max_new_tokens, temperature, top_k, top_p, seed, stop: as :meth:`generate`.
            top: how many likeliest tokens each step lists (0 for none).

        Yields:
            :class:`TokenStep`, until ``max_new_tokens`` or the stop string.

        Raises:
            ConfigError: a knob out of range, or ``top`` < 0.
        """
        check_sampling(temperature, top_k, top_p)
        check_count("max_new_tokens", max_new_tokens)
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise ConfigError(f"top={top!r} must be an integer >= 0")
        generator = make_generator(self.model, seed)
        prefix_ids = encode_prefix(self.tokenizer, prefix)
        text = TextStream(self.tokenizer, prefix_ids, stop)
        logits, state = warm_up(self.model, self.tokenizer, prefix_ids)
        with torch.inference_mode():
            steps = token_steps(self.model, logits, state, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p,
                                generator=generator)
            for i, (token, scores) in enumerate(steps):
                token_id = int(token[0])
                piece = text.push(token_id)
                if i + 1 == max_new_tokens:
                    piece += text.flush()
                yield self._step(piece, token_id, _numpy(scores)[0], top)
                if text.done:
                    return

    def _step(self, piece: str, token_id: int, logits: np.ndarray, top: int) -> TokenStep:
        probs = softmax(logits)
        best = np.argsort(-probs, kind="stable")[:top]
        nonzero = probs[probs > 0]
        return TokenStep(text=piece, id=token_id, prob=float(probs[token_id]),
                         top=[(self.tokenizer.decode([int(i)]), float(probs[i])) for i in best],
                         entropy=float(-(nonzero * np.log(nonzero)).sum()))

    def score(self, text: str, *, top: int = 0) -> TextScore:
        """Log-probability of each token of ``text`` given the tokens before it.

        The first token is scored from where generation starts (the prediction after
        ``<bos>`` when the vocabulary has it, else the zero state's), then the text is read
        in one pass with the state carried, as the training loss and ``seqlm evaluate`` read
        it.

        Args:
            text: the text to score.
            top: also keep the ``top`` likeliest tokens at each position (0: none).

        Returns:
            A :class:`TextScore` of the N tokens.

        Raises:
            ConfigError: the text has no tokens, or ``top`` < 0.
        """
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise ConfigError(f"top={top!r} must be an integer >= 0")
        ids = self._ids(text)
        parts = [_rows(rows, target, top) for rows, target in self._log_softmax(ids)]
        logprobs, top_ids, top_logprobs = (np.concatenate(p) for p in zip(*parts))
        return TextScore(tokens=token_texts(self.tokenizer, text, ids), ids=ids,
                         logprobs=logprobs, unknown=ids == self.tokenizer.vocab.unk,
                         top_ids=top_ids, top_logprobs=top_logprobs)

    def perplexity(self, text: str) -> float:
        """exp of the mean NLL of ``text``'s tokens (:meth:`score`'s ``perplexity``).

        Raises:
            ConfigError: the text has no tokens.
        """
        return self.score(text).perplexity

    def states(self, text: str, *, cell: bool = False) -> np.ndarray:
        """Hidden states after each token of ``text``, every layer.

        The text is read from where generation starts (after ``<bos>`` when the vocabulary
        has it, else from the zero state), one token at a time through the model's stepper.

        Args:
            text: the text to read.
            cell: for an LSTM, return the cell states c instead of h.

        Returns:
            (L, N, H) float array: position n holds the state after token n.

        Raises:
            ConfigError: the text has no tokens, or ``cell`` for a model that is not an LSTM.
        """
        lstm = self.model.config.cell == "lstm"
        if cell and not lstm:
            raise ConfigError(f"cell=True needs an LSTM; this model's cell is "
                              f"{self.model.config.cell!r}, whose state is h alone")
        ids = self._ids(text)
        state = warm_up(self.model, self.tokenizer, [])[1]
        with torch.inference_mode():
            step = self.model.stepper(batch_size=1)
            device = next(self.model.parameters()).device
            out = []
            for token in torch.from_numpy(ids).to(device).view(-1, 1):
                _, state = step(token, state)
                part = (state[1] if cell else state[0]) if lstm else state
                out.append(_numpy(part)[:, 0].copy())
        return np.stack(out, axis=1)

    def _ids(self, text: str) -> np.ndarray:
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        if not len(ids):
            raise ConfigError(f"text {text[:40]!r} has no tokens for this {self.tokenizer.kind} "
                              "tokenizer; pass at least one token of text")
        return ids

    def _log_softmax(self, ids: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """``(log-probabilities (n, V) float64, targets (n,))`` chunk by chunk over ``ids``:
        the first row from the warm-up's prediction, the rest from ``forward`` with the
        state carried, at most :data:`SCORE_CHUNK` rows at a time."""
        model, device = self.model, next(self.model.parameters()).device
        logits, state = warm_up(model, self.tokenizer, [])  # (1, V): the first token's
        yield logits.double().log_softmax(-1), ids[:1]
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(ids) - 1, SCORE_CHUNK):
                chunk = ids[start:start + SCORE_CHUNK]
                with torch.inference_mode():
                    tokens = torch.from_numpy(chunk).to(device).view(1, -1)
                    logits, state = model(tokens, state)
                yield logits[0].double().log_softmax(-1), ids[start + 1:start + 1 + len(chunk)]
        finally:
            model.train(was_training)


def _rows(logprobs: torch.Tensor, targets: np.ndarray, top: int):
    """Each row's log-probability of its target, and its ``top`` best (ids, log-probs)."""
    logprobs = logprobs[:len(targets)]  # the last chunk predicts one token past the text
    target = torch.from_numpy(targets).to(logprobs.device).view(-1, 1)
    best = logprobs.topk(top, dim=-1)
    return (logprobs.gather(1, target)[:, 0].cpu().numpy(), best.indices.cpu().numpy(),
            best.values.cpu().numpy())


def token_texts(tokenizer, text: str, ids: np.ndarray) -> list[str]:
    """The text of each of ``ids`` (``tokenizer.encode(text)``): char and word tokens as the
    text has them, BPE tokens decoded one by one."""
    if tokenizer.kind in ("char", "word"):
        return list(tokenizer.tokens(text))
    return [tokenizer.decode([int(i)]) for i in ids]


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array
