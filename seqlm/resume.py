"""What an exact resume needs beyond the weights: where training stands, its random streams, the
carried hidden state and the optimizer's moments.

:class:`ResumeState` is the trainer's collaborator for this: given the parts it saves (the
optimizer, the sampler's generator, the process group), it turns the trainer's position into
tensors and JSON (:meth:`ResumeState.save`) and back (:meth:`ResumeState.load`). The divergence
guard's snapshots hold the same thing, with the weights beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seqlm.distributed import Dist
from seqlm.schedule import load_optimizer_state, optimizer_state


@dataclass
class Progress:
    """Counters that say where training stands; saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float = math.inf
    best_step: int = 0
    stale_evals: int = 0
    stop_reason: str = ""


@dataclass
class Position:
    """The trainer's place in its run: the counters, the sampler generator's state at the
    start of the epoch (its minibatches are drawn again from there), the hidden state carried
    between minibatches (sequential partitioning; None otherwise) and the plateau schedule's
    lr factor."""

    progress: Progress
    epoch_start: torch.Tensor
    carried: torch.Tensor | tuple[torch.Tensor, ...] | None
    plateau_lr: float


class ResumeState:
    """Saves and loads a :class:`Position` and the random streams around it.

    Args:
        optimizer: the run's optimizer (its moments are saved as plain tensors).
        generator: the sampler's generator (its current state is saved too).
        dist: the process group: every rank's own torch stream and the carried rows are
            gathered on save, and each rank takes back its own on load.
        device: where the carried state and the CUDA stream live.
        seed: the run's seed (ranks > 0 derive fresh streams from it when the saving run had
            another number of processes).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                 dist: Dist, device: torch.device, seed: int) -> None:
        self.optimizer, self.generator, self.dist = optimizer, generator, dist
        self.device, self.seed = device, seed

    def save(self, at: Position) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, meta)``: plain tensors and JSON-able data."""
        tensors = {"rng.torch": torch.get_rng_state(),
                   "rng.sampler": self.generator.get_state(),
                   "rng.sampler_epoch": at.epoch_start}
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.dist.enabled:  # every rank's own stream (dropout masks), (N, S) bytes
            for key in [k for k in ("rng.torch", "rng.cuda") if k in tensors]:
                tensors[f"{key}.ranks"] = self.dist.gather(tensors[key][None])
        parts = () if at.carried is None else (
            at.carried if isinstance(at.carried, tuple) else (at.carried,))
        for i, s in enumerate(parts):  # the ranks' rows gathered: global (L, B, H)
            tensors[f"carried_state.{i}"] = self.dist.gather(s, dim=1)
        optim_tensors, param_groups = optimizer_state(self.optimizer)
        tensors.update(optim_tensors)
        progress = vars(at.progress).copy()
        if not math.isfinite(progress["best_val"]):  # JSON has no infinity: no evaluation yet
            progress["best_val"] = None
        meta = {"progress": progress, "plateau_lr": at.plateau_lr,
                "param_groups": param_groups, "carried_state_parts": len(parts)}
        return tensors, meta

    def load(self, tensors: dict[str, torch.Tensor], meta: dict) -> Position:
        """Sets the random streams and the optimizer from a :meth:`save`, and returns the
        position it held."""
        saved = dict(meta["progress"])
        if saved.get("best_val") is None:
            saved["best_val"] = math.inf
        progress = Progress(**saved)
        dist = self.dist
        ranks = tensors.get("rng.torch.ranks")
        own = ranks is not None and len(ranks) == dist.world_size  # same process count
        torch.set_rng_state(ranks[dist.rank].clone() if own else tensors["rng.torch"])
        self.generator.set_state(tensors["rng.sampler"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            cuda = tensors.get("rng.cuda.ranks") if own else None
            torch.cuda.set_rng_state(tensors["rng.cuda"] if cuda is None
                                     else cuda[dist.rank].clone(), self.device)
        if not own:  # saved by another number of processes: ranks > 0 begin fresh streams
            dist.reseed(self.seed, progress.step)
        # The global (L, B, H) state, whatever the saving process count: keep this rank's rows.
        parts = [dist.shard(tensors[f"carried_state.{i}"], dim=1).to(self.device)
                 for i in range(meta["carried_state_parts"])]
        carried = None if not parts else tuple(parts) if len(parts) > 1 else parts[0]
        load_optimizer_state(self.optimizer, tensors, meta["param_groups"])
        return Position(progress, tensors["rng.sampler_epoch"], carried, meta["plateau_lr"])
