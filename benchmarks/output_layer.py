"""Full decoder against adaptive softmax: one training step of the cpu-fast model per vocabulary.

For each vocabulary size, builds the ``cpu-fast`` architecture (GRU 384, the recipe's
embedding size) twice, ``output='full'`` and ``output='adaptive'`` (cutoffs chosen by
:func:`seqlm.models.output.choose_cutoffs` from a Zipf law with exponent 1.2, the targets' law), and times a
whole training step (forward, backward, clip, Adam) on a 64 x 32 batch, the two models
interleaved round by round in one process so that the machine's load falls on both alike.
Prints the median milliseconds per step, the ratio, and what ``output='auto'`` picks.

Usage::

    python benchmarks/output_layer.py [--vocab 104 1000 2000 3896 19167] [--rounds 7]
        [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from seqlm.config import ModelConfig
from seqlm.models import RNNLM
from seqlm.models.output import choose_cutoffs
from seqlm.presets import preset
from seqlm.recipe import embedding_for

MODEL_FIELDS = set(ModelConfig.__dataclass_fields__)
ZIPF = 1.2  # exponent of the synthetic token law


def build(vocab: int, output: str) -> RNNLM:
    fields = {k: v for k, v in preset("cpu-fast").items() if k in MODEL_FIELDS}
    fields.update(vocab_size=vocab, output=output,
                  embedding_dim=embedding_for(vocab, fields["hidden_size"]))
    if output == "adaptive":
        zipf = np.arange(1, vocab + 1) ** -ZIPF  # the targets' law, as if counted from a text
        fields["cutoffs"] = ",".join(map(str, choose_cutoffs(zipf, vocab)))
    torch.manual_seed(0)
    return RNNLM(ModelConfig(**fields))


def step_fn(model: RNNLM, vocab: int, batch: int = 64, steps: int = 32):
    gen = np.random.default_rng(0)
    ids = np.minimum(gen.zipf(ZIPF, (batch, steps + 1)), vocab) - 1
    X, Y = torch.from_numpy(ids[:, :-1].copy()), torch.from_numpy(ids[:, 1:].copy())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        nll, _ = model.loss(X, Y)
        opt.zero_grad(set_to_none=True)
        (nll / Y.numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def measure(vocab: int, rounds: int) -> dict:
    models = {kind: build(vocab, kind) for kind in ("full", "adaptive")}
    steps = {kind: step_fn(m, vocab) for kind, m in models.items()}
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    for kind in steps:
        steps[kind]()  # warm-up
    for _ in range(rounds):
        for kind, step in steps.items():
            start = time.perf_counter()
            step()
            times[kind].append(1e3 * (time.perf_counter() - start))
    full, adaptive = (statistics.median(times[k]) for k in ("full", "adaptive"))
    auto = build(vocab, "auto").config.output
    return {"vocab": vocab, "full_ms": full, "adaptive_ms": adaptive,
            "speedup": full / adaptive, "auto": auto,
            "cutoffs": models["adaptive"].config.cutoffs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[104, 1000, 2000, 3896, 19167])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(v, args.rounds) for v in args.vocab]
    print("| V | full, ms/step | adaptive, ms/step | full / adaptive | cutoffs | auto picks |")
    print("|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['vocab']:,} | {r['full_ms']:.1f} | {r['adaptive_ms']:.1f} | "
              f"{r['speedup']:.2f} | {r['cutoffs']} | {r['auto']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
