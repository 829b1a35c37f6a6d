"""Generate and score with an exported model, without torch: numpy, onnxruntime and the
vocabulary.

::

    import seqlm.runtime
    lm = seqlm.runtime.load("exported/")        # written by: seqlm export RUN --out exported
    print(lm.generate("time traveller", max_new_tokens=50))

:func:`load` returns an :class:`OnnxLanguageModel` with the ``generate``, ``generate_many``,
``stream``, ``score`` and ``perplexity`` of :class:`seqlm.api.LanguageModel`: both are
:class:`seqlm.results.TextModel`, whose generation driver (:func:`seqlm.decoding.generate_texts`:
the warm-up rule, the sampling distribution, the decoding loop, the text stream) and scoring
are the same code; this class supplies only the graphs' warm-up, step and forward pass.
Greedy decoding gives the
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

from seqlm.decoding import decode_steps, warm_up_ids
from seqlm.errors import ConfigError, ExportError, SeqlmError
from seqlm.results import TextModel, TextScore, TokenStep, text_ids
from seqlm.runtime.format import FILES, TOKENS, find_export, read_config
from seqlm.tokenize import tokenizer_from_state

__all__ = ["OnnxLanguageModel", "TextScore", "TokenStep", "load", "onnx_session"]


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
        self._forward_graph = onnx_session(self.path / FILES["forward"], threads=threads)
        self._start_logits = np.load(self.path / FILES["start_logits"], allow_pickle=False)
        self._state_names = list(self.config["state"])
        model = self.config["model"]
        self._state_shape = (model["num_layers"], model["hidden_size"])

    def __repr__(self) -> str:
        m = self.config["model"]
        return (f"OnnxLanguageModel({self.name!r}, {m['cell']} x{m['num_layers']} "
                f"H={m['hidden_size']}, vocab {self.vocab_size}, {self.tokenizer.kind} tokens)")

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
            return np.tile(self._start_logits, (n, 1)), state
        logits, state = self._run(self._forward_graph, np.tile(np.asarray(ids), (n, 1)), state)
        return logits[:, -1], state

    def _decode(self, prefix_ids: list[int], n: int, max_new_tokens: int, pick: Callable,
                greedy: bool) -> Iterator[tuple]:
        """:func:`seqlm.decoding.decode_steps` on ``step.onnx`` for ``n`` rows after the
        warm-up (``greedy`` needs nothing apart: ``pick`` is the argmax then)."""
        logits, state = self._warm_up(prefix_ids, n)
        return decode_steps(partial(self._run, self._step), logits, state, max_new_tokens, pick)

    def _start(self) -> tuple:
        return self._warm_up([], 1)

    def _forward(self, ids: np.ndarray, state) -> tuple:
        logits, state = self._run(self._forward_graph, ids[None], state)
        return logits[0], state


def _read_tokenizer(directory: Path, files: dict):
    try:
        state = json.loads((directory / files["vocab"]).read_text("utf-8"))
        if "bpe" in files:
            state["bpe_model"] = (directory / files["bpe"]).read_text("utf-8")
        return tokenizer_from_state(state)
    except (OSError, ValueError, KeyError, TypeError, SeqlmError) as exc:
        raise ExportError(f"{directory}: the tokenizer files cannot be read ({exc}); export "
                          "the model again") from exc

