"""The recurrent language model: tokens → (one-hot or embedding) → core → dropout → logits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from seqlm.errors import ConfigError
from seqlm.models.scratch import (BPTT_ENGINES, CELLS, IMPLS, INITS, NONLINEARITIES, State,
                                  check_bptt_engine, init_d2l_, make_core)
from seqlm.models.steps import ONEDNN as _ONEDNN


def _help(text: str, choices: tuple[str, ...] | None = None) -> dict:
    return {"help": text, "choices": list(choices)} if choices else {"help": text}


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`RNNLM` (saved in every checkpoint).

    Raises:
        ConfigError: from ``__post_init__``, naming the field and the value it cannot use.
    """

    vocab_size: int = field(metadata=_help("number of token ids V (set from the vocabulary)"))
    cell: str = field(default="rnn", metadata=_help("recurrent cell", CELLS))
    impl: str = field(default="scratch", metadata=_help(
        "'scratch': the chapter's equations in Python; 'fused': torch's cuDNN/MKL kernels; "
        "'auto': the faster one measured for the cell and device (see ModelConfig.resolve)",
        (*IMPLS, "auto")))
    hidden_size: int = field(default=256, metadata=_help("hidden units H per layer"))
    num_layers: int = field(default=1, metadata=_help("stacked recurrent layers L"))
    embedding_dim: int | None = field(default=None, metadata=_help(
        "learned embedding size E; None feeds the chapter's one-hot vectors"))
    dropout: float = field(default=0.0, metadata=_help(
        "dropout probability on embeddings, between layers and before the decoder, in [0, 1)"))
    tie_weights: bool = field(default=False, metadata=_help(
        "share the embedding matrix with the decoder (needs embedding_dim == hidden_size)"))
    nonlinearity: str = field(default="tanh", metadata=_help(
        "activation of the plain RNN cell", NONLINEARITIES))
    init: str = field(default="torch", metadata=_help(
        "'torch': U(-1/sqrt(H), 1/sqrt(H)); 'd2l': the book's N(0, 0.01^2) weights, zero biases",
        INITS))
    bptt_engine: str = field(default="autograd", metadata=_help(
        "'manual' runs the hand-written backward pass (impl scratch; cell rnn, or cell gru "
        "with truncation window/full); 'auto': manual where it exists, else autograd",
        (*BPTT_ENGINES, "auto")))
    truncation: str = field(default="window", metadata=_help(
        "BPTT truncation: 'window', 'full', or a strategy of seqlm.models.bptt (scratch only)"))

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers"):
            _check_positive_int(name, getattr(self, name))
        if self.embedding_dim is not None:
            _check_positive_int("embedding_dim", self.embedding_dim)
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r} is not supported; use "
                                  f"one of {', '.join(choices)}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} must be a probability in [0, 1)")
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            raise ConfigError(f"tie_weights=True needs embedding_dim == hidden_size, got "
                              f"embedding_dim={self.embedding_dim} hidden_size="
                              f"{self.hidden_size}; set embedding_dim to {self.hidden_size}")
        if self.cell != "rnn" and self.nonlinearity != "tanh":
            raise ConfigError(f"nonlinearity={self.nonlinearity!r} applies only to cell 'rnn', "
                              f"not {self.cell!r}; use nonlinearity 'tanh'")
        if not isinstance(self.truncation, str):
            raise ConfigError(f"truncation={self.truncation!r} must be text such as 'window'")
        if self.truncation not in ("window", "full"):
            from seqlm.models.bptt import Truncation  # lazy: only non-default policies need it

            Truncation.parse(self.truncation)  # raises ConfigError naming the accepted forms
        if self.truncation not in ("window", "full") and self.impl == "fused":
            raise ConfigError(f"truncation={self.truncation!r} needs impl 'scratch'; fused "
                              "cores support only 'window' and 'full'")
        if "auto" not in (self.impl, self.bptt_engine):
            check_bptt_engine(self.cell, self.impl, self.bptt_engine, self.truncation)
        elif self.impl != "auto" or self.bptt_engine != "auto":
            self.resolve()  # check that what 'auto' becomes can run

    def resolve(self, device_type: str = "cpu") -> ModelConfig:
        """This configuration with ``impl`` and ``bptt_engine`` 'auto' made concrete for a
        device type (``'cpu'``, ``'cuda'``, ``'mps'``), as the training step measures there.

        ``impl``: on the CPU the scratch cores for rnn and gru, whose hand-written BPTT runs
        1.2-1.7x faster than torch's nn.RNN / nn.GRU loops here, and torch's fused LSTM
        (oneDNN's LSTM primitive, faster than the per-step GEMM bound); on other devices the
        fused cores (cuDNN); the scratch core whenever the truncation is neither 'window' nor
        'full'. ``bptt_engine``: 'manual' where the scratch
        core has one for this cell and truncation, else 'autograd'.
        """
        impl, engine = self.impl, self.bptt_engine
        windowed = self.truncation in ("window", "full")
        if impl == "auto":
            fused = device_type != "cpu" or self.cell == "lstm"
            impl = "fused" if fused and windowed else "scratch"
        if engine == "auto":
            has_manual = impl == "scratch" and (self.cell == "rnn" or
                                                (self.cell == "gru" and windowed))
            engine = "manual" if has_manual else "autograd"
        return replace(self, impl=impl, bptt_engine=engine)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


