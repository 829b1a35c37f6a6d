r"""Reading a text with a trained model that keeps learning as it reads: the neural cache
(Grave, Joulin & Usunier 2017) and dynamic evaluation (Krause et al. 2018, "Dynamic
evaluation of neural sequence models"), alone or together, in one pass (:class:`Reader`,
:func:`read`). The trained weights never change: dynamic evaluation adapts a copy.

The cache (:mod:`seqlm.neural_cache`) remembers the top layer's recent states with the
tokens that followed them and mixes them into the next-token distribution; no weight changes.

Dynamic evaluation (:mod:`seqlm.dynamic_eval`) takes a gradient step on each segment after
scoring it, on a copy of the model, so that the next segment is read by weights adapted to
what came before.

Shapes: B rows read side by side, T positions of a segment, H hidden units, V the
vocabulary, K values of θ, M predicted tokens, k alternatives.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from seqlm.batches import eval_batches
from seqlm.config import READING_ROWS
from seqlm.decoding import (check_count, check_sampling, decode_steps, generate_texts,
                            log_softmax, seeded_uniform, warm_up_ids)
from seqlm.dynamic_eval import (SEGMENT, Adaptation, DynamicSettings, detached, no_cudnn,
                                segment_loss)
from seqlm.errors import ConfigError
from seqlm.generate import generate, warm_up
from seqlm.neural_cache import CacheSettings, NeuralCache, mix
from seqlm.results import TextScore, check_top, text_ids, token_texts

__all__ = ["EVALUATIONS", "ROWS", "SEGMENT", "CacheSettings", "DynamicSettings", "Reader",
           "Reading", "generate_text", "read", "score_text"]
ROWS = READING_ROWS  # rows read side by side: one stream, one cache, one model
EVALUATIONS = ("static", "cache", "dynamic", "cache+dynamic")  # every figure's label


def as_numpy(t: Tensor) -> np.ndarray:
    """A tensor's values on the host, float32 and float64 as they are (bfloat16: float32)."""
    t = t.detach().cpu()
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy()


def top_state(state) -> Tensor:
    """(B, H) the top layer's h of a state (the decoder's input), an LSTM's pair included."""
    return (state[0] if isinstance(state, tuple) else state)[-1]


@dataclass
class Reading:
    """What :func:`read` gives for the M predicted tokens, in reading order (row by row;
    for one row, the order of the text).

    Attributes:
        targets: (M,) int64 the predicted tokens.
        logprobs: (M,) float64 the model's log-probability of each (the trained weights', or
            the adapting copy's for a dynamic read), from float32 logits as ``score`` does.
        cache_logprobs: (K, M) float64 log p_cache of each for each θ of ``thetas``.
        filled: (M,) bool, the cache held entries at that position.
        thetas: the θ values of ``cache_logprobs``.
        top_ids, top_logprobs: (M, k) the likeliest tokens of the mixture ``read`` was asked
            for (k = 0 unless asked).
        seconds: wall time of the read.
    """

    targets: np.ndarray
    logprobs: np.ndarray
    cache_logprobs: np.ndarray
    filled: np.ndarray
    thetas: tuple[float, ...] = ()
    top_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    top_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    seconds: float = 0.0

    def mixed(self, lam: float = 0.0, theta: float | None = None) -> np.ndarray:
        """(M,) log-probabilities of the mixture with λ ``lam`` and the cache of ``theta``
        (one of ``thetas``; λ = 0 gives :attr:`logprobs` exactly)."""
        if lam == 0:
            return self.logprobs.copy()
        k = self.thetas.index(theta)
        return mix(self.logprobs, self.cache_logprobs[k], self.filled, lam)

    def nll(self, lam: float = 0.0, theta: float | None = None) -> float:
        """Mean NLL (nats per token) of :meth:`mixed`."""
        return float(-self.mixed(lam, theta).mean())


