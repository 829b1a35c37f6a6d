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
from pathlib import Path

import numpy as np
import torch

from seqlm.checkpoint import load_checkpoint, resolve_checkpoint
from seqlm.config import DEFAULT_TEMPERATURE
from seqlm.decoding import MAX_NEW_TOKENS
from seqlm.errors import ConfigError
from seqlm.generate import decoder, warm_up
from seqlm.reading import generate_text, score_text
from seqlm.reading_settings import resolve_settings
from seqlm.results import SCORE_CHUNK, TextModel, TextScore, TokenStep, host, text_ids

__all__ = ["LanguageModel", "TextScore", "TokenStep", "load"]


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


class LanguageModel(TextModel):
    """A trained recurrent language model with its tokenizer: :meth:`states` here;
    ``generate``, ``generate_many``, ``stream``, ``score`` and ``perplexity`` from
    :class:`~seqlm.results.TextModel` (documented there), which the torch-free
    :class:`seqlm.runtime.OnnxLanguageModel` shares. Here ``score`` and ``generate`` also
    read with the neural cache and dynamic evaluation (``cache=``, ``dynamic=``).

    Attributes:
        model: the :class:`~seqlm.models.RNNLM` (in eval mode).
        tokenizer: the tokenizer it was trained with.
        config: the checkpoint's config.json as a dict (``"model"``, ``"data"``, ...).
        path: the checkpoint directory that was read.
        name: the run's name (its directory), or the checkpoint directory's name.
        checkpoint: ``'best'`` or ``'last'`` when loaded from a run, else ``'checkpoint'``.
        vocab_size: V.
        summary: the run's summary when :func:`seqlm.train` returned this model
            (:meth:`seqlm.run.RunSession.fit`), else None.
    """

    def __init__(self, model, tokenizer, config: dict, path: Path, *, name: str,
                 checkpoint: str = "checkpoint") -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.path, self.name, self.checkpoint = Path(path), name, checkpoint
        self.vocab_size = model.config.vocab_size
        self.summary: dict | None = None

    def __repr__(self) -> str:
        c = self.model.config
        return (f"LanguageModel({self.name!r}, {self.checkpoint}, {c.cell} x{c.num_layers} "
                f"H={c.hidden_size}, vocab {self.vocab_size}, {self.tokenizer.kind} tokens)")

    def generate(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 stop: str | None = None, cache=None, dynamic=None) -> str:
        """Continue ``prefix``: :meth:`~seqlm.results.TextModel.generate`, or with ``cache``
        and/or ``dynamic`` a model that keeps learning as it reads.

        Args:
            prefix, max_new_tokens, temperature, top_k, top_p, seed, stop: as
                :meth:`TextModel.generate <seqlm.results.TextModel.generate>`.
            cache, dynamic: as :meth:`score`: the neural cache over the prompt and the new
                tokens; dynamic evaluation adapts a copy on the prompt first, and the copy
                generates (:func:`seqlm.reading.generate_text`). The weights stay as they are.

        Returns:
            The prefix followed by the continuation.

        Raises:
            ConfigError: a knob out of range (the message names it), or settings asked for
                that are not stored.
        """
        if cache or dynamic:
            return generate_text(self.model, self.tokenizer, prefix,
                                 **self._reading(cache, dynamic), chunk=SCORE_CHUNK,
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, stop=stop)
        return super().generate(prefix, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, seed=seed, stop=stop)

    def score(self, text: str, *, top: int = 0, cache=None, dynamic=None) -> TextScore:
        """:meth:`TextModel.score <seqlm.results.TextModel.score>`, or with ``cache`` and/or
        ``dynamic`` the score of a model that keeps learning as it reads
        (:func:`seqlm.reading.score_text`; docs/reading.md).

        Args:
            text, top: as the static score.
            cache: None for none; True for the settings chosen on the validation split and
                stored with the run (``seqlm evaluate RUN --cache SIZE`` chooses them); or a
                :class:`~seqlm.neural_cache.CacheSettings`.
            dynamic: likewise: None, True (``seqlm evaluate RUN --dynamic``) or a
                :class:`~seqlm.dynamic_eval.DynamicSettings`.

        Returns:
            A :class:`TextScore`; its ``evaluation`` says what produced it, and beside any
            evaluation but the static one ``static_logprobs`` holds the trained model's own.

        Raises:
            ConfigError: the text has no tokens, ``top`` < 0, or settings asked for that are
                not stored.
        """
        if not cache and not dynamic:
            return super().score(text, top=top)
        return score_text(self.model, self.tokenizer, text, **self._reading(cache, dynamic),
                          top=top, chunk=SCORE_CHUNK)

    def _reading(self, cache, dynamic) -> dict:
        """``cache``, ``dynamic`` and ``prior`` for :mod:`seqlm.reading`."""
        return dict(zip(("cache", "dynamic", "prior"),
                        resolve_settings(self.path, cache, dynamic)))

    def _decode(self, prefix_ids: list[int], n: int, max_new_tokens: int, pick, greedy: bool
                ) -> Iterator[tuple]:
        """The torch backend of generation (:func:`seqlm.generate.decoder`). No grad-mode
        context here: it would leak into the caller between steps; the stepper runs without
        autograd by itself."""
        return decoder(self.model, self.tokenizer)(prefix_ids, n, max_new_tokens, pick, greedy)

    def _start(self) -> tuple:
        return warm_up(self.model, self.tokenizer, [])

    def _forward(self, ids: np.ndarray, state) -> tuple:
        model, device = self.model, next(self.model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                logits, state = model(torch.from_numpy(ids).to(device)[None], state)
            return logits[0], state
        finally:
            model.train(was_training)

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
            raise ConfigError(f"`cell` True needs an LSTM; this model's cell is "
                              f"{self.model.config.cell!r}, whose state is h alone")
        ids = text_ids(self.tokenizer, text)
        state = warm_up(self.model, self.tokenizer, [])[1]
        with torch.inference_mode():
            step = self.model.stepper(batch_size=1)
            device = next(self.model.parameters()).device
            out = []
            for token in torch.from_numpy(ids).to(device).view(-1, 1):
                _, state = step(token, state)
                part = (state[1] if cell else state[0]) if lstm else state
                out.append(host(part)[:, 0].copy())
        return np.stack(out, axis=1)
