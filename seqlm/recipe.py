"""The adaptive recipe: settings a run chooses from what it measures before it starts.

The CPU presets (``cpu-fast``, ``cpu-quality``) fix the architecture family and the optimizer;
what suits one corpus and machine but not another is chosen here, from

* the corpus: training and validation tokens, vocabulary size;
* the machine: training and evaluation tokens per second, measured by :func:`probe` on the
  run's own model, batch shape and threads (a second or two, before the clock starts);
* the budget: ``time_budget`` seconds, so the number of passes over the data it buys
  (``epochs``) and of optimizer steps.

The rules, each fitted on the quality matrix (docs/quality.md has the measurements):

* **depth** (:func:`wants_depth`): one layer while the compute limits the model; a 2-layer
  stack once the budget makes :data:`DEEP_PASSES` passes over the text with one layer, kept
  when its own probe says the budget still gives it :data:`DEEP_STEPS` optimizer steps.
* **dropout** rises with the passes the budget makes over the data (:func:`dropout_for`):
  none while the model sees each token about once or twice, up to 0.5 for thirty passes
  and more, where an unregularised model memorises the text. A sparse text, whose contexts
  rarely repeat (:func:`unseen_bigrams`: Chinese characters, words), is memorised in fewer
  passes, so its passes count more (:attr:`Measurement.effective_epochs`).
* **embedding size** grows with the vocabulary (:func:`embedding_for`): 64 for characters,
  a few hundred for words.
* **evaluation cadence** (:func:`eval_every_for`): about a dozen evaluations per budget, so
  patience (``early_stopping`` evaluations without a new best) is a fixed share of the run.

A setting the user gave (a flag, a config file, a ``preset:key=value`` override) is never
changed: the presets list what may adapt in ``TrainConfig.adapt`` and the front ends remove
the names the user chose (:func:`seqlm.settings.merge_choices`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from seqlm import threads
from seqlm.batches import check_fits
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.models.output import choose_cutoffs

MAX_DROPOUT = 0.5
SPARSE_WEIGHT = 15.0  # a pass counts 1 + 15·u times, u the share of held-out bigrams unseen
NO_DROPOUT_PASSES = 2.0  # up to this many raw passes, no dropout (sparse text or not)
DEEP_PASSES = 8.0  # passes of the 1-layer model from which 2 layers are tried
DEEP_STEPS = 800  # optimizer steps the 2-layer model must still get from the budget
SPARSITY_TOKENS = 1 << 22  # unseen_bigrams reads at most this many tokens, spread evenly
EVALS_PER_BUDGET = 12
MIN_EVAL_EVERY = 50
MIN_OCCURRENCES = 4  # mean training occurrences per vocabulary id below which ids cannot train
EVAL_SHARE = 0.5  # one evaluation may take at most this share of the time budget
PROBE_ROUNDS = 3  # timed bursts of each thread count, interleaved; the best one counts
REVISION = 4  # raise when a rule's code, not a constant above, changes what a run chooses
# (2: the probe took the median step, which read Chinese 16 % fast; 3: back to the mean;
# 4: the best of interleaved bursts at each thread count, and choices that follow the run)


@dataclass(frozen=True)
class Measurement:
    """What the recipe reads: the corpus, the probe's speeds and the budget."""

    train_tokens: int
    val_tokens: int
    vocab_size: int
    tokens_per_step: int
    train_tokens_per_s: float
    eval_tokens_per_s: float
    budget: float | None

    max_epochs: int | None = None
    max_steps: int | None = None
    unseen_bigrams: float = 0.0  # see unseen_bigrams()
    thread_rates: dict | None = None  # training tokens/s at each thread count tried

    @classmethod
    def from_record(cls, measured: dict) -> Measurement:
        """The measurement a recipe record (``config.json``'s ``"recipe"``) saved."""
        return cls(**{f.name: measured[f.name] for f in fields(cls) if f.name in measured})

    @property
    def epochs(self) -> float | None:
        """Passes over the training split the run will make: the tightest of its budgets
        (seconds at the measured speed, epochs, steps); None when it has none."""
        limits = []
        if self.budget:
            limits.append(self.train_tokens_per_s * self.budget / max(self.train_tokens, 1))
        if self.max_epochs:
            limits.append(float(self.max_epochs))
        if self.max_steps:
            limits.append(self.max_steps * self.tokens_per_step / max(self.train_tokens, 1))
        return min(limits) if limits else None

    @property
    def effective_epochs(self) -> float | None:
        """:attr:`epochs` weighted by how sparse the text is: ``epochs · (1 + SPARSE_WEIGHT · u)``
        with u = :attr:`unseen_bigrams` (about 1.0× for English characters, 3× for Chinese
        characters, 4× for words): a model memorises a text whose contexts rarely repeat
        in fewer passes, once it has seen it more than :data:`NO_DROPOUT_PASSES` times."""
        epochs = self.epochs
        return None if epochs is None else epochs * (1 + SPARSE_WEIGHT * self.unseen_bigrams)

    @property
    def steps(self) -> float | None:
        """Optimizer steps the run will make (from :attr:`epochs`)."""
        epochs = self.epochs
        return None if epochs is None else epochs * self.train_tokens / self.tokens_per_step

    @property
    def eval_seconds(self) -> float:
        """One whole-split evaluation at the measured speed."""
        return self.val_tokens / max(self.eval_tokens_per_s, 1e-9)