class Reader:
    """Reads minibatches in order with the state carried: scores each token, remembers it
    (cache), adapts after each minibatch (dynamic). :func:`read` runs it over a whole text;
    generation continues from where it stopped (:attr:`model`, :attr:`state`,
    :attr:`cache`, :attr:`last_hidden`, :attr:`last_logits`).

    Args:
        model: a trained :class:`~seqlm.models.RNNLM`, put in eval mode; its weights never
            change (dynamic evaluation adapts a deep copy, which :attr:`model` then is).
        cache_size: remember this many positions (None: no cache).
        thetas: the θ values to give p_cache for (each costs a softmax over the cache).
        dynamic: adapt after each minibatch (None: the weights stay).
        prior: the rms rule's mean squared gradients
            (:func:`~seqlm.dynamic_eval.gradient_prior`).
        state: the state to start from (None: zeros).
        top, lam: keep the ``top`` likeliest tokens of the mixture with λ ``lam`` and
            ``thetas[0]`` (0: none).
    """

    def __init__(self, model, *, cache_size: int | None = None, thetas: tuple = (),
                 dynamic: DynamicSettings | None = None, prior: dict | None = None,
                 state=None, top: int = 0, lam: float = 0.0) -> None:
        self.model = copy.deepcopy(model) if dynamic is not None else model  # never the trained
        self.model.eval()
        self.adaptation = (Adaptation(self.model, dynamic, prior) if dynamic is not None
                           else None)
        self.cache = NeuralCache(cache_size) if cache_size else None
        if state is not None and dynamic is not None:  # a warm-up's inference-mode state
            state = tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()
        self.thetas, self.top, self.lam, self.state = tuple(thetas), top, lam, state
        self.device = self.model.reference().device
        self.last_hidden = self.last_logits = None

    def feed(self, X: Tensor, Y: Tensor) -> dict[str, np.ndarray]:
        """Read (B, T) tokens ``X`` whose next tokens are (B, T') ``Y`` (T' ≤ T: the last
        T − T' positions predict past the text and are not scored).

        Returns:
            (B, T') arrays: ``logprobs``, ``filled``, ``cache`` (K, B, T'), and with ``top``
            ``top_ids`` and ``top_logprobs`` (B, T', k).
        """
        X, Y = X.to(self.device), Y.to(self.device)
        targets, T = Y.t(), Y.shape[1]
        adapting = self.adaptation is not None
        with (torch.enable_grad() if adapting else torch.inference_mode()), no_cudnn(
                self.model, adapting):
            h, state = self.model.hidden(X, self.state)
            logits = self.model.decode(h)  # (T, B, V)
            learning = adapting and T and self.adaptation.settings.lr > 0  # lr 0: no step
            loss = segment_loss(logits, targets) if learning else None
        self.state = detached(state)
        self.last_hidden, self.last_logits = h[-1].detach(), logits[-1].detach()
        h, logits = h[:T].detach(), logits[:T].detach()
        model_lp = log_softmax(as_numpy(logits))  # (T, B, V) float64, as ``score`` has it
        out = {"targets": Y.cpu().numpy(),
               "logprobs": np.take_along_axis(model_lp, targets.cpu().numpy()[..., None],
                                              -1)[..., 0].T}
        if self.cache is not None:
            out["cache"] = self.cache.target_logprobs(h, targets, self.thetas).double() \
                .cpu().numpy().transpose(0, 2, 1)
            out["filled"] = np.broadcast_to(self.cache.filled(T).numpy(), Y.shape)
            if self.top:
                cache_lp = self.cache.log_distribution(h, targets, self.thetas[0],
                                                       model_lp.shape[-1]).cpu().numpy()
                model_lp = mix(model_lp, cache_lp, self.cache.filled(T).numpy()[:, None, None],
                               self.lam)
            self.cache.append(h, targets)
        if self.top:
            best = np.argsort(-model_lp, axis=-1, kind="stable")[..., :self.top]
            out["top_ids"] = best.transpose(1, 0, 2)
            out["top_logprobs"] = np.take_along_axis(model_lp, best, -1).transpose(1, 0, 2)
        if loss is not None:
            loss.backward()
            self.adaptation.step()
        return out


