"""Data-parallel training: torchrun's environment, this rank's rows, and the collectives the
trainer needs (DistributedDataParallel does the gradient averaging).

N processes (ranks) train one model. Every rank builds the same *global* minibatch
``(B, T)`` from the shared seed and keeps rows ``[r·B/N, (r+1)·B/N)``::

    global minibatch k            rank 0 (B/N rows)    rank 1 (B/N rows)
    row 0    | x x x x x |   ->   row 0 | x x x x x |
    row 1    | x x x x x |   ->   row 1 | x x x x x |
    row 2    | x x x x x |   ->                        row 2 | x x x x x |
    row 3    | x x x x x |   ->                        row 3 | x x x x x |

* Sequential partitioning: global row ``i`` of minibatch ``k+1`` continues row ``i`` of
  minibatch ``k``, so each rank's rows continue themselves and each rank carries the hidden
  state ``(L, B/N, H)`` of its own rows — the chapter's continuation property per rank.
* Random sampling: the window order comes from the shared seed; each rank takes its slice.

Each rank's loss is the mean over its ``B/N · T`` tokens; DDP averages the gradients of the N
equal-size shards, which is the gradient of the mean over all ``B · T`` tokens — the
single-process gradient, up to the order of floating-point additions. Gradient clipping then
sees that averaged gradient, identical on every rank, so its norm is the global norm.

A single process is ``Dist()`` (rank 0 of 1): every method is then a no-op or the identity.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from seqlm.errors import EXIT_ON_SIGNAL, EXIT_USAGE, ConfigError, SeqlmError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
INTERRUPTED = {int(sig): code for sig, code in EXIT_ON_SIGNAL.items()}  # of seqlm train
USER_ERROR = EXIT_USAGE  # a SeqlmError: the rank printed its one-line message
_NEVER = torch.iinfo(torch.int64).max
# Substrings of the RuntimeError a collective raises when a peer process has gone away.
_LOST_PEER = ("gloo", "nccl", "connection", "broken pipe", "timed out", "socket")


class DistributedError(SeqlmError):
    """A rank of a multi-process run failed or lost contact with the others."""


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a data-parallel job (``Dist()``: a single process).

    Attributes:
        rank: this process's global rank r in ``[0, world_size)``.
        world_size: the number of processes N.
        local_rank: the rank on this machine (the CUDA device index).
        backend: 'gloo' (CPU) or 'nccl' (CUDA); None for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the only rank that writes files and reports."""
        return self.rank == 0

    # ---- rows ------------------------------------------------------------------------------

    def check_batch_size(self, batch_size: int) -> None:
        """Raises:
            ConfigError: N does not divide the global batch size B.
        """
        if batch_size % self.world_size:
            fits = [n for n in range(1, batch_size + 1) if batch_size % n == 0][:5]
            raise ConfigError(
                f"`batch_size` {batch_size} cannot be split over {self.world_size} processes "
                f"(each rank takes B/N rows); use a `batch_size` that is a multiple of "
                f"{self.world_size}, or {', '.join(map(str, fits))} processes")

    def rows(self, batch_size: int) -> slice:
        """This rank's rows ``[r·B/N, (r+1)·B/N)`` of a global minibatch of ``batch_size``.

        Raises:
            ConfigError: N does not divide ``batch_size``.
        """
        self.check_batch_size(batch_size)
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def part(self, n: int) -> slice:
        """This rank's contiguous share ``[r·n//N, (r+1)·n//N)`` of ``n`` rows (shares may
        differ by one row; used where ``n`` need not be a multiple of N, as in evaluation)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def shard(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's rows of ``tensor`` along ``dim`` (0 for (B, T) tokens, 1 for an
        (L, B, H) state); the tensor itself for a single process.

        Raises:
            ConfigError: N does not divide ``tensor.shape[dim]``.
        """
        if not self.enabled:
            return tensor
        rows = self.rows(tensor.shape[dim])
        return tensor.narrow(dim, rows.start, rows.stop - rows.start)

    # ---- collectives (every rank must call them, at the same point) -------------------------

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else \
            torch.device("cpu")

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduces ``tensor`` over the ranks in place (``op``: 'sum', 'min' or 'max') and
        returns it; every rank receives the same values."""
        if not self.enabled:
            return tensor
        reduce_op = {"sum": torch_dist.ReduceOp.SUM, "min": torch_dist.ReduceOp.MIN,
                     "max": torch_dist.ReduceOp.MAX}[op]
        buffer = tensor.to(self._comm_device())
        torch_dist.all_reduce(buffer, op=reduce_op)
        if buffer is not tensor:
            tensor.copy_(buffer)
        return tensor

    def gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The ranks' equal-shape tensors concatenated along ``dim`` in rank order: per-rank
        (L, B/N, H) states with ``dim=1`` give the global (L, B, H) layout."""
        if not self.enabled:
            return tensor
        local = tensor.contiguous().to(self._comm_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, local)
        return torch.cat(parts, dim=dim).to(tensor.device)

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the ranks (in float64)."""
        if not self.enabled:
            return values
        total = self.all_reduce_(torch.tensor(values, dtype=torch.float64))
        return tuple(total.tolist())

    def max(self, value: float) -> float:
        """The largest ``value`` of any rank (e.g. the slowest rank's clock)."""
        if not self.enabled:
            return value
        return float(self.all_reduce_(torch.tensor([value], dtype=torch.float64), "max"))

    def first_step(self, bad_step: torch.Tensor) -> int:
        """The earliest step any rank flagged (``bad_step`` holds a step or -1), or -1."""
        if not self.enabled:
            return int(bad_step)
        flagged = torch.where(bad_step < 0, torch.full_like(bad_step, _NEVER), bad_step)
        first = int(self.all_reduce_(flagged.clone().reshape(1), "min"))
        return -1 if first == _NEVER else first

    def agree(self, choice: str, choices: tuple[str, ...]) -> str:
        """One answer for every rank: the last of ``choices`` that any rank gave (so a
        non-empty choice beats ``''`` when ``''`` comes first)."""
        if not self.enabled:
            return choice
        code = torch.tensor([choices.index(choice)], dtype=torch.int64)
        return choices[int(self.all_reduce_(code, "max"))]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (which broadcasts rank 0's weights and averages
        the gradients in backward); the model itself for a single process."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def reseed(self, seed: int, step: int) -> None:
        """Gives ranks r > 0 their own torch random stream (dropout masks must differ across
        ranks' rows), derived from ``(seed, rank, step)``; rank 0 keeps its stream."""
        if self.rank:
            mixed = np.random.SeedSequence([seed, self.rank, step]).generate_state(1, np.uint64)
            torch.manual_seed(int(mixed[0]) >> 1)

    def lost_peer(self, exc: BaseException) -> DistributedError | None:
        """The clear error for ``exc`` when it is a collective failing because another rank
        died; None for anything else (and always for a single process)."""
        if not self.enabled or not isinstance(exc, RuntimeError):
            return None
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, torch_dist.DistError) and \
                not any(s in text.lower() for s in _LOST_PEER):
            return None
        reason = text.split(". ")[0][:160]
        return DistributedError(
            f"rank {self.rank} of {self.world_size} lost contact with the other ranks "
            f"({reason}): another rank failed or was killed (torchrun names it); "
            "checkpoints/last is the last whole checkpoint: continue with `resume`")


