"""The timed paths: each is a function that runs one training step or one generation.

seqlm's training paths run :meth:`seqlm.trainer.Trainer.step` itself (the model, the loss, the
clip and the optimizer step exactly as ``seqlm train`` runs them) with the book's SGD (lr 1,
clip 1) and sequential partitioning, so the state is carried and detached as in training.
Its generation paths call :func:`seqlm.generate.generate` greedily, text in and text out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from itertools import cycle

import numpy as np
import torch

from seqlm.bench.config import Workload
from seqlm.bench.textbook import (ConciseModel, TextbookModel, module_train_step,
                                  textbook_predict, textbook_train_step)
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.cores import MANUAL_ENGINE_CELLS
from seqlm.data import Corpus
from seqlm.generate import generate
from seqlm.models import RNNLM
from seqlm.tokenize import CharTokenizer, Tokenizer, WordTokenizer
from seqlm.trainer import Trainer
from seqlm.vocab import Vocab

TORCH_NAMES = {"rnn": "nn.RNN", "gru": "nn.GRU", "lstm": "nn.LSTM"}
Batch = tuple[torch.Tensor, torch.Tensor]


def torch_path_name(w: Workload) -> str:
    return f"torch {TORCH_NAMES[w.cell]}"


def tokenizer_for(w: Workload) -> Tokenizer:
    """A vocabulary of exactly V tokens: the book's 27 characters, or V−1 words ``w<i>``."""
    if w.tokenizer == "char":
        chars = " abcdefghijklmnopqrstuvwxyz"[: w.vocab_size - 1]
        return CharTokenizer(Vocab([(c, 1000 - i) for i, c in enumerate(chars)]))
    words = [(f"w{i}", w.vocab_size - i) for i in range(w.vocab_size - 1)]
    return WordTokenizer(Vocab(words))


