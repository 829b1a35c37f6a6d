"""Evaluation: the token-weighted loss of a model over a split, every token predicted once
with the hidden state carried along each row (what training's validation, ``seqlm evaluate``
and the benchmarks report; perplexity is its exp)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from seqlm.batches import eval_batches
from seqlm.distributed import Dist
from seqlm.metrics import LossMeter
from seqlm.models import RNNLM


@torch.inference_mode()
def evaluate(model: RNNLM, tokens: np.ndarray, *, batch_size: int = 32, num_steps: int = 35,
             device: torch.device | str = "cpu", autocast=contextlib.nullcontext,
             dist: Dist | None = None) -> LossMeter:
    """Token-weighted NLL of ``model`` on ``tokens``, every token predicted once with the
    hidden state carried through each row. With ``dist``, only this rank's share of the rows
    (the caller sums the meters over the ranks)."""
    was_training = model.training
    model.eval()
    meter = LossMeter()
    state = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for X, Y in eval_batches(tokens, batch_size, num_steps):
        if dist is not None:
            rows = dist.part(len(X))
            X, Y = X[rows], Y[rows]
        if not len(X):
            break  # this rank has no rows of a split shorter than one row per rank
        X, Y = X.to(device), Y.to(device)
        with autocast():
            nll, state = model.loss(X, Y, state)
        total += nll.double()
        count += Y.numel()
    meter.add(float(total), count)
    model.train(was_training)
    return meter