def unseen_bigrams(tokens: np.ndarray, chunk: int = 1024, every: int = 10) -> float:
    """The share of the bigrams in every ``every``-th ``chunk``-token piece of ``tokens`` that
    the other pieces never show: 0.1–0.3 % for English characters, 14 % for Chinese
    characters, 19 % for words (docs/quality.md). Interleaved pieces, so that a text whose
    end differs from its start is not taken for a sparse one. A long text is sampled: at most
    :data:`SPARSITY_TOKENS` tokens, in pieces spread evenly. 0.0 for under ``every`` pieces."""
    pieces = len(tokens) // chunk
    if pieces < every:
        return 0.0
    picked = np.arange(0, pieces, max(1, pieces * chunk // SPARSITY_TOKENS))
    x = np.stack([np.asarray(tokens[i * chunk:(i + 1) * chunk], dtype=np.int64) for i in picked])
    codes = x[:, :-1] * (int(x.max()) + 1) + x[:, 1:]
    held = np.arange(len(picked)) % every == every - 1
    return float(1.0 - np.isin(codes[held], np.unique(codes[~held])).mean())


def dropout_for(epochs: float, raw_epochs: float | None = None) -> float:
    """Dropout for a budget that makes ``epochs`` (effective) passes: 0 up to
    :data:`NO_DROPOUT_PASSES`, then 0.1 per doubling (0.1 at 4, 0.2 at 8, 0.3 at 16, 0.4 at
    32), at most :data:`MAX_DROPOUT`; 0 too while the ``raw_epochs`` (default ``epochs``)
    are at most :data:`NO_DROPOUT_PASSES`: what a model has seen at most twice it cannot have
    memorised, however sparse the text."""
    if min(epochs, epochs if raw_epochs is None else raw_epochs) <= NO_DROPOUT_PASSES:
        return 0.0
    return round(min(MAX_DROPOUT, 0.1 * math.log2(epochs / NO_DROPOUT_PASSES)), 2)


def embedding_for(vocab_size: int, hidden_size: int) -> int:
    """Embedding size for ``vocab_size`` ids: 8 · V^(1/3) rounded up to a multiple of 32,
    between 64 and ``hidden_size`` (64 for 100 characters, 128 for 4,000 Chinese characters,
    224 for 19,000 words)."""
    size = 32 * math.ceil(8 * vocab_size ** (1 / 3) / 32)
    return int(min(max(size, 64), hidden_size))


def eval_every_for(steps: float) -> int:
    """Steps between evaluations: about :data:`EVALS_PER_BUDGET` per budget, multiples of 10,
    at least :data:`MIN_EVAL_EVERY`."""
    return max(MIN_EVAL_EVERY, 10 * round(steps / EVALS_PER_BUDGET / 10))


def check_vocabulary(train_tokens: int, vocab_size: int) -> None:
    """Raises ConfigError when the training split is too short to train every id.

    An id met fewer than :data:`MIN_OCCURRENCES` times on average gets almost no gradient for
    its embedding and output rows: the model would spend its capacity on noise.
    """
    if vocab_size > 2 and train_tokens < MIN_OCCURRENCES * vocab_size:
        raise ConfigError(
            f"the vocabulary has {vocab_size:,} ids but the training split only "
            f"{train_tokens:,} tokens ({train_tokens / vocab_size:.1f} per id); most ids "
            f"cannot be learned: raise `min_freq` (e.g. 2 or 3), cap `max_vocab` (e.g. "
            f"{max(2, train_tokens // (4 * MIN_OCCURRENCES)):,}) or use `tokenizer` 'char'")


def check_budget(m: Measurement) -> None:
    """Raises ConfigError when one evaluation would take over :data:`EVAL_SHARE` of the time
    budget at the measured speed."""
    if m.budget and m.val_tokens and m.eval_seconds > EVAL_SHARE * m.budget:
        need = math.ceil(m.eval_seconds / EVAL_SHARE * 5)
        raise ConfigError(
            f"`time_budget` {m.budget:g} s is too short: one evaluation of the "
            f"{m.val_tokens:,}-token validation split takes about {m.eval_seconds:.1f} s here; "
            f"give `time_budget` {need} or more, or a smaller validation share in `split`")


def adapt(names: tuple[str, ...], model: ModelConfig, train: TrainConfig,
          m: Measurement) -> tuple[ModelConfig, TrainConfig, dict]:
    """The configs with each setting in ``names`` chosen by its rule, and a record of the
    measurement and the choices (saved with the run)."""
    chosen: dict = {}
    epochs, steps = m.effective_epochs, m.steps
    if "threads" in names and m.thread_rates:
        chosen["threads"] = int(max(m.thread_rates, key=m.thread_rates.get))
    if "num_layers" in names:
        chosen["num_layers"] = model.num_layers  # build_model chose it, measuring both depths
    if "dropout" in names and epochs is not None:
        chosen["dropout"] = dropout_for(epochs, m.epochs)
    if "embedding_dim" in names and model.embedding_dim is not None and not model.tie_weights:
        chosen["embedding_dim"] = embedding_for(m.vocab_size, model.hidden_size)
    model = replace(model, **{k: v for k, v in chosen.items() if k != "threads"})
    if "eval_every" in names and steps is not None and train.eval_every:
        chosen["eval_every"] = eval_every_for(steps)
        train = replace(train, eval_every=chosen["eval_every"])
    record = {"measured": {**asdict(m), "epochs": m.epochs, "effective_epochs": epochs,
                           "steps": steps, "eval_seconds": m.eval_seconds}, "chosen": chosen}
    return model, train, record


def _clock(device: torch.device) -> float:
    """The time once ``device`` has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def _eval_speed(model, X: torch.Tensor, Y: torch.Tensor, seconds: float) -> float:
    model.eval()
    done, start = 0, _clock(X.device)
    while True:
        model.loss(X, Y)
        done += Y.numel()
        if _clock(X.device) - start >= seconds:
            return done / (_clock(X.device) - start)


def probe(model, train: np.ndarray, batch_size: int, num_steps: int, *, clip: float,
          device: torch.device, seconds: float = 1.0, counts: tuple[int, ...] = ()
          ) -> tuple[float, float, dict[int, float]]:
    """Training and evaluation tokens per second of ``model`` on (batch_size, num_steps)
    windows of ``train``. Training is timed in short bursts, the best of each thread count in
    ``counts`` kept (:func:`seqlm.threads.rates`; torch's count is left at the fastest), so a
    busy moment lowers a burst rather than the reading; with no ``counts``, at torch's count.
    Runs on a copy with its own optimizer: the model and the random streams are left as they
    were.

    Returns:
        ``(train tokens/s, eval tokens/s, train tokens/s of each thread count tried)``.
    """
    twin = copy.deepcopy(model).to(device).train()
    rows = min(batch_size, max(1, (len(train) - 1) // num_steps))
    flat = torch.from_numpy(np.asarray(train[: rows * num_steps + 1], dtype=np.int64))
    X = flat[:-1].view(rows, num_steps).to(device)
    Y = flat[1:].view(rows, num_steps).to(device)
    opt = torch.optim.Adam(twin.parameters(), lr=1e-9)
    rng = torch.get_rng_state()  # the probe's dropout must not move the run's streams
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def step() -> int:
        nll, _ = twin.loss(X, Y)
        opt.zero_grad(set_to_none=True)
        (nll / Y.numel()).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), clip or math.inf)
        opt.step()
        _clock(device)
        return Y.numel()

    counts = counts or (torch.get_num_threads(),)
    speeds = threads.rates(step, counts, seconds=seconds / (PROBE_ROUNDS * len(counts)),
                           rounds=PROBE_ROUNDS)
    eval_speed = _eval_speed(twin, X, Y, seconds / 2)
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    return max(speeds.values()), eval_speed, speeds


def build_model(cfg: ModelConfig, splits: dict[str, np.ndarray], data: DataConfig,
                train: TrainConfig, device: torch.device, dist) -> tuple[RNNLM, TrainConfig,
                                                                         dict | None]:
    """A run's model on ``device``, its training config and the recipe's record (None when
    ``train.adapt`` is empty).

    With ``train.adapt`` names, the model's speed on this machine is measured (:func:`probe`;
    under ``torchrun`` summed over the ``dist`` ranks so they all choose alike) and those
    settings chosen (:func:`adapt`). The returned config lists nothing to adapt, so a resumed
    run keeps the choices.

    Raises:
        CorpusError: the training split cannot fill one minibatch.
        ConfigError: the vocabulary or the budget does not suit the recipe
            (:func:`check_vocabulary`, :func:`check_budget`).
    """
    names = train.adapted()
    tokens = splits["train"]
    if names:
        check_fits(tokens, data.batch_size, data.num_steps)  # the probe needs one minibatch
        check_vocabulary(len(tokens), cfg.vocab_size)
        if "embedding_dim" in names and cfg.embedding_dim and not cfg.tie_weights:
            cfg = replace(cfg, embedding_dim=embedding_for(cfg.vocab_size, cfg.hidden_size))
    model = RNNLM(with_cutoffs(cfg, tokens)).to(device)
    if not names:
        return model, train, None
    first = model.config
    sparsity = unseen_bigrams(tokens) if "dropout" in names else 0.0  # only dropout reads it
    # Threads are chosen on the CPU for one process (under torchrun each rank has its own).
    counts = threads.candidates() if ("threads" in names and train.threads is None
                                      and device.type == "cpu" and not dist.enabled) else ()

    def measure(candidate: RNNLM) -> Measurement:
        train_speed, eval_speed, rates = probe(candidate, tokens, data.batch_size,
                                               data.num_steps, clip=train.clip, device=device,
                                               counts=counts)
        speeds = dist.sum(train_speed, eval_speed)
        return Measurement(
            train_tokens=len(tokens), val_tokens=len(splits.get("val", ())),
            vocab_size=cfg.vocab_size, tokens_per_step=data.batch_size * data.num_steps,
            train_tokens_per_s=speeds[0], eval_tokens_per_s=speeds[1],
            budget=train.time_budget, max_epochs=train.epochs, max_steps=train.max_steps,
            unseen_bigrams=sparsity,
            thread_rates={str(k): round(v, 1) for k, v in rates.items()} if counts else None)

    measured = measure(model)
    if "num_layers" in names and wants_depth(first, measured):
        deep = twin(first, 2, device)
        deep_measured = measure(deep)
        if (deep_measured.steps or 0) >= DEEP_STEPS:
            model, measured = deep, deep_measured
    check_budget(measured)
    adapted, train, record = adapt(names, model.config, train, measured)
    train = replace(train, adapt="")
    if "threads" in record["chosen"]:
        torch.set_num_threads(record["chosen"]["threads"])  # the deep probe may have moved it
    if adapted != first:
        torch.manual_seed(train.seed)  # the same init as a run given these settings
        model = RNNLM(adapted).to(device)
    return model, train, {**record, "adapted": list(names)}


def twin(cfg: ModelConfig, num_layers: int, device: torch.device) -> RNNLM:
    """A model of ``cfg`` with ``num_layers`` layers to probe, built without moving the run's
    random stream (it is not kept)."""
    rng = torch.get_rng_state()
    model = RNNLM(replace(cfg, num_layers=num_layers)).to(device)
    torch.set_rng_state(rng)
    return model


def rules() -> dict:
    """The recipe's constants (every upper-case number, string or tuple of this module,
    :data:`REVISION` included, so a constant added later is covered too): with a preset's
    settings, what a run's choices depend on (benchmarks/quality.py stores them with each
    result)."""
    return {name.lower(): value for name, value in globals().items()
            if name.isupper() and isinstance(value, (int, float, str, tuple))}


def wants_depth(cfg: ModelConfig, m: Measurement) -> bool:
    """Whether a 2-layer stack is worth measuring: the model has one layer of a GRU or an
    LSTM and the budget makes at least :data:`DEEP_PASSES` passes with it (raw passes, not
    :attr:`Measurement.effective_epochs`), so the text, not the compute, is what limits it
    (the 2-layer model is then kept if the budget still gives it :data:`DEEP_STEPS` steps)."""
    epochs = m.epochs  # raw passes: on Chinese (5.4 passes, 17 effective) 2 layers lost
    return (cfg.num_layers == 1 and cfg.cell in ("gru", "lstm") and epochs is not None
            and epochs >= DEEP_PASSES)


def with_cutoffs(cfg: ModelConfig, tokens: np.ndarray) -> ModelConfig:
    """``cfg`` with an adaptive softmax's cutoffs, if it may have one and none are given,
    chosen from the counts of ``tokens`` (:func:`seqlm.models.output.choose_cutoffs`)."""
    if cfg.output == "full" or cfg.cutoff_ranks():
        return cfg
    counts = np.bincount(np.asarray(tokens), minlength=cfg.vocab_size)
    return replace(cfg, cutoffs=",".join(map(str, choose_cutoffs(counts, cfg.vocab_size))))
