"""How far healthy training strays from its running level: the evidence behind the divergence
guard's thresholds (seqlm/guard.py).

For each run's ``metrics.jsonl``, every train record (one log interval) is compared with the
median of the ``HISTORY`` records before it, as the guard compares its windows (the first
``MIN_HISTORY`` skipped): the worst ratio of mean pre-clip gradient norms and the worst rise
of the mean loss, in nats. Train the runs first, e.g.::

    seqlm train --preset cpu-fast --hidden-size 128 --time-budget 150 --out runs/g1
    seqlm train --preset d2l-scratch --epochs 100 --out runs/g2
    python benchmarks/guard_levels.py runs/g1/metrics.jsonl runs/g2/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics

from seqlm.guard import GRAD_FACTOR, HISTORY, LOSS_MARGIN, MIN_HISTORY


def worst_excursions(records: list[dict]) -> dict:
    """The worst gradient-norm ratio and loss rise of ``records`` against their running
    medians, with the steps they happened at."""
    train = [r for r in records if r.get("kind") == "train"]
    worst = {"norm_ratio": 0.0, "norm_step": None, "loss_rise": -float("inf"),
             "loss_step": None, "windows": len(train)}
    for i in range(MIN_HISTORY, len(train)):
        before = train[max(0, i - HISTORY):i]
        ratio = train[i]["grad_norm"] / statistics.median(r["grad_norm"] for r in before)
        rise = train[i]["loss"] - statistics.median(r["loss"] for r in before)
        if ratio > worst["norm_ratio"]:
            worst["norm_ratio"], worst["norm_step"] = ratio, train[i]["step"]
        if rise > worst["loss_rise"]:
            worst["loss_rise"], worst["loss_step"] = rise, train[i]["step"]
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", help="metrics.jsonl files of healthy runs")
    args = parser.parse_args()
    print(f"guard thresholds: gradient norm > {GRAD_FACTOR:g}x, loss > median + "
          f"{LOSS_MARGIN:g} nats")
    for path in args.metrics:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        w = worst_excursions(records)
        print(f"{path}: {w['windows']} windows; worst norm {w['norm_ratio']:.2f}x its median "
              f"(step {w['norm_step']}), worst loss rise {w['loss_rise']:+.3f} nats "
              f"(step {w['loss_step']})")


if __name__ == "__main__":
    main()
