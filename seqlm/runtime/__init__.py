"""Generate and score with an exported model, without torch: numpy, onnxruntime and the
vocabulary.

::

    import seqlm.runtime
    lm = seqlm.runtime.load("exported/")        # written by: seqlm export RUN --out exported
    print(lm.generate("time traveller", max_new_tokens=50))

:func:`load` returns an :class:`OnnxLanguageModel` with the ``generate``, ``stream``, ``score``
and ``perplexity`` of :class:`seqlm.api.LanguageModel`, built on the same torch-free pieces:
the warm-up rule, the sampling distribution (:func:`seqlm.decoding.next_token_probs`, which
``seqlm.generate.sample_next`` also draws from), the decoding loop and the text stream of
:mod:`seqlm.decoding`, and the result types of :mod:`seqlm.results`. Greedy decoding gives the
torch model's text, and a seed draws the same uniform numbers as there
(:func:`seqlm.decoding.seeded_uniform`), so sampling gives the torch model's samples too,
unless a draw falls within float32 rounding (about 1e-7) of a boundary between two tokens.
Nothing imported here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from seqlm.config import DEFAULT_TEMPERATURE
from seqlm.decoding import (MAX_NEW_TOKENS, TextStream, check_count, check_sampling,
                            check_seed, collect, decode_steps, encode_prefix, flush_all,
                            make_pick, push_all, seeded_uniform, warm_up_ids)
from seqlm.errors import ConfigError, ExportError, SeqlmError
from seqlm.results import TextModel, TextScore, TokenStep, text_ids
from seqlm.runtime.format import FILES, TOKENS, find_export, read_config
from seqlm.tokenize import tokenizer_from_state

__all__ = ["OnnxLanguageModel", "TextScore", "TokenStep", "load", "onnx_session"]
SCORE_CHUNK = 4096  # tokens per forward run when scoring: bounds the (chunk, V) logits


def onnx_session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime CPU session of the graph in ``path`` (``threads``: its intra-op
    threads; None or 0, onnxruntime's default).

    Raises:
        ExportError: onnxruntime is not installed, or the file is not a graph it can run.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed; pip install 'seqlm[onnx]'") from None
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: keep its notes off the user's terminal
    try:
        return onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{path} cannot be loaded by onnxruntime "
                          f"({str(exc).splitlines()[0][:200]}); export the model again") from exc


def load(directory: str | Path, *, threads: int | None = None) -> OnnxLanguageModel:
    """Load a directory written by ``seqlm export`` (:func:`seqlm.export.export_onnx`).

    Args:
        directory: the export directory, or a run directory holding one in ``onnx/`` (where
            ``seqlm export RUN`` writes).
        threads: onnxruntime's intra-op threads for both graphs; 0 is onnxruntime's default
            (one per core). None: one thread for ``step.onnx`` and the default for
            ``forward.onnx``, because a one-row step is a few matrix-vector products,
            where handing work to other threads costs more than it saves
            (docs/performance.md: 1.3-1.9x the tokens/s of two threads).

    Raises:
        ExportError: not an export, a file missing or unreadable, or no onnxruntime.
    """
    return OnnxLanguageModel(directory, threads=threads)


class OnnxLanguageModel(TextModel):
    """An exported model with its tokenizer: generate, stream, score (no torch).

    Attributes:
        tokenizer: the tokenizer the model was trained with.
        config: the export's config.json (``"model"`` holds the architecture).
        path: the export directory.
        name: its name.
        vocab_size: V.

    Raises:
        ExportError: as :func:`load`.
    """

    def __init__(self, directory: str | Path, *, threads: int | None = None) -> None:
        self.path = find_export(directory) or Path(directory)
        self.config = read_config(self.path)
        self.name, self.vocab_size = self.path.resolve().name, self.config["model"]["vocab_size"]
        self.tokenizer = _read_tokenizer(self.path, self.config["files"])
        self._step = onnx_session(self.path / FILES["step"],
                                  threads=1 if threads is None else threads)
        self._forward = onnx_session(self.path / FILES["forward"], threads=threads)
        self._start = np.load(self.path / FILES["start_logits"], allow_pickle=False)
        self._state_names = list(self.config["state"])
        model = self.config["model"]
        self._state_shape = (model["num_layers"], model["hidden_size"])

    def __repr__(self) -> str:
        m = self.config["model"]
        return (f"OnnxLanguageModel({self.name!r}, {m['cell']} x{m['num_layers']} "
                f"H={m['hidden_size']}, vocab {self.vocab_size}, {self.tokenizer.kind} tokens)")

    def generate(self, prefix: str = "", *, max_new_tokens: int = MAX_NEW_TOKENS,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 stop: str | None = None) -> str:
        """Continue ``prefix``, as :meth:`seqlm.api.LanguageModel.generate` does.

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
        :func:`seqlm.generate.generate` (a seed draws as it does there).

        Raises:
            ConfigError: a bad knob or count, or (with ``strict``) unknown prefix tokens.
        """
        check_sampling(temperature, top_k, top_p)
        check_count("max_new_tokens", max_new_tokens)
        check_count("num_samples", num_samples)
        check_seed(seed)
        prefix_ids = encode_prefix(self.tokenizer, prefix, strict=strict)
        streams = [TextStream(self.tokenizer, prefix_ids, stop) for _ in range(num_samples)]
        steps = self._decode(prefix_ids, num_samples, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        on_tokens = partial(push_all, streams, on_text=on_text) if (stop or on_text) else None
        tokens = collect(steps, on_tokens)
        if on_tokens is not None and on_text is not None:
            flush_all(streams, on_text)
        rows = np.stack(tokens, axis=1).tolist()
        if stop is None:
            return [self.tokenizer.decode(prefix_ids + row) for row in rows]
        return [s.prefix_text + s.generated for s in streams]

    def states(self, text: str, *, cell: bool = False) -> np.ndarray:
        """Hidden states after each token of ``text``, every layer, as
        :meth:`seqlm.api.LanguageModel.states` reads them (``step.onnx``, one token at a
        time, from the state generation starts from).

        Returns:
            (L, N, H) float32 array: position n holds the state after token n (``cell``: an
            LSTM's cell states c instead of h).

        Raises:
            ConfigError: the text has no tokens, or ``cell`` for a model that is not an LSTM.
        """
        if cell and len(self._state_names) < 2:
            raise ConfigError(f"`cell` True needs an LSTM; this model's cell is "
                              f"{self.config['model']['cell']!r}, whose state is h alone")
        ids = text_ids(self.tokenizer, text)
        state = self._warm_up([], 1)[1]
        out = []
        for token in ids:
            _, state = self._run(self._step, np.asarray([token]), state)
            out.append(state[1 if cell else 0][:, 0].copy())
        return np.stack(out, axis=1)

    # -- the graphs ------------------------------------------------------------------------
    def _run(self, session, tokens: np.ndarray, state: tuple[np.ndarray, ...]):
        feeds = {TOKENS: tokens.astype(np.int64, copy=False),
                 **dict(zip(self._state_names, state))}
        logits, *new = session.run(None, feeds)
        return logits, tuple(new)

    def _warm_up(self, prefix_ids: list[int], n: int):
        """``(logits (n, V), state)`` after reading what the warm-up reads."""
        ids = warm_up_ids(self.tokenizer, prefix_ids)
        L, H = self._state_shape
        state = tuple(np.zeros((L, n, H), np.float32) for _ in self._state_names)
        if not ids:
            return np.tile(self._start, (n, 1)), state
        logits, state = self._run(self._forward, np.tile(np.asarray(ids), (n, 1)), state)
        return logits[:, -1], state

    def _decode(self, prefix_ids: list[int], n: int = 1, *, max_new_tokens: int,
                temperature: float, top_k: int | None, top_p: float | None,
                seed: int | None) -> Iterator[tuple]:
        """:func:`seqlm.decoding.decode_steps` on ``step.onnx`` for ``n`` rows after the
        warm-up; draws from :func:`seqlm.decoding.seeded_uniform` ``(seed)``."""
        logits, state = self._warm_up(prefix_ids, n)
        pick = make_pick(temperature=temperature, top_k=top_k, top_p=top_p,
                         uniform=seeded_uniform(seed))
        advance = partial(self._run, self._step)
        return decode_steps(advance, logits, state, max_new_tokens, pick)

    def _logits(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(logits (n, V), targets)`` chunk by chunk, as the torch model's scoring."""
        logits, state = self._warm_up([], 1)
        yield logits, ids[:1]
        for start in range(0, len(ids) - 1, SCORE_CHUNK):
            chunk = ids[start:start + SCORE_CHUNK]
            logits, state = self._run(self._forward, chunk[None], state)
            yield logits[0], ids[start + 1:start + 1 + len(chunk)]


def _read_tokenizer(directory: Path, files: dict):
    try:
        state = json.loads((directory / files["vocab"]).read_text("utf-8"))
        if "bpe" in files:
            state["bpe_model"] = (directory / files["bpe"]).read_text("utf-8")
        return tokenizer_from_state(state)
    except (OSError, ValueError, KeyError, TypeError, SeqlmError) as exc:
        raise ExportError(f"{directory}: the tokenizer files cannot be read ({exc}); export "
                          "the model again") from exc