class RNNLM(nn.Module):
    r"""Recurrent language model: ``logits_t = decoder(dropout(core(input_t, state)))``.

    Input. With ``embedding_dim=None`` the input is the chapter's one-hot vector
    :math:`X_t = \mathrm{onehot}(x_t) \in \{0,1\}^V`, so the first layer computes
    :math:`X_t W_{xh}`. Multiplying by a one-hot vector selects row :math:`x_t` of
    :math:`W_{xh}`, so scratch cores receive the token ids and look the row up in
    ``weight_ih_l0`` — the same number without a (B·T, V) × (V, H) product over zeros. Set
    ``literal_one_hot=True`` (or assign the attribute) to build the one-hot tensor and
    multiply, as the book does; fused cores always take that path because torch's kernels
    accept only dense input. With ``embedding_dim=E`` a learned ``nn.Embedding(V, E)`` feeds
    the core instead, and ``tie_weights`` makes the decoder reuse its matrix.

    Dropout (probability ``config.dropout``) is applied to learned embeddings, between
    layers (inside the core) and before the decoder, as in Zaremba et al. (2014).

    Args:
        config: the architecture.
        literal_one_hot: feed a dense one-hot tensor to scratch cores too (teaching path).

    Raises:
        ConfigError: ``config.truncation`` cannot be parsed or does not suit the core.
    """

    def __init__(self, config: ModelConfig, *, literal_one_hot: bool = False) -> None:
        super().__init__()
        config = config.resolve()  # 'auto' choices become the CPU's; RunSession resolves first
        self.config, self.literal_one_hot = config, literal_one_hot
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim) if c.embedding_dim else None
        self.core = make_core(c.cell, c.impl, c.embedding_dim or c.vocab_size, c.hidden_size,
                              c.num_layers, nonlinearity=c.nonlinearity, dropout=c.dropout,
                              init=c.init, bptt_engine=c.bptt_engine, truncation=c.truncation)
        self.drop = nn.Dropout(c.dropout)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        if c.init == "d2l":
            init_d2l_(self.decoder)  # the book's W_hq ~ N(0, 0.01²), b_q = 0
            if self.embedding is not None:
                init_d2l_(self.embedding)
        if c.tie_weights:
            self.decoder.weight = self.embedding.weight

    @property
    def is_scratch(self) -> bool:
        return self.config.impl == "scratch"

    def forward(self, tokens: Tensor, state: State | None = None, *,
                generator: torch.Generator | None = None) -> tuple[Tensor, State]:
        """Score the next token at every position.

        Args:
            tokens: (B, T) int64 ids in ``[0, V)``.
            state: (L, B, H), for LSTM a pair of them, or None for zeros.
            generator: random source for randomized truncation (scratch cores only).

        Returns:
            ``(logits, state)``: logits (B, T, V) for the token after each position, and the
            state after the last step (same layout as ``state``).

        Raises:
            ValueError: ``tokens`` is not a 2-D integer tensor.
        """
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"RNNLM expects integer tokens (B, T); got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        kwargs = {"generator": generator} if self.is_scratch else {}
        # Every core runs time-major inside. Handing it a (B, T, ·) view of time-major memory
        # and decoding its (B, T, H) output as the (T, B, H) tensor it is spares the transposed
        # copies of inputs, outputs and their gradients; the logits come back as a (B, T, V)
        # view of time-major memory (flatten them with flatten_logits).
        x = self.embed(tokens.t()).transpose(0, 1)
        output, state = self.core(x, state, **kwargs)
        return self.decode(self.drop(output.transpose(0, 1))).transpose(0, 1), state

    def decode(self, h: Tensor) -> Tensor:
        """Logits (..., V) of hidden states (..., H): ``self.decoder``, computed by oneDNN for
        large float32 decoders on the CPU (see :class:`_OneDNNLinear`), else by ``nn.Linear``."""
        w = self.decoder.weight
        if (_ONEDNN and w.numel() >= ONEDNN_MIN_WEIGHT and h.device.type == "cpu"
                and h.dtype == w.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            flat = _OneDNNLinear.apply(h.reshape(-1, h.shape[-1]), w, self.decoder.bias)
            return flat.view(*h.shape[:-1], w.shape[0])
        return self.decoder(h)

    def embed(self, tokens: Tensor) -> Tensor:
        """The core's input: (B, T, E) embeddings, (B, T, V) one-hot, or the (B, T) ids."""
        if self.embedding is not None:
            return self.drop(self.embedding(tokens))
        if self.literal_one_hot or not self.is_scratch:
            return F.one_hot(tokens, self.config.vocab_size).to(self.decoder.weight.dtype)
        return tokens

    def next_logits(self, state: State) -> Tensor:
        """(B, V) logits of the token that follows ``state``: the decoder on the top layer's h.

        For a state returned by :meth:`forward` this equals the last column of its logits (in
        eval mode); for the zero state it is the decoder bias.
        """
        h = state[0] if isinstance(state, tuple) else state
        return self.decode(h[-1])

    @torch.no_grad()
    def stepper(self, backend: str = "auto", batch_size: int | None = None):
        r"""A function ``step(tokens, state) -> (logits, state)`` that advances one token.

        ``tokens`` (B,) int64, ``state`` as in :meth:`forward`, ``logits`` (B, V). It computes
        what :meth:`forward` does on (B, 1) tokens in eval mode, without its per-call work:
        the first layer's input term of every token, :math:`\mathrm{embed}(v) W_{ih}^T + b`,
        is tabulated once as a (V, G·H) matrix, so a step gathers one row per sequence
        instead of building a one-hot vector (or an embedding) and multiplying it; then each
        layer runs its cell's update once and the decoder reads the top h. Fused cores run
        through a scratch twin holding a copy of their weights. For generation: no dropout,
        no autograd, and the weights are read now (make a new stepper after changing them).

        Args:
            backend: ``'torch'``; ``'numpy'`` (:class:`seqlm.models.cpu_step.NumpyStepper`,
                float32 on the CPU only), faster for a single row because a one-row product
                is a matrix-vector one, where numpy's BLAS and call overhead win; ``'auto'``
                picks numpy for float32 CPU models when ``batch_size`` is 1, else torch.
            batch_size: rows the caller will step (only ``'auto'`` reads it).

        Raises:
            ConfigError: an unknown backend, or ``'numpy'`` for a model it cannot run.
        """
        if backend not in STEPPER_BACKENDS:
            raise ConfigError(f"backend={backend!r} is not supported; use one of "
                              f"{', '.join(STEPPER_BACKENDS)}")
        weight = self.decoder.weight
        cpu32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        if backend == "numpy" and not cpu32:
            raise ConfigError(f"the numpy stepper needs a float32 model on the CPU, not "
                              f"{weight.dtype} on {weight.device}; use backend 'torch'")
        if backend == "numpy" or (backend == "auto" and cpu32 and batch_size == 1):
            from seqlm.models.cpu_step import NumpyStepper

            return NumpyStepper(self)
        c = self.config
        core = self.core
        if not self.is_scratch:  # same parameter names, so the weights load as they are
            core = make_core(c.cell, "scratch", core.input_size, c.hidden_size, c.num_layers,
                             nonlinearity=c.nonlinearity).to(self.decoder.weight)
            core.load_state_dict(self.core.state_dict())
        table = self.input_table()
        layers = []
        for k in range(c.num_layers):
            w_ih, w_hh, b_ih, b_hh = core.layer_weights(k)
            bias = b_ih + b_hh if core.fold_hidden_bias else b_ih
            layers.append((w_ih.t(), bias, w_hh, b_hh))
        w_out, b_out, pair = self.decoder.weight.t(), self.decoder.bias, core.pair_state

        @torch.no_grad()
        def step(tokens: Tensor, state: State) -> tuple[Tensor, State]:
            x = table.index_select(0, tokens)
            parts = state if pair else (state,)
            finals = []
            for k, (w_x, bias, w_hh, b_hh) in enumerate(layers):
                if k:
                    x = torch.addmm(bias, x, w_x)
                h = core.step(w_hh, b_hh, x, tuple(p[k] for p in parts) if pair else parts[0][k])
                finals.append(h if pair else (h,))
                x = h[0] if pair else h
            # one layer: a view instead of the copy torch.stack makes
            new = tuple(layer[0].unsqueeze(0) if len(layer) == 1 else torch.stack(layer)
                        for layer in zip(*finals))
            return torch.addmm(b_out, x, w_out), new if pair else new[0]

        return step

    @torch.no_grad()
    def input_table(self) -> Tensor:
        r"""(V, G·H): the first layer's input term of every token,
        :math:`\mathrm{embed}(v) W_{ih}^T + b` (b = b_ih + b_hh, or b_ih alone for the GRU,
        whose reset gate multiplies b_hh), row-major; the steppers gather rows of it."""
        w_ih, b_ih, b_hh = (getattr(self.core, f"{name}_l0")
                            for name in ("weight_ih", "bias_ih", "bias_hh"))
        bias = b_ih if self.config.cell == "gru" else b_ih + b_hh
        if self.embedding is not None:
            return F.linear(self.embedding.weight, w_ih, bias)
        return (w_ih.t() + bias).contiguous()

    def begin_state(self, batch_size: int, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> State:
        """Zero state (L, B, H) — a pair for LSTM — on ``device`` (default: the model's)."""
        ref = self.decoder.weight
        h = torch.zeros(self.config.num_layers, batch_size, self.config.hidden_size,
                        device=ref.device if device is None else device, dtype=dtype or ref.dtype)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def save_pretrained(self, directory: str | Path, tokenizer, **kwargs) -> Path:
        """Save with :func:`seqlm.checkpoint.save_checkpoint`; keyword arguments pass through."""
        from seqlm.checkpoint import save_checkpoint  # lazy: checkpoint sits downstream

        return save_checkpoint(directory, self, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu"):
        """Load ``(model, tokenizer)`` with :func:`seqlm.checkpoint.load_checkpoint`."""
        from seqlm.checkpoint import load_checkpoint

        loaded = load_checkpoint(directory, device=device)
        return loaded.model, loaded.tokenizer


STEPPER_BACKENDS = ("auto", "torch", "numpy")
# Below this many weights (V·H) MKL's GEMM wins: measured 0.6x for 28x512, 1.1x for 512x512,
# 1.2x for 5000x256 (oneDNN's speed relative to MKL's, forward + backward, 2 threads).
ONEDNN_MIN_WEIGHT = 1 << 18


class _OneDNNLinear(torch.autograd.Function):
    r"""``y = x W^T + b`` for 2-D ``x``, its three products through oneDNN's matmul.

    ``torch.ops.mkldnn._linear_pointwise(a, w, b)`` computes ``a w^T + b`` and accepts
    transposed views, so: forward ``x W^T + b``; input gradient ``G W``; weight gradient
    ``(x^T G)^T``. On the CPU this project measures (AMD EPYC, Zen 4), torch's default
    float32 GEMM (MKL) reaches about 140 GFLOP/s on a 5000-word decoder's products and
    oneDNN about 190; the word model's training step gets ~10% faster (docs/performance.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        linear = torch.ops.mkldnn._linear_pointwise
        grad_x = linear(grad, weight.t(), None, "none", [], "") if need_x else None
        grad_w = linear(x.t(), grad.t(), None, "none", [], "").t() if need_w else None
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


def flatten_logits(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, V) logits and (N,) targets for a loss, paired row by row, in the logits' memory
    order: time-major logits from :meth:`RNNLM.forward` flatten without a copy.

    Args:
        logits: (B, T, V).
        targets: (B, T) ids.
    """
    vocab = logits.shape[-1]
    if not logits.is_contiguous() and logits.transpose(0, 1).is_contiguous():
        return logits.transpose(0, 1).reshape(-1, vocab), targets.t().reshape(-1)
    return logits.reshape(-1, vocab), targets.reshape(-1)


def detach_state(state: State | None) -> State | None:
    """Cut the autograd history of a state: new tensors (never in place); tuples stay tuples."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.detach() for s in state)
    return state.detach()


_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``'auto'|'cpu'|'cuda'|'cuda:N'|'mps'`` into an available ``torch.device``.

    ``'auto'`` picks CUDA, then MPS, then CPU.

    Raises:
        ConfigError: the name is unknown or that device is not available here.
    """
    name = str(name)
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_ok:
            raise ConfigError("--device mps: Apple MPS is not available on this machine; use "
                              "--device cpu or auto")
        return torch.device("mps")
    match = _CUDA_INDEX.fullmatch(name)
    if name == "cuda" or match:
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use "
                              "--device cpu or auto")
        count = torch.cuda.device_count()
        if match and int(match.group(1)) >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; use one of those or cuda")
        return torch.device(name)
    raise ConfigError(f"--device {name}: unknown device; use auto, cpu, cuda, cuda:N or mps")
