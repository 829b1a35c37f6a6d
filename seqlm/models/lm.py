"""The recurrent language model: tokens → (one-hot or embedding) → core → dropout → logits.

The shape legend (B, T, L, H, V, E, I) is in :mod:`seqlm.models`. The CPU fast paths this
model calls (oneDNN products, the generation steppers) live beside it, in
:mod:`seqlm.models.fast` and :mod:`seqlm.models.stepper`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlm.errors import ConfigError
from seqlm.loss import cross_entropy
from seqlm.config import ModelConfig
from seqlm.models import fast
from seqlm.models.output import AdaptiveDecoder, choose_cutoffs, wants_adaptive
from seqlm.models.scratch import State, init_d2l_, make_core
from seqlm.models.stepper import Stepper, make_stepper


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
        self.config = c = self._concrete_output(c)
        if c.output == "adaptive":
            self.decoder = AdaptiveDecoder(c.hidden_size, c.vocab_size, c.cutoff_ranks())
        else:
            self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        if c.init == "d2l":
            init_d2l_(self.decoder)  # the book's W_hq ~ N(0, 0.01²), b_q = 0
            if self.embedding is not None:
                init_d2l_(self.embedding)
        if c.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _concrete_output(self, c: ModelConfig) -> ModelConfig:
        """``c`` with ``output`` 'auto' decided (:func:`~seqlm.models.output.wants_adaptive`,
        from the built core's weight count) and an adaptive layer's cutoffs filled in (by rank
        when the caller gave none; :class:`~seqlm.run.RunSession` gives them from the counts)."""
        output = c.output
        if output == "auto":
            core_weights = sum(p.numel() for p in self.core.parameters())
            output = "adaptive" if not c.tie_weights and wants_adaptive(
                c.vocab_size, c.hidden_size, core_weights) else "full"
        if output == "adaptive" and c.tie_weights:
            raise ConfigError("`tie_weights` needs `output` 'full' (the adaptive softmax has no "
                              "V x H matrix to share); set `output` 'full' or turn tying off")
        cutoffs = c.cutoffs if output == "adaptive" else ""
        if output == "adaptive" and not c.cutoff_ranks():
            cutoffs = ",".join(map(str, choose_cutoffs(None, c.vocab_size)))
            if not cutoffs:
                raise ConfigError(f"`output` 'adaptive' needs a vocabulary of 4 or more ids, "
                                  f"not {c.vocab_size}; use `output` 'full'")
        return c if (output, cutoffs) == (c.output, c.cutoffs) else replace(
            c, output=output, cutoffs=cutoffs)

    def set_dropout(self, p: float) -> None:
        """Changes the dropout probability (on embeddings, between layers, before the decoder)
        of this model, as if it had been built with ``dropout=p``; the recipe's plan of a run
        may change it while it trains.

        Raises:
            ConfigError: ``p`` is not in [0, 1).
        """
        self.config = replace(self.config, dropout=p)  # validates p
        self.drop.p = p
        if self.config.num_layers > 1:  # torch's fused cores warn about dropout on one layer
            self.core.dropout = p

    @property
    def adaptive(self) -> bool:
        return isinstance(self.decoder, AdaptiveDecoder)

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
            ``(logits, state)``: logits (B, T, V) for the token after each position (for an
            adaptive output layer, exact log-probabilities), and the state after the last
            step (same layout as ``state``).

        Raises:
            ValueError: ``tokens`` is not a 2-D integer tensor.
        """
        output, state = self.hidden(tokens, state, generator=generator)
        return self.decode(output).transpose(0, 1), state

    def loss(self, tokens: Tensor, targets: Tensor, state: State | None = None, *,
             generator: torch.Generator | None = None) -> tuple[Tensor, State]:
        """The summed negative log-likelihood of ``targets`` after each position of ``tokens``
        (what training minimises, divided by the token count).

        Args:
            tokens, state, generator: as :meth:`forward`.
            targets: (B, T) ids of the next tokens. An adaptive output layer scores only each
                target's clusters, never all V ids.

        Returns:
            ``(nll, state)``: a float32 scalar, and the state after the last step.

        Raises:
            ValueError: ``tokens`` is not a 2-D integer tensor.
        """
        output, state = self.hidden(tokens, state, generator=generator)
        if self.adaptive:
            return self.decoder.nll(output.reshape(-1, output.shape[-1]).float(),
                                    targets.t().reshape(-1)), state
        logits = self.decode(output).transpose(0, 1)
        return cross_entropy(*fast.flatten_logits(logits.float(), targets),
                             reduction="sum"), state

    def hidden(self, tokens: Tensor, state: State | None = None, *,
               generator: torch.Generator | None = None) -> tuple[Tensor, State]:
        """The decoder's input: the top layer's outputs after dropout, (T, B, H) time-major,
        and the final state; arguments and checks as :meth:`forward`."""
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"RNNLM expects integer tokens (B, T); got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        kwargs = {"generator": generator} if self.is_scratch else {}
        # Cores run time-major inside: a (B, T, ·) view of time-major memory in, and the output
        # decoded as the (T, B, H) tensor it is, spare transposed copies (fast.flatten_logits).
        x = self.embed(tokens.t()).transpose(0, 1)
        if self._lstm_needs_float32(x):
            with torch.autocast("cpu", enabled=False):
                output, state = self.core(x.float(), _as_float(state))
        else:
            output, state = self.core(x, state, **kwargs)
        return self.drop(output.transpose(0, 1)), state

    def _lstm_needs_float32(self, x: Tensor) -> bool:
        """Whether torch's fused LSTM must leave bfloat16 autocast: oneDNN has no bfloat16
        LSTM on CPUs without native bfloat16 (no avx512_bf16 or AMX; it fails to build the
        primitive), so there the core runs in float32 and the rest of the model in bfloat16."""
        return (x.device.type == "cpu" and isinstance(self.core, nn.LSTM)
                and torch.is_autocast_enabled("cpu") and not fast.cpu_has_bf16())

    def decode(self, h: Tensor) -> Tensor:
        """Logits (..., V) of hidden states (..., H): ``self.decoder`` (through oneDNN for large
        float32 decoders on the CPU, :func:`seqlm.models.fast.linear`); for an adaptive output
        layer, its exact log-probabilities."""
        if self.adaptive:
            return self.decoder(h)
        return fast.linear(h, self.decoder)

    def reference(self) -> Tensor:
        """A decoder parameter, for the model's device and floating dtype."""
        return self.decoder.reference if self.adaptive else self.decoder.weight

    def embed(self, tokens: Tensor) -> Tensor:
        """The core's input: (B, T, E) embeddings, (B, T, V) one-hot, or the (B, T) ids."""
        if self.embedding is not None:
            return self.drop(self.embedding(tokens))
        if self.literal_one_hot or not self.is_scratch:
            return F.one_hot(tokens, self.config.vocab_size).to(self.reference().dtype)
        return tokens

    def next_logits(self, state: State) -> Tensor:
        """(B, V) logits of the token that follows ``state``: the decoder on the top layer's h.

        For a state returned by :meth:`forward` this equals the last column of its logits (in
        eval mode); for the zero state it is the decoder bias.
        """
        h = state[0] if isinstance(state, tuple) else state
        return self.decode(h[-1])

    def stepper(self, *, batch_size: int | None = None, backend: str = "auto") -> Stepper:
        """A :class:`~seqlm.models.stepper.Stepper` that advances ``batch_size`` rows one token
        at a time, as :meth:`forward` does in eval mode (see :mod:`seqlm.models.stepper`).

        Raises:
            ConfigError: an unknown backend, or ``'numpy'`` for a model it cannot run.
        """
        return make_stepper(self, backend, batch_size)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> State:
        """Zero state (L, B, H) — a pair for LSTM — on ``device`` (default: the model's)."""
        ref = self.reference()
        h = torch.zeros(self.config.num_layers, batch_size, self.config.hidden_size,
                        device=ref.device if device is None else device, dtype=dtype or ref.dtype)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h


def detach_state(state: State | None) -> State | None:
    """Cut the autograd history of a state: new tensors (never in place); tuples stay tuples."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.detach() for s in state)
    return state.detach()


def _as_float(state: State | None) -> State | None:
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.float() for s in state)
    return state.float()


class LossOf(nn.Module):
    """:meth:`RNNLM.loss` as a module's ``forward``, for wrappers that call ``forward``
    (DistributedDataParallel averages gradients only for what runs through it)."""

    def __init__(self, model: RNNLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, targets: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        return self.model.loss(tokens, targets, state)
