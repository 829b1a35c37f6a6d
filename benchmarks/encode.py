"""Data-pipeline figures: char and word encode MB/s and peak memory on a synthetic text.

    flock /tmp/seqlm-cpu.lock python benchmarks/encode.py          # 100 MB, the issue's size
    python benchmarks/encode.py --mb 20 --repeats 3                # smaller, median of 3

Targets (foundation issue): char >= 50 MB/s, word >= 10 MB/s, peak memory < 4x the text size
(the text itself plus everything the encoding allocates, its output included).
"""

from __future__ import annotations

import argparse
import statistics

from seqlm.bench.encode import encode_throughput, synthetic_text

TARGET_MB_S = {"char": 50.0, "word": 10.0}
TARGET_PEAK_RATIO = 4.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="text size in MB (10^6 bytes)")
    parser.add_argument("--repeats", type=int, default=1, help="encodings per tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    text = synthetic_text(int(args.mb * 1e6), seed=args.seed)
    print(f"synthetic text: {len(text) / 1e6:.1f} MB")
    for kind in ("char", "word"):
        rows = [encode_throughput(kind, text) for _ in range(args.repeats)]
        speed = statistics.median(r["mb_per_s"] for r in rows)
        peak = max((r["peak_ratio"] for r in rows if r["peak_ratio"] is not None), default=None)
        row = rows[0]
        ok_speed = "met" if speed >= TARGET_MB_S[kind] else "NOT met"
        peak_text = "n/a" if peak is None else f"{peak:.2f}x"
        ok_peak = "n/a" if peak is None else ("met" if peak < TARGET_PEAK_RATIO else "NOT met")
        print(f"{kind:<5} {speed:7.1f} MB/s (target >= {TARGET_MB_S[kind]:g}: {ok_speed}); "
              f"{row['tokens']:,} tokens, vocabulary {row['vocab_size']:,}; peak memory "
              f"{peak_text} the text (target < {TARGET_PEAK_RATIO:g}x: {ok_peak})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
