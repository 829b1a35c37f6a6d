"""Training throughput of 1 process against 2 data-parallel processes, interleaved.

Each configuration is a real ``seqlm train`` run (a subprocess; the 2-process one under
``python -m torch.distributed.run`` with gloo on 127.0.0.1) of the same model, corpus, global
batch and number of steps. Its throughput is read from its own ``metrics.jsonl``: the median
of the per-log-window ``tokens_per_s`` (global tokens over rank 0's wall time), the first
window dropped as warm-up, evaluation off. Start-up (imports, rendezvous, corpus encoding) is
not counted. The configurations run in a rotated order in every repeat, so a shared machine's
load falls on all of them alike; the table gives the median over repeats and its ratio to
``1 proc x 1 thread``.

Configurations: ``1x1`` one process, one torch thread; ``1x2`` one process, two threads;
``2x1`` two processes (DDP, gloo), one thread each.

Usage::

    flock /tmp/seqlm-cpu.lock python benchmarks/distributed.py --repeats 3 \\
        --out runs/bench-distributed.json

Prints a Markdown table (the one in docs/distributed.md) and writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODELS = {
    # The default recipe's model (cpu-fast): compute-bound steps.
    "lstm-512": ["--cell", "lstm", "--impl", "fused", "--hidden-size", "512",
                 "--embedding-dim", "64", "--batch-size", "32", "--num-steps", "64"],
    # The book's scratch RNN: small steps, where per-step overheads and communication show.
    "rnn-256-scratch": ["--cell", "rnn", "--impl", "scratch", "--hidden-size", "256",
                        "--batch-size", "32", "--num-steps", "35"],
}
CONFIGS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # name: (processes, threads each)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(model: list[str], procs: int, threads: int, args, out: Path) -> list[str]:
    train = ["train", "--corpus", args.corpus, *model, "--optimizer", "adam",
             "--warmup-steps", "0", "--max-steps", str(args.steps), "--eval-every", "0",
             "--log-every", str(args.log_every), "--sample-tokens", "0",
             "--threads", str(threads), "--seed", "0", "--quiet", "--json", "--out", str(out)]
    if procs == 1:
        return [sys.executable, "-m", "seqlm", *train]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "seqlm",
            *train]


def measure(cmd: list[str], threads: int, out: Path) -> float:
    """The median tokens/s of the run's log windows after the first."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}\nfailed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r["kind"] == "train"][1:]
    if not rates:
        raise SystemExit(f"{out}: fewer than two log windows; raise --steps")
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="builtin", help="any seqlm --corpus")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--log-every", type=int, default=20, help="steps per measured window")
    parser.add_argument("--repeats", type=int, default=3, help="rotations of the configs")
    parser.add_argument("--out", type=Path, help="write the raw numbers here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # this driver does no math; the runs set their own threads

    rates: dict[str, dict[str, list[float]]] = {}
    names = list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            rates[model] = {name: [] for name in names}
            for rep in range(args.repeats):
                order = names[rep % len(names):] + names[: rep % len(names)]
                for name in order:
                    procs, threads = CONFIGS[name]
                    out = Path(tmp) / f"{model}-{name}-{rep}"
                    rate = measure(command(MODELS[model], procs, threads, args, out), threads,
                                   out)
                    rates[model][name].append(rate)
                    print(f"{model} {name} repeat {rep}: {rate:,.0f} tokens/s",
                          file=sys.stderr, flush=True)

    print(f"\n{os.cpu_count()} CPUs, torch {torch.__version__}, {platform.machine()}; "
          f"{args.steps} steps, median of {args.repeats} interleaved repeats\n")
    print("| model | 1 proc x 1 thread | 1 proc x 2 threads | 2 procs x 1 thread (DDP) |")
    print("|---|---|---|---|")
    for model, by_config in rates.items():
        base = by_config["1x1"]  # ratios per repeat (same rotation), then their median
        cells = [f"{statistics.median(v):,.0f} tok/s "
                 f"({statistics.median(a / b for a, b in zip(v, base)):.2f}x)"
                 for v in by_config.values()]
        print(f"| {model} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpus": os.cpu_count(), "torch": torch.__version__,
                                        "steps": args.steps, "corpus": args.corpus,
                                        "tokens_per_s": rates}, indent=2))


if __name__ == "__main__":
    main()
