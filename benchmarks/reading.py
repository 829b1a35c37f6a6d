"""Models that keep learning as they read: static vs neural cache vs dynamic evaluation vs both,
on trained runs, with what each costs in time.

For each run directory, the cache's λ and θ and dynamic evaluation's learning rate and decay
are chosen on the validation split (``seqlm.reading_settings``: the same choice, stored in the
same place, as ``seqlm evaluate RUN --cache SIZE --dynamic``), then held fixed for the
figures, which come from the test split. A run whose test split is empty (the quality
matrix's character streams, split ``0.9,0.1,0``) is measured on the second half of its
validation split, its settings chosen on the first half; the results say which. Each figure
is labelled with the evaluation that produced it and timed alone, one row read in
20-token segments (``seqlm.reading``'s layout): ``extra_s_per_1k`` is its seconds per 1,000
tokens minus the static read's. Times depend on the machine and its load (the results
record both); the loss figures do not.

Usage::

    python benchmarks/reading.py train --corpus timemachine --preset cpu-fast \\
        --max-steps 300 --out runs/reading/timemachine          # or --time-budget 95
    python benchmarks/reading.py measure runs/reading/timemachine --cache 2000 --dynamic rms
    python benchmarks/reading.py table benchmarks/results/reading-*.json
    python benchmarks/reading.py summary benchmarks/results/reading-*.json  # a line per run
    python benchmarks/reading.py plot benchmarks/results/reading-*.json --out docs/reading.png

``measure`` writes ``benchmarks/results/reading-<run name>.json`` (or ``--result``) and
prints the table. Run it under ``flock /tmp/seqlm-cpu.lock`` on a shared box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from seqlm.checkpoint import load_checkpoint, resolve_checkpoint
from seqlm.config import DataConfig
from seqlm.data import load_corpus
from seqlm.dynamic_eval import RULES
from seqlm.reading import EVALUATIONS
from seqlm.reading_settings import evaluate_reading

RESULTS = Path(__file__).resolve().parent / "results"
CACHE_SIZES = {"char": 2000, "word": 2000, "bpe": 2000}  # Grave et al.'s cache for Wikitext
MAX_TOKENS = 40_000  # figures from at most this many tokens: one-row reads of a long split are slow


def train(args) -> int:
    """``seqlm train`` with a preset, by steps or by time, as a user runs it."""
    budget = (["--max-steps", str(args.max_steps)] if args.max_steps
              else ["--time-budget", str(args.time_budget)])
    command = [sys.executable, "-m", "seqlm", "train", "--corpus", args.corpus,
               "--preset", args.preset, "--tokenizer", args.tokenizer, *budget,
               "--threads", str(args.threads), "--out", args.out, "--quiet", "--json",
               *args.extra]
    print(" ".join(command), file=sys.stderr)
    return subprocess.run(command, check=False).returncode


def measure_run(run: Path, *, cache: int | None, rule: str | None,
                max_tokens: int | None = MAX_TOKENS) -> dict:
    """Every figure of one run: its test split (or the second half of val), at most its
    first ``max_tokens`` tokens, settings chosen on its val split (or val's first half)."""
    ckpt = load_checkpoint(resolve_checkpoint(run))
    data = DataConfig(**{**ckpt.config.get("data", {}), "max_tokens": None})
    splits = load_corpus(data, tokenizer=ckpt.tokenizer).splits
    val, test, where = splits["val"], splits["test"], "test"
    if len(test) < 2:
        half = len(val) // 2
        val, test, where = val[:half], val[half:], "val, second half"
    whole = len(test)
    test = test[:max_tokens]
    cache = cache or CACHE_SIZES[data.tokenizer]
    load = os.getloadavg()[0]
    # a choice stored from all of val could have seen the half the figures come from
    found = evaluate_reading(ckpt.model, ckpt.path, test, cache_size=cache, rule=rule,
                             splits=lambda: (val, splits["train"]),
                             choose_again=where != "test")
    static = found["evaluations"][0]
    gains = {row["evaluation"]: {"loss": static["loss"] - row["loss"],
                                 "ppl_ratio": row["ppl"] / static["ppl"]}
             for row in found["evaluations"][1:]}
    c = ckpt.model.config
    return {"run": str(run), "corpus": data.corpus, "tokenizer": data.tokenizer,
            "figures_on": where, "figure_tokens": len(test), "split_tokens": whole,
            "vocab_size": c.vocab_size, "cell": c.cell,
            "hidden_size": c.hidden_size, "num_layers": c.num_layers, "output": c.output,
            "params": sum(p.numel() for p in ckpt.model.parameters()),
            "step": ((ckpt.trainer_state or {}).get("progress") or {}).get("step"),
            "preset": ckpt.config.get("preset"), **found, "gains": gains,
            "threads": torch.get_num_threads(), "loadavg_before": load,
            "loadavg_after": os.getloadavg()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__}


def measure(args) -> int:
    torch.set_num_threads(args.threads)
    for run in args.runs:
        result = measure_run(Path(run), cache=args.cache, rule=args.dynamic,
                             max_tokens=args.max_tokens or None)
        out = Path(args.result) if args.result else RESULTS / f"reading-{Path(run).name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(table([result]))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def figures_on(result: dict) -> str:
    """Where a run's figures come from: the split, and how much of it."""
    n, whole = result.get("figure_tokens"), result.get("split_tokens")
    if n is None:
        return result["figures_on"]
    part = f"{n:,} tokens" if n == whole else f"first {n:,} of {whole:,} tokens"
    return f"{result['figures_on']} ({part})"


def table(results: list[dict]) -> str:
    """A markdown table: one row per run and evaluation, the static one first."""
    lines = ["| run | figures on | evaluation | settings | loss | ppl | Δ loss | ppl ratio "
             "| s / 1k tokens | extra s / 1k |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for row in r["evaluations"]:
            gain = r["gains"].get(row["evaluation"], {"loss": 0.0, "ppl_ratio": 1.0})
            settings = "; ".join(", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in part.items())
                                 for part in row.get("settings", {}).values()) or "–"
            extra = row.get("extra_seconds_per_1k")
            lines.append(
                f"| {Path(r['run']).name} | {figures_on(r)} | {row['evaluation']} | "
                f"{settings} | {row['loss']:.4f} | {row['ppl']:.3f} | {gain['loss']:+.4f} | "
                f"{gain['ppl_ratio']:.3f} | {row['seconds_per_1k']:.2f} | "
                f"{'–' if extra is None else f'{extra:+.2f}'} |")
    loads = ", ".join(f"{r['loadavg_before']:.1f}" for r in results)
    lines.append(f"\nTimes with {results[0]['threads']} thread(s); load average before each "
                 f"run: {loads} (on {results[0]['cpus']} CPUs).")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """One line per run: its static loss, then for each evaluation the nats per token it
    saves over static and its extra seconds per 1,000 tokens (one column per evaluation)."""
    shown = [e for e in EVALUATIONS[1:] if any(e in r["gains"] for r in results)]
    lines = ["| run | model | figures on | static loss | static s / 1k | "
             + " | ".join(f"{e}: saved (nats) | {e}: extra s / 1k" for e in shown) + " |",
             "|---|---|---|---:|---:|" + "---:|" * 2 * len(shown)]
    for r in results:
        extra = {row["evaluation"]: row.get("extra_seconds_per_1k") for row in r["evaluations"]}
        cells = [f"{r['gains'][e]['loss']:.3f} | {extra[e]:+.2f}" if e in r["gains"]
                 else "– | –" for e in shown]
        model = (f"{r.get('preset') or '?'}, {r['num_layers']} × {r['hidden_size']} "
                 f"{r['cell'].upper()}, {r['tokenizer']}")
        static = r["evaluations"][0]
        lines.append(f"| {Path(r['run']).name} | {model} | {figures_on(r)} | "
                     f"{static['loss']:.4f} | {static['seconds_per_1k']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> None:
    """Two panels per evaluation: nats saved per token over static, and extra seconds per
    1,000 tokens; one group of bars per run."""
    from seqlm.plots import new_figure  # leaves the caller's matplotlib backend alone

    names = [Path(r["run"]).name + ("" if r.get("figure_tokens") == r.get("split_tokens")
                                    else f", {r['figure_tokens'] // 1000}k") for r in results]
    shown = [e for e in EVALUATIONS[1:] if any(e in r["gains"] for r in results)]
    fig = new_figure(figsize=(max(12, 1.1 * len(results)), 4.6))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(shown), 1)
    x = np.arange(len(results))
    for k, evaluation in enumerate(shown):
        gains = [r["gains"].get(evaluation, {}).get("loss", np.nan) for r in results]
        extra = [next((row.get("extra_seconds_per_1k", np.nan) for row in r["evaluations"]
                       if row["evaluation"] == evaluation), np.nan) for r in results]
        bars = axes[0].bar(x + k * width, gains, width, label=evaluation)
        axes[0].bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
        axes[1].bar(x + k * width, extra, width, label=evaluation)
    for ax, label in zip(axes, ("test loss saved over static (nats/token)",
                                "extra seconds per 1,000 tokens")):
        ax.set_xticks(x + width * (len(shown) - 1) / 2, names, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.axhline(0, color="black", linewidth=0.6)
    axes[0].set_yscale("symlog", linthresh=0.1)  # the small gains stay readable
    saved = [g["loss"] for r in results for g in r["gains"].values()]
    axes[0].set_ylim(2.5 * min(saved + [0.0]), 2.5 * max(saved + [0.1]))  # room for labels
    axes[0].legend(title="evaluation")
    fig.suptitle("Reading with a neural cache and dynamic evaluation (settings chosen on val)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a run with a preset (seqlm train)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--preset", default="cpu-fast")
    p.add_argument("--tokenizer", default="char", choices=sorted(CACHE_SIZES))
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=95.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("extra", nargs="*", help="more seqlm train flags, after --")
    p = sub.add_parser("measure", help="every evaluation of trained runs, to JSON")
    p.add_argument("runs", nargs="+")
    p.add_argument("--cache", type=int, default=None, help="cache size (default: "
                   f"{CACHE_SIZES['char']})")
    p.add_argument("--dynamic", default="rms", choices=RULES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                   help="figures from the first N tokens of the split (0: all of it)")
    p.add_argument("--result", default=None, help="the JSON file (one run only)")
    for name in ("table", "summary", "plot"):
        p = sub.add_parser(name, help=f"the {name} of stored results")
        p.add_argument("results", nargs="+")
        if name == "plot":
            p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "measure":
        if args.result and len(args.runs) > 1:
            parser.error("--result names one file: give one run")
        if args.max_tokens < 0:
            parser.error("--max-tokens must be 0 (the whole split) or a positive number")
        return measure(args)
    results = [json.loads(Path(f).read_text()) for f in args.results]
    if args.command in ("table", "summary"):
        print((table if args.command == "table" else summary)(results))
    else:
        plot(results, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
