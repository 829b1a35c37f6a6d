"""A log interval of the training loop: the sums of its steps, kept on the device until the
interval ends, so the loop never syncs the host per step for its metrics."""

from __future__ import annotations

import time

import torch


class StepWindow:
    """The sums of the training steps of one log interval (summed NLL, pre-clip gradient norms,
    tokens, seconds inside the steps), kept on the device until the interval ends."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.norm = torch.zeros((), dtype=torch.float64, device=device)
        self.norm_max = torch.zeros((), dtype=torch.float64, device=device)
        self.steps, self.tokens, self.start = 0, 0, time.perf_counter()
        self.step_s = 0.0  # seconds inside training steps (no evaluations, no hooks)

    def add(self, nll: torch.Tensor, norm: torch.Tensor, tokens: int) -> None:
        self.loss += nll
        self.norm += norm
        torch.maximum(self.norm_max, norm.double(), out=self.norm_max)
        self.steps += 1
        self.tokens += tokens
