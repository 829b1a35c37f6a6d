"""Gradient flow of a language model on real text: what ``seqlm bptt`` measures."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from seqlm.diagnostics.experiments import growth_summary, sweep, truncation_error
from seqlm.diagnostics.flow import gradient_flow

TRUNCATION_TAUS = (1, 2, 4, 8, 16, 32, 64)


def language_model_flow(model, batch: torch.Tensor, *, with_sweep: bool = False,
                        with_truncation_error: bool = False, seed: int = 0,
                        jacobian: bool = True) -> dict[str, Any]:
    """The gradient flow of ``model``'s real next-token loss, optionally beside the sweep.

    Args:
        model: an :class:`~seqlm.models.lm.RNNLM` (float64 and eval mode recommended).
        batch: (B, T+1) token ids: inputs ``batch[:, :-1]``, targets ``batch[:, 1:]``.
        with_sweep: add :func:`~seqlm.diagnostics.sweep` on the one-hot inputs.
        with_truncation_error: add :func:`~seqlm.diagnostics.truncation_error` of the
            model's mean sequence loss for tau in 1, 2, 4, ... below T.
        seed: the sweep's seed.
        jacobian: also measure the Jacobian products' norms (the costly part: a state-sized
            batch and an SVD per step).

    Returns:
        ``{"curves": {"model": flow, ...sweep curves}}`` and, when asked,
        ``"truncation_error": [...]``; the model's curve carries :func:`growth_summary`.
    """
    tokens, targets = batch[:, :-1], batch[:, 1:]
    vocab_size = model.config.vocab_size

    def core(x, h):  # the model's embedding (or one-hot lookup) and recurrent core
        return model.core(model.embed(x), h)

    def last_loss(o_T):  # the real next-token loss at the last step, per sequence
        return F.cross_entropy(model.decode(o_T), targets[:, -1], reduction="none")

    def sequence_loss(outputs):  # the chapter's mean loss over every step
        logits = model.decode(outputs)
        return F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))

    flow = gradient_flow(core, tokens, loss_fn=last_loss, jacobian=jacobian)
    report: dict[str, Any] = {"curves": {"model": {**flow, **growth_summary(flow)}}}
    if with_sweep:
        one_hot = F.one_hot(tokens, vocab_size).double()
        report["curves"].update(sweep(inputs=one_hot, seed=seed))
    if with_truncation_error:
        taus = [t for t in TRUNCATION_TAUS if t < tokens.shape[1]]
        report["truncation_error"] = truncation_error(core, tokens, sequence_loss, taus,
                                                      params=list(model.parameters()))
    return report