def read(model, batches: Iterable[tuple[Tensor, Tensor]], **options) -> Reading:
    """Read ``batches`` with a :class:`Reader` (``options`` are its arguments) and gather
    what it gave, row by row."""
    reader = Reader(model, **options)
    start = time.perf_counter()
    parts = [reader.feed(X, Y) for X, Y in batches]
    seconds = time.perf_counter() - start
    if not parts:
        raise ConfigError("the text to read has fewer than 2 tokens, so nothing to predict; "
                          "give a longer text")

    def joined(key, axis=-1):
        return np.concatenate([p[key] for p in parts], axis=axis)

    logprobs = joined("logprobs").reshape(-1)
    cache = (joined("cache").reshape(len(reader.thetas), -1) if reader.cache is not None
             else np.zeros((0, len(logprobs))))
    filled = (joined("filled").reshape(-1) if reader.cache is not None
              else np.zeros(len(logprobs), bool))
    top = {k: joined(k, 1).reshape(len(logprobs), -1) for k in ("top_ids", "top_logprobs")
           if reader.top}
    return Reading(targets=joined("targets").reshape(-1), logprobs=logprobs,
                   cache_logprobs=cache, filled=filled, thetas=reader.thetas,
                   seconds=seconds, **top)


def text_batches(ids: np.ndarray, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """One row, ``chunk`` tokens at a time: ``(ids[s:s+chunk], ids[s+1:s+1+chunk])`` as
    (1, ·) tensors, the layout ``LanguageModel.score`` reads (the last piece also reads the
    last token, whose prediction is past the text; a one-token text is one such piece)."""
    ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    for start in range(0, max(len(ids) - 1, 1), chunk):
        yield ids[None, start:start + chunk], ids[None, start + 1:start + 1 + chunk]


def split_batches(tokens: np.ndarray, rows: int, segment: int):
    """A split's layout: :func:`seqlm.batches.eval_batches`, the static evaluation's."""
    return eval_batches(tokens, rows, segment)


def cache_steps(reader: Reader, settings: CacheSettings, max_new_tokens: int,
                pick) -> Iterator[tuple]:
    """Generation on the mixture: :func:`seqlm.decoding.decode_steps` from where ``reader``
    stopped (its cache filled by the prompt), each new token remembered with the state
    it followed.

    Args:
        reader: a :class:`Reader` with a cache of θ ``settings.theta``, after the prompt.
        settings: λ and θ of the mixture.
        max_new_tokens, pick: as :func:`~seqlm.decoding.decode_steps`.

    Yields:
        ``(tokens (1,), log-probabilities (1, V))``, numpy: each new token and the mixture
        it was drawn from.
    """
    model, cache = reader.model, reader.cache
    stepper = model.stepper(batch_size=1, backend="torch")
    no_target = torch.zeros((1, 1), dtype=torch.long, device=reader.device)

    def mixed(logits: Tensor, h: Tensor) -> np.ndarray:
        model_lp = log_softmax(as_numpy(logits))
        cache_lp = cache.log_distribution(h[None], no_target, settings.theta,
                                          model_lp.shape[-1])[0].cpu().numpy()
        return mix(model_lp, cache_lp, np.asarray(len(cache) > 0), settings.lam)

    def advance(tokens: np.ndarray, carry: tuple) -> tuple:
        state, h = carry
        token = torch.as_tensor(tokens, device=reader.device)
        cache.append(h[None], token[None])
        with torch.inference_mode():
            logits, state = stepper(token, state)
        h = top_state(state)
        return mixed(logits, h), (state, h)

    first = mixed(reader.last_logits, reader.last_hidden)
    return decode_steps(advance, first, (reader.state, reader.last_hidden), max_new_tokens,
                        pick)


def prompt_reader(model, tokenizer, prefix_ids: list[int], cache: CacheSettings, *,
                  chunk: int) -> Reader:
    """A :class:`Reader` whose cache holds the prompt, where generation starts: what the
    warm-up reads (:func:`seqlm.decoding.warm_up_ids`), ``chunk`` tokens at a time."""
    reader = Reader(model, cache_size=cache.size, thetas=(cache.theta,))
    ids = warm_up_ids(tokenizer, prefix_ids)
    for X, Y in text_batches(np.asarray(ids, dtype=np.int64), chunk) if ids else ():
        reader.feed(X, Y)
    if not ids:  # the zero state: its prediction is the decoder's bias
        with torch.inference_mode():
            reader.state = model.begin_state(1)
            reader.last_hidden = top_state(reader.state)
            reader.last_logits = model.next_logits(reader.state)
    return reader


def adapted_copy(model, tokenizer, text: str, dynamic: DynamicSettings, prior: dict | None):
    """A copy of ``model`` adapted by reading ``text`` with dynamic evaluation (``model``
    itself unchanged; a text of fewer than 2 tokens adapts nothing)."""
    reader = Reader(model, dynamic=dynamic, prior=prior)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    for X, Y in text_batches(ids, dynamic.segment) if len(ids) else ():
        reader.feed(X, Y)
    return reader.model


def generate_text(model, tokenizer, prefix: str, *, cache: CacheSettings | None,
                  dynamic: DynamicSettings | None, prior: dict | None = None, chunk: int,
                  max_new_tokens: int, temperature: float, top_k: int | None,
                  top_p: float | None, seed: int | None, stop: str | None) -> str:
    """Continue ``prefix`` as :func:`seqlm.generate.generate` does (one sample), with
    dynamic evaluation adapting a copy of the model on the prompt first (the copy then
    generates), and the neural cache over the prompt and the new tokens.

    Raises:
        ConfigError: a sampling knob out of range.
    """
    check_sampling(temperature, top_k, top_p)
    check_count("max_new_tokens", max_new_tokens)
    if dynamic is not None:
        model = adapted_copy(model, tokenizer, prefix, dynamic, prior)
    if cache is None:
        return generate(model, tokenizer, prefix, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        stop=stop)[0]

    def decode(prefix_ids: list[int], n: int, steps: int, pick, greedy: bool):
        """The cache's backend of the one generation driver (one row)."""
        reader = prompt_reader(model, tokenizer, prefix_ids, cache, chunk=chunk)
        return cache_steps(reader, cache, steps, pick)

    return generate_texts(tokenizer, prefix, decode, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, num_samples=1,
                          uniform=seeded_uniform(seed), stop=stop, strict=False,
                          on_text=None)[0]


def score_text(model, tokenizer, text: str, *, cache: CacheSettings | None,
               dynamic: DynamicSettings | None, prior: dict | None = None, top: int = 0,
               chunk: int) -> TextScore:
    """``LanguageModel.score`` with the neural cache, dynamic evaluation or both: the first
    token from the warm-up (as the static score), then the text read in pieces of ``chunk``
    tokens (``dynamic.segment`` when adapting), the state carried.

    Returns:
        A :class:`~seqlm.results.TextScore` whose ``logprobs`` (and top alternatives) are the
        evaluation's, ``evaluation`` names it, and ``static_logprobs`` holds the trained
        model's own scores of the same tokens read the same way (equal to ``logprobs`` with
        λ = 0 or lr = 0).

    Raises:
        ConfigError: the text has no tokens, or ``top`` < 0.
    """
    check_top(top)
    ids = text_ids(tokenizer, text)
    first, state = warm_up(model, tokenizer, [])
    first = log_softmax(as_numpy(first))  # (1, V): the first token's, before any reading
    pieces = dynamic.segment if dynamic is not None else chunk
    reading = read(model, text_batches(ids, pieces), cache_size=cache and cache.size,
                   thetas=(cache.theta,) if cache else (), dynamic=dynamic, prior=prior,
                   state=state, top=top, lam=cache.lam if cache else 0.0)
    logprobs = reading.mixed(cache.lam, cache.theta) if cache else reading.logprobs
    # the trained weights read the same way (with autograd on, as the adapting copy reads:
    # torch's fused LSTM rounds differently without it)
    static = read(model, text_batches(ids, pieces), state=state, dynamic=DynamicSettings(
        0.0, "sgd", segment=pieces)).logprobs if dynamic else reading.logprobs
    best = np.argsort(-first, axis=-1, kind="stable")[:, :top]
    top_ids = np.concatenate([best, reading.top_ids]) if top else best
    top_lp = (np.concatenate([np.take_along_axis(first, best, -1), reading.top_logprobs])
              if top else np.zeros((len(ids), 0)))
    label = "+".join(n for n, on in (("cache", cache), ("dynamic", dynamic)) if on)
    return TextScore(tokens=token_texts(tokenizer, text, ids), ids=ids,
                     logprobs=np.concatenate([first[0, ids[:1]], logprobs]),
                     unknown=ids == tokenizer.vocab.unk,
                     top_ids=top_ids if top else np.zeros((len(ids), 0), np.int64),
                     top_logprobs=top_lp, evaluation=label,
                     static_logprobs=np.concatenate([first[0, ids[:1]], static]))