def from_env(environ: Mapping[str, str] | None = None) -> Dist:
    """Reads torchrun's RANK, WORLD_SIZE and LOCAL_RANK (absent: a single process).

    Raises:
        ConfigError: a variable is not an integer, or RANK is not in ``[0, WORLD_SIZE)``.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Dist()
    values = {}
    for name in ENV_VARS:
        text = env.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise ConfigError(f"environment variable {name}={text!r} is not an integer; start "
                              "the processes with torchrun, which sets it") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} LOCAL_RANK={local} WORLD_SIZE={world} do not describe "
                          "a process of a job; start the processes with torchrun")
    return Dist(rank, world, local)


def init(device: str = "auto", environ: Mapping[str, str] | None = None
         ) -> tuple[Dist, torch.device]:
    """Joins the job torchrun started (env:// rendezvous through MASTER_ADDR/MASTER_PORT) and
    picks this rank's device: CUDA ``cuda:LOCAL_RANK`` with NCCL, else the CPU with gloo. A
    single process just resolves ``device``.

    Raises:
        ConfigError: bad torchrun variables, ``device`` unknown or unavailable, 'mps' with
            several processes, or fewer CUDA devices than local ranks.
    """
    from seqlm.devices import resolve_device

    dist = from_env(environ)
    resolved = resolve_device(device)
    if not dist.enabled:
        return dist, resolved
    if resolved.type == "mps":
        raise ConfigError("`device` mps cannot run several processes (torch.distributed has "
                          "no MPS backend); use `device` cpu")
    if resolved.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {dist.local_rank} has no GPU: this machine has "
                              f"{torch.cuda.device_count()}; start at most that many processes "
                              "per node (one process per device)")
        resolved = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend)
    return Dist(dist.rank, dist.world_size, dist.local_rank, backend), resolved


def launch(command: list[str], nproc: int, *, run_dir: str | Path | None = None) -> int:
    """Runs ``python -m seqlm <command>`` as ``nproc`` processes on this machine under
    torchrun (``torch.distributed.run --standalone``: a free port on localhost) and waits.

    torchrun forwards SIGINT/SIGTERM to the ranks and stops every rank when one fails.

    Args:
        command: the seqlm command line each rank runs (without a launcher flag).
        nproc: the number of processes, at least 2.
        run_dir: the run directory the job writes (its ``checkpoints/last`` is named in the
            failure message).

    Returns:
        0 when every rank finished; 2 when a rank reported a user error (it printed the
        message); else 130 or 143 when they were interrupted (each saved its part first).

    Raises:
        DistributedError: a rank crashed or was killed; the message names the rank, how it
            ended and the last whole checkpoint.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "seqlm",
                                *command])
    try:
        torchrun.run(args)
    except SignalException as exc:  # this launcher was signalled; the ranks saved and stopped
        return INTERRUPTED.get(int(exc.sigval), 1)
    except ChildFailedError as exc:
        # Ranks that torchrun stopped (SIGTERM/SIGINT), that were interrupted or that printed
        # a one-line error (such as losing contact) are consequences; any other end is a cause.
        stopped = {USER_ERROR, *INTERRUPTED.values(), *(-sig for sig in INTERRUPTED)}
        crashed = {r: f for r, f in exc.failures.items() if f.exitcode not in stopped}
        if not crashed:
            codes = {INTERRUPTED.get(-f.exitcode, f.exitcode) for f in exc.failures.values()}
            return USER_ERROR if USER_ERROR in codes else max(codes)
        rank = min(crashed, key=lambda r: crashed[r].timestamp)  # (whole seconds)
        failure = crashed[rank]
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with status {failure.exitcode}")
        raise DistributedError(f"rank {rank} of {nproc} (pid {failure.pid}) {how}, so torchrun "
                               f"stopped the other ranks; {_last_whole(run_dir)}") from None
    return 0