def token_stream(w: Workload, length: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(1, w.vocab_size, size=length, dtype=np.int64)


def make_batches(w: Workload, count: int, seed: int, device: torch.device) -> list[Batch]:
    """``count`` consecutive minibatches of sequential partitioning of a random stream."""
    B, T = w.batch_size, w.num_steps
    stream = torch.from_numpy(token_stream(w, B * (count * T + 1), seed)).view(B, -1)
    return [(stream[:, k * T:(k + 1) * T].to(device), stream[:, k * T + 1:(k + 1) * T + 1]
             .to(device)) for k in range(count)]


def textbook_train_task(w: Workload, batches: list[Batch], device, seed: int) -> Callable:
    model = TextbookModel(w.cell, w.vocab_size, w.hidden_size,
                          generator=torch.Generator().manual_seed(seed), device=device)
    feed, carried = cycle(batches), [None]

    def step() -> None:
        X, Y = next(feed)
        _, carried[0] = textbook_train_step(model, X, Y, carried[0])

    return step


def module_train_task(w: Workload, batches: list[Batch], device, seed: int) -> Callable:
    torch.manual_seed(seed)
    model = ConciseModel(w.cell, w.vocab_size, w.hidden_size).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    feed, carried = cycle(batches), [None]

    def step() -> None:
        X, Y = next(feed)
        _, carried[0] = module_train_step(model, optimizer, X, Y, carried[0])

    return step


def seqlm_trainer(w: Workload, device, seed: int, *, dtype: str = "float32",
                  **model_fields) -> Trainer:
    """A :class:`Trainer` for ``w`` with the book's SGD, clip and sequential partitioning."""
    torch.manual_seed(seed)
    model_fields = {"init": "d2l", **model_fields}
    config = ModelConfig(vocab_size=w.vocab_size, cell=w.cell, hidden_size=w.hidden_size,
                         **model_fields)
    model = RNNLM(config).to(device)
    corpus = Corpus(tokenizer_for(w), {"train": token_stream(w, 4 * w.tokens_per_step, seed)})
    data = DataConfig(batch_size=w.batch_size, num_steps=w.num_steps, sampler="sequential")
    train = TrainConfig(optimizer="sgd", lr=1.0, clip=1.0, schedule="constant",
                        max_steps=10**9, eval_every=0, dtype=dtype, sample_tokens=0)
    return Trainer(model, corpus, data, train, torch.device(device))


@contextmanager
def _quiet_torch_internals():
    """torch.compile's tracing warns about torch's own deprecated APIs; those are not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\S* is deprecated")
        yield


def seqlm_train_task(w: Workload, batches: list[Batch], device, seed: int, *,
                     compile: bool = False, **fields) -> Callable:
    trainer = seqlm_trainer(w, device, seed, **fields)
    feed = cycle(batches)
    if compile:
        with _quiet_torch_internals():
            trainer.model = torch.compile(trainer.model)

        def compiled_step() -> None:
            with _quiet_torch_internals():
                trainer.step(*next(feed))

        return compiled_step

    def step() -> None:
        trainer.step(*next(feed))

    return step


def default_path_name(w: Workload, device) -> str:
    """The row of the path seqlm's presets run for ``w`` (impl and bptt_engine 'auto')."""
    config = ModelConfig(vocab_size=w.vocab_size, cell=w.cell, impl="auto",
                         bptt_engine="auto").resolve(torch.device(device).type)
    if config.impl == "fused":
        return "fused"
    return "scratch manual-BPTT" if config.bptt_engine == "manual" else "scratch"


def training_tasks(w: Workload, batches: list[Batch], device, seed: int, *,
                   bf16: bool = False, compile: bool = False) -> dict[str, Callable]:
    """Every training path of ``w``: baselines first, then seqlm's."""
    tasks = {"textbook": textbook_train_task(w, batches, device, seed),
             torch_path_name(w): module_train_task(w, batches, device, seed)}
    variants = {"scratch": {"impl": "scratch"}}
    if w.cell in MANUAL_ENGINE_CELLS:
        variants["scratch manual-BPTT"] = {"impl": "scratch", "bptt_engine": "manual"}
    variants["fused"] = {"impl": "fused"}
    for name, fields in variants.items():
        tasks[name] = seqlm_train_task(w, batches, device, seed, **fields)
    if bf16:
        for name, fields in variants.items():
            tasks[f"{name} bf16"] = seqlm_train_task(w, batches, device, seed,
                                                     dtype="bfloat16", **fields)
    if compile:
        tasks["scratch compiled"] = seqlm_train_task(w, batches, device, seed, compile=True,
                                                     impl="scratch")
    return tasks


def generation_tasks(w: Workload, device, seed: int, *, prefix_len: int,
                     new_tokens: int) -> dict[str, Callable]:
    """Greedy generation of one stream: the book's ``predict_ch8`` on the textbook model and
    on torch's module, and :func:`seqlm.generate.generate` on seqlm's scratch and fused
    models."""
    tokenizer = tokenizer_for(w)
    prefix_ids = [int(i) for i in token_stream(w, prefix_len, seed + 1)]
    prefix = tokenizer.decode(prefix_ids)
    textbook = TextbookModel(w.cell, w.vocab_size, w.hidden_size,
                             generator=torch.Generator().manual_seed(seed), device=device)
    torch.manual_seed(seed)
    module = ConciseModel(w.cell, w.vocab_size, w.hidden_size).to(device)

    def book(model) -> Callable:
        return lambda: tokenizer.decode(textbook_predict(prefix_ids, new_tokens, model))

    def seqlm(impl: str) -> Callable:
        torch.manual_seed(seed)
        model = RNNLM(ModelConfig(vocab_size=w.vocab_size, cell=w.cell, impl=impl,
                                  hidden_size=w.hidden_size, init="d2l")).to(device)
        return lambda: generate(model, tokenizer, prefix, max_new_tokens=new_tokens,
                                temperature=0.0)

    return {"textbook": book(textbook), torch_path_name(w): book(module),
            "scratch": seqlm("scratch"), "fused": seqlm("fused")}
