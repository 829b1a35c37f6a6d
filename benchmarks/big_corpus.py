"""Big inputs: prepare a large synthetic corpus and train from its memory-mapped arrays.

Writes a synthetic text of ``--size-mb`` megabytes (Zipf-distributed pseudo-words, made a
block at a time), runs ``seqlm prepare`` on it and ``seqlm train --max-steps 200`` on the
result (once per minibatch strategy), each as its own process, and reports each process's
peak resident set size (from ``os.wait4``, i.e. the kernel's ``ru_maxrss``) and wall time.
``--small-mb`` prepares a smaller corpus first, so the two peaks show whether ``prepare``'s
memory grows with the input. Exits with status 1 when a peak exceeds ``--max-rss-mb``.

    flock /tmp/seqlm-cpu.lock python benchmarks/big_corpus.py            # 500 MB, 200 steps
    python benchmarks/big_corpus.py --size-mb 20 --small-mb 5 --steps 20  # a quick look

The figures of a run are in docs/big-inputs.md. This is a script, not a test: the 500 MB
run takes several minutes and needs about 1.5 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LETTERS = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
WORDS_PER_BLOCK = 200_000


def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes of lowercase pseudo-words (20,000 types, Zipf frequencies, 1-8
    letters), one sentence a line; at most one block of words is in memory."""
    rng = np.random.default_rng(seed)
    words = [bytes(rng.choice(LETTERS, rng.integers(1, 9))) for _ in range(20_000)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    written = 0
    with open(path, "wb") as f:
        while written < size:
            block = b" ".join(words[i] for i in rng.choice(len(words), WORDS_PER_BLOCK, p=p))
            block = (block + b".\n")[: size - written]
            f.write(block)
            written += len(block)


def measure(argv: list[str], scratch: Path) -> dict:
    """Runs ``python -m seqlm argv``; its peak RSS (MiB), wall time and JSON output."""
    with open(scratch / "stdout", "w") as out, open(scratch / "stderr", "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "seqlm", *argv], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"seqlm {' '.join(argv)} failed ({proc.returncode}):\n"
                         f"{(scratch / 'stderr').read_text()}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall,
            "report": json.loads((scratch / "stdout").read_text().strip().splitlines()[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=500, help="the big corpus, in MB")
    parser.add_argument("--small-mb", type=float, default=50,
                        help="a smaller corpus prepared first (0: skip)")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--samplers", default="sequential,random",
                        help="train once with each of these minibatch strategies")
    parser.add_argument("--split", default="0.998,0.001,0.001",
                        help="train,val,test (a small validation split keeps evaluation short)")
    parser.add_argument("--max-rss-mb", type=float, default=1024, help="the memory budget")
    parser.add_argument("--workdir", help="where to write (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and the run")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="seqlm-big-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = {}
    try:
        sizes = [("small", args.small_mb)] if args.small_mb else []
        for name, mb in sizes + [("big", args.size_mb)]:
            text = work / f"{name}.txt"
            start = time.perf_counter()
            write_corpus(text, int(mb * 1e6))
            print(f"wrote {text} ({mb:g} MB) in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
            rows[f"prepare {mb:g} MB"] = measure(
                ["prepare", str(work / f"{name}-prepared"), "--corpus", str(text),
                 "--split", args.split, "--overwrite", "--json"], work)
            text.unlink()  # the prepared arrays are all training needs
        for sampler in args.samplers.split(","):
            rows[f"train {args.steps} steps, {sampler}"] = measure(
                ["train", "--corpus", str(work / "big-prepared"), "--out", str(work / "run"),
                 "--overwrite", "--sampler", sampler, "--max-steps", str(args.steps),
                 "--eval-every", "0", "--threads", str(args.threads), "--quiet", "--json"],
                work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'command':<32} {'peak RSS MiB':>12} {'wall s':>8}  notes")
    over = False
    for name, row in rows.items():
        r = row["report"]
        if name.startswith("prepare"):
            notes = (f"tokens {sum(r['tokens'].values()):,} ({r['dtype']}), "
                     f"vocabulary {r['vocab_size']}")
        else:
            notes = (f"{r['steps']} steps, {r['tokens_per_s']:,.0f} tokens/s, val ppl "
                     f"{r['val']['ppl']:.2f} (bigram {r['baselines']['bigram']['ppl']:.2f})")
        over = over or row["peak_rss_mib"] > args.max_rss_mb
        print(f"{name:<32} {row['peak_rss_mib']:>12.0f} {row['wall_s']:>8.1f}  {notes}")
    print(json.dumps({k: {"peak_rss_mib": round(v["peak_rss_mib"], 1),
                          "wall_s": round(v["wall_s"], 1)} for k, v in rows.items()}))
    if over:
        print(f"a peak exceeds the budget of {args.max_rss_mb:g} MiB", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