def _last_whole(run_dir: str | Path | None) -> str:
    if run_dir is None:
        return "see that rank's error above"
    from seqlm.checkpoint import load_checkpoint  # lazy: only a failed job reads it

    checkpoint = Path(run_dir) / "checkpoints" / "last"
    try:
        state = load_checkpoint(checkpoint).trainer_state or {}
    except SeqlmError:
        return f"no whole checkpoint at {checkpoint} yet: fix the cause above and start again"
    step = state.get("progress", {}).get("step", "?")
    return (f"{checkpoint} is whole (step {step}): fix the cause above and continue with "
            f"seqlm train --resume {run_dir}")


_left_group = False  # set by shutdown(): this process was a rank of a multi-process job


def shutdown() -> None:
    """Leaves the process group, if this process joined one."""
    global _left_group
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
        _left_group = True


def exit_process(code: int) -> None:
    """Ends the process with ``code``; a rank that left a process group skips the interpreter's
    teardown (``os._exit`` after flushing stdout and stderr).

    torch's process-group threads can still be joinable when C++ static destructors run at
    interpreter exit, and then the rank aborts after a whole, saved run ("terminate called
    without an active exception", SIGABRT; about 1 run in 20 of a 2-process job on the
    2-core CI machine under load, with torch 2.13). Every file the rank wrote is closed by
    then, so nothing is lost by not tearing down.
    """
    if _left_group:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
