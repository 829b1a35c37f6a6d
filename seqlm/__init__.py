"""seqlm: recurrent-neural-network language models.

The pipeline, one module per stage: :mod:`seqlm.text` (read and clean corpora) →
:mod:`seqlm.tokenize` and :mod:`seqlm.vocab` (tokens and indices) → :mod:`seqlm.data` →
:mod:`seqlm.batches` (the sampling strategies) → :mod:`seqlm.models` → :mod:`seqlm.trainer` →
:mod:`seqlm.run` → :mod:`seqlm.generate`, with :mod:`seqlm.checkpoint` the only code that knows
the on-disk format and :mod:`seqlm.cli` the only code that parses arguments.

From Python: ``seqlm.train(corpus, **settings)`` (:func:`seqlm.session.train`) trains as ``seqlm
train`` does and returns the model; ``seqlm.load(run_or_checkpoint)`` (:mod:`seqlm.api`) gives
a model object that generates, streams, scores and reads hidden states; :mod:`seqlm.export`
writes ONNX graphs, which :mod:`seqlm.runtime` runs with numpy and onnxruntime, never
importing torch.
"""

from seqlm.version import __version__  # noqa: F401 (seqlm.__version__)

_API = ("load", "LanguageModel", "TextScore", "TokenStep")


def __getattr__(name: str):
    """``seqlm.train``, ``seqlm.load`` and the classes of :mod:`seqlm.api`, imported on first
    use so that ``import seqlm`` (and the torch-free :mod:`seqlm.runtime`) never loads
    torch."""
    if name == "train":
        from seqlm.session import train

        return train
    if name in _API:
        from seqlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'seqlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "train"])
