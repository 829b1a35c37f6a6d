"""``quality.py busy``: each preset at a short budget on a quiet machine and beside a busy one.

A user's laptop is rarely idle. For each row and preset this trains the seqlm model alone
(no peer beside it), with the thread count left to the recipe (``--threads 0``), twice: once
with nothing else running, once beside ``--neighbours`` processes that each spin on a core for
the whole run (a bounded busy loop the harness starts before the run and stops after it). Each
pair is stored as ``<results>/quality-busy-<row>-<preset>-<budget>.json`` and the table shows
both sides: best validation loss, steps, training tokens/s, the thread count the run ended
with and the recipe's choices (threads, depth, dropout), with the busy run's thread changes
and new plans.

Usage::

    python benchmarks/quality.py busy --rows timemachine alice --presets cpu-fast cpu-quality
    python benchmarks/quality.py busy --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import quality_matrix
from quality_matrix import RESULTS, ROWS, corpus_of, data_dirs

SPIN = ("import sys, time\nend = time.perf_counter() + float(sys.argv[1])\n"
        "while time.perf_counter() < end:\n    pass\n")


def result_path(results: Path, row: str, preset: str, budget: float) -> Path:
    return Path(results) / f"quality-busy-{row}-{preset}-{budget:g}.json"


def spin(seconds: float, count: int) -> list[subprocess.Popen]:
    """``count`` processes, each keeping a core busy for at most ``seconds``."""
    return [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(count)]


def run_pair(row: str, preset: str, budget: float, neighbours: int, run) -> dict:
    """The quiet run, then the busy one, of ``preset`` on ``row``."""
    spec = quality_matrix.ROWS[row]
    out = {"row": row, "preset": preset, "budget": budget, "neighbours": neighbours}
    for side in ("quiet", "busy"):
        with tempfile.TemporaryDirectory(prefix="seqlm-busy-") as tmp:
            args = argparse.Namespace(
                corpus=corpus_of(spec), tokenizer=spec.tokenizer, clean=spec.clean,
                budget=budget, eval_every=budget / 12, models=[preset], threads=0,
                parallel=False, prefix=None, sample_tokens=0, temperature=0.7, seed=0,
                out=Path(tmp))
            spinners = spin(budget * 1.5 + 60, neighbours) if side == "busy" else []
            try:
                result = run(args)
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
        out[side] = result
    return out


def _side(result: dict) -> dict:
    r = next(iter(result["models"].values()))
    events = r.get("events", [])
    recipe = r["config"].get("recipe") or {}
    return {"best": r["best_loss"], "steps": r["steps"], "tokens_per_s": r["tokens_per_s"],
            "chosen": recipe.get("chosen", {}),
            "threads_changes": sum(e.get("kind") == "threads" for e in events),
            "replans": sum(e.get("kind") == "replan" for e in events),
            "layers": r["config"]["model"]["num_layers"],
            "dropout": r["config"]["model"]["dropout"]}


def render(pairs: list[dict]) -> str:
    head = ("| row | preset | budget | quiet best | busy best | busy − quiet | quiet steps "
            "| busy steps | quiet tokens/s | busy tokens/s | quiet: threads chosen, layers, "
            "dropout | busy: threads chosen, layers, dropout | thread changes, new plans: "
            "quiet / busy |")
    out = [head, "|---|---|---:|" + "---:|" * 7 + "---|---|---|"]
    for pair in pairs:
        q, b = _side(pair["quiet"]), _side(pair["busy"])
        out.append(
            f"| {pair['row']} | `{pair['preset']}` | {pair['budget']:g} s | {q['best']:.4f} "
            f"| {b['best']:.4f} | {b['best'] - q['best']:+.4f} | {q['steps']:,} "
            f"| {b['steps']:,} | {q['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} "
            f"| {q['chosen'].get('threads', '-')}, {q['layers']}, {q['dropout']:g} "
            f"| {b['chosen'].get('threads', '-')}, {b['layers']}, {b['dropout']:g} "
            f"| {q['threads_changes']}, {q['replans']} / {b['threads_changes']}, "
            f"{b['replans']} |")
    return "\n".join(out)


def add_parser(sub) -> None:
    p = sub.add_parser("busy", help="each preset alone, quiet and beside busy processes")
    p.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=["timemachine", "alice"])
    p.add_argument("--presets", nargs="+", default=["cpu-fast", "cpu-quality"])
    p.add_argument("--budget", type=float, default=95.0)
    p.add_argument("--neighbours", type=int, default=1,
                   help="processes spinning on a core each during the busy run")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table-only", action="store_true", help="train nothing")


def main(args, *, run, setup) -> int:
    os.environ["SEQLM_DATA"] = os.pathsep.join(str(d) for d in data_dirs())
    pairs = []
    for row in args.rows:
        for preset in args.presets:
            path = result_path(args.results, row, preset, args.budget)
            if not args.table_only:
                print(f"busy: {row} {preset} {args.budget:g} s", file=sys.stderr, flush=True)
                pair = run_pair(row, preset, args.budget, args.neighbours, run)
                pair["setup"] = setup([preset], ROWS[row].tokenizer, ROWS[row].clean)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(pair, indent=1, ensure_ascii=False), "utf-8")
            if path.is_file():
                pairs.append(json.loads(path.read_text(encoding="utf-8")))
    print(render(pairs))
    return 0
