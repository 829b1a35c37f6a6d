"""Training and generation throughput of every path against the textbook baseline.

    flock /tmp/seqlm-cpu.lock python benchmarks/throughput.py            # all four workloads
    python benchmarks/throughput.py --workloads char-rnn --rounds 20     # one, more rounds
    python benchmarks/throughput.py --json out.json                      # keep the raw report

A thin script over :func:`seqlm.bench.run_bench` (the same harness as ``seqlm bench``, without
the encode section); it prints the table and, against the issue's targets, which ratios pass.
"""

from __future__ import annotations

import argparse
import json
import sys

from seqlm.bench import BenchConfig, format_report, run_bench

# (workload, path, column, target): the performance issue's ratios, measured in the same run
TARGETS = [
    ("char-rnn", "fastest scratch", "vs_textbook", 1.4),
    ("word-rnn", "fastest scratch", "vs_textbook", 3.0),
    ("char-gru", "default", "vs_torch", 1.0),  # the path the presets run (marked *)
    ("char-lstm", "default", "vs_torch", 1.0),
]
GEN_TARGET = ("char-rnn", "scratch", 3.0)


def check_targets(report: dict) -> list[str]:
    lines = []
    train = {b["workload"]["name"]: b["paths"] for b in report["train"]}
    for workload, path, column, target in TARGETS:
        rows = train.get(workload)
        if not rows:
            continue
        if path == "fastest scratch":
            row = max((r for r in rows if r["path"] in ("scratch", "scratch manual-BPTT")),
                      key=lambda r: r[column])
        elif path == "default":
            row = next(r for r in rows if r.get("default"))
        else:
            row = next(r for r in rows if r["path"] == path)
        verdict = "met" if row[column] >= target else "NOT met"
        lines.append(f"{workload:<10} {row['path']:<22} {column} {row[column]:.2f} "
                     f"(target >= {target}): {verdict}")
    gen = {b["workload"]["name"]: b["paths"] for b in report["generate"]}
    workload, path, target = GEN_TARGET
    if workload in gen:
        row = next(r for r in gen[workload] if r["path"] == path)
        verdict = "met" if row["vs_textbook"] >= target else "NOT met"
        lines.append(f"{workload:<10} generation {path:<11} vs_textbook "
                     f"{row['vs_textbook']:.2f} (target >= {target}): {verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="char-rnn,char-gru,char-lstm,word-rnn")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows")
    parser.add_argument("--compile", default="char-rnn",
                        help="workloads with a torch.compile row ('none' for none)")
    parser.add_argument("--json", metavar="FILE", help="write the report here")
    args = parser.parse_args()
    cfg = BenchConfig(workloads=args.workloads, sections="train,generate", rounds=args.rounds,
                      threads=args.threads, bf16=not args.no_bf16, compile=args.compile)
    report = run_bench(cfg, on_progress=lambda m: print(f"... {m}", file=sys.stderr))
    print(format_report(report))
    print("\ntargets (ratios from this run):")
    print("\n".join(check_targets(report)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
