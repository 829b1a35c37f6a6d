"""The optimisation: the optimizer, its state as plain tensors, and the lr at each step."""

from __future__ import annotations

import math

import torch

from seqlm.config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int | None,
              elapsed: float = 0.0) -> float:
    """The multiplier of the peak lr at ``step``: linear warm-up, then constant or a cosine
    decay to ``min_lr_ratio`` by the end of the budget.

    The cosine follows whichever budget is nearer its end: the fraction of ``total_steps``
    done, or of ``cfg.time_budget`` spent (``elapsed`` seconds), so a run with only a time
    budget still decays to ``min_lr_ratio`` as its time runs out.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    fractions = []
    if total_steps:
        fractions.append(max(step - cfg.warmup_steps, 0) / max(total_steps - cfg.warmup_steps, 1))
    if cfg.time_budget:
        fractions.append(elapsed / cfg.time_budget)
    if cfg.schedule != "cosine" or not fractions:
        return 1.0
    frac = min(max(fractions), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """The optimizer's moments as flat ``optim.<param index>.<slot>`` tensors (for
    safetensors) and its JSON-ready param groups."""
    saved = optimizer.state_dict()
    tensors = {f"optim.{index}.{name}": torch.as_tensor(value)
               for index, slots in saved["state"].items() for name, value in slots.items()}
    return tensors, saved["param_groups"]


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         param_groups: list) -> None:
    """Restores what :func:`optimizer_state` gave (other keys of ``tensors`` are ignored)."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
