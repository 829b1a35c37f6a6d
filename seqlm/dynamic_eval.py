r"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic evaluation of neural
sequence models"): a trained model that takes a gradient step on each segment of the text
after scoring it, so that it adapts to the text it is reading.

The text is read in segments of ``segment`` tokens with the state
carried. Each segment is scored first; then the model takes one step on the gradient
:math:`g` of that segment's mean NLL (the model's own, not the mixture's) and the next segment
is scored with the adapted weights :math:`\theta`, which decay back towards the trained
:math:`\theta_0`:

.. math::

    \text{sgd:}\quad \theta \leftarrow \theta - \eta\, g + \lambda_d (\theta_0 - \theta)

    \text{rms:}\quad \theta \leftarrow \theta - \eta\, \frac{g}{\sqrt{MS} + \epsilon}
        + \min\!\Big(\lambda_d \frac{\sqrt{MS}}{\overline{\sqrt{MS}}},\, 1\Big) \odot
        (\theta_0 - \theta)

where :math:`MS` is the mean squared gradient of each weight over segments of the training
text (Krause et al.'s global prior, :func:`gradient_prior`), :math:`\overline{\sqrt{MS}}` its
mean over all weights and :math:`\epsilon =` :data:`EPS_SHARE` :math:`\cdot
\overline{\sqrt{MS}}`.

This module holds the settings, the update rule (:class:`Adaptation`) and the rms rule's
prior; :class:`seqlm.reading.Reader` reads a text with them. The weights adapted are always a
copy's: the trained weights, in memory and on disk, never change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlm.config import DYNAMIC_RULES, DYNAMIC_SEGMENT
from seqlm.errors import (ConfigError, check_choice, check_positive_int, check_range,
                          field_error)

RULES, SEGMENT = DYNAMIC_RULES, DYNAMIC_SEGMENT  # the update rules (module docstring)
EPS_SHARE = 0.1  # ε of the rms rule, as a share of the mean sqrt(MS)


@dataclass(frozen=True)
class DynamicSettings:
    """Dynamic evaluation: learning rate ``lr`` (η), update ``rule`` (``'rms'`` or
    ``'sgd'``), ``decay`` (λ_d) back to the trained weights per update, ``segment`` tokens
    read between updates.

    Raises:
        ConfigError: ``lr`` negative or not finite, an unknown rule, ``decay`` outside
            [0, 1], ``segment`` not a positive integer.
    """

    lr: float
    rule: str = "rms"
    decay: float = 0.0
    segment: int = SEGMENT

    def __post_init__(self) -> None:
        check_range("lr", self.lr, "a number >= 0 (0 reads without adapting)", below=math.inf)
        check_choice("rule", self.rule, RULES)
        check_range("decay", self.decay, "in [0, 1]", below=1.0, closed=True)
        check_positive_int("segment", self.segment)


class Adaptation:
    """Dynamic evaluation's update of ``model``'s weights in place (give it a copy): call
    :meth:`step` after each segment's ``loss.backward()``.

    Args:
        model: the model to adapt; its weights now are θ_0, the ones decayed back to.
        settings: the rule, learning rate and decay.
        prior: ``{parameter name: MS}`` from :func:`gradient_prior` (the rms rule only).

    Raises:
        ConfigError: the rms rule without a prior, or a prior of another model.
    """

    def __init__(self, model, settings: DynamicSettings, prior: dict[str, Tensor] | None):
        self.settings = settings
        self.params = [(name, p) for name, p in model.named_parameters()]
        self.start = [p.detach().clone() for _, p in self.params]
        self.scale: list = [1.0] * len(self.params)
        self.rate: list = [settings.decay] * len(self.params)
        if settings.rule == "rms":
            if prior is None:
                raise ConfigError("the 'rms' rule needs the mean squared gradients of this "
                                  "model's weights on training text (gradient_prior); compute "
                                  "them, or use `rule` 'sgd'")
            if set(prior) != {n for n, _ in self.params}:
                raise ConfigError("the mean squared gradients given are another model's (their "
                                  "names differ from its weights'); compute them for this one")
            root = [prior[n].to(p).sqrt() for n, p in self.params]
            mean = float(sum(r.sum() for r in root) / sum(r.numel() for r in root)) or 1.0
            self.scale = [r + EPS_SHARE * mean for r in root]
            self.rate = [(settings.decay * r / mean).clamp(max=1.0) for r in root]

    @torch.no_grad()
    def step(self) -> None:
        """One update of every weight from its ``.grad`` (then cleared), with the decay."""
        lr, decay = self.settings.lr, self.settings.decay
        for (_, p), p0, scale, rate in zip(self.params, self.start, self.scale, self.rate):
            pull = (p0 - p).mul_(rate) if decay else None  # from θ before this step
            if p.grad is not None:
                p.add_(p.grad / scale, alpha=-lr)
                p.grad = None
            if pull is not None:
                p.add_(pull)


def segment_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean NLL of (T, B) ``targets`` under (T', B, V) ``logits`` (T ≤ T'; an adaptive
    output layer's log-probabilities work as they are)."""
    T = targets.shape[0]
    return F.cross_entropy(logits[:T].float().flatten(0, 1), targets.flatten())


def detached(state):
    """The state cut from its autograd history (tuples stay tuples)."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def gradient_prior(model, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Krause et al.'s global prior for the rms rule: each weight's mean squared gradient
    of the segment mean NLL over ``batches`` of training text, at the trained weights, the
    state carried (``model`` itself is untouched: a copy takes the gradients).

    Returns:
        ``{parameter name: MS}`` on the CPU, shaped like each parameter.

    Raises:
        ConfigError: ``batches`` is empty.
    """
    model = copy.deepcopy(model).eval()
    device = model.reference().device
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    state, count = None, 0
    for X, Y in batches:
        with torch.enable_grad(), no_cudnn(model, True):
            h, state = model.hidden(X.to(device), state)
            loss = segment_loss(model.decode(h), Y.to(device).t())
        loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                sums[n] += p.grad.square()
                p.grad = None
        state, count = detached(state), count + 1
    if not count:
        raise field_error("prior text", "empty", "at least one segment of training text")
    return {n: (s / count).cpu() for n, s in sums.items()}


def no_cudnn(model, adapting: bool):
    """cuDNN's recurrent backward needs training mode (dropout on); without cuDNN the fused
    cores differentiate in eval mode, as they do on the CPU."""
    cuda = model.reference().device.type == "cuda"
    return torch.backends.cudnn.flags(enabled=False) if adapting and cuda else nullcontext()


