"""bfloat16 autocast on the CPU: speed and the perplexity reached on the same time budget.

    SEQLM_DATA=/work/shared/data flock /tmp/seqlm-cpu.lock python benchmarks/bf16.py
    python benchmarks/bf16.py --corpus builtin --budget 30 --models lstm-fused

For each model, a float32 and a bfloat16-autocast trainer (same seed, same initial weights,
same minibatches) train interleaved: a few steps of one, then of the other, so both see the
same fast and slow phases of the machine, until each has used ``--budget`` seconds of
training time. Then both are evaluated on the validation split (token-weighted perplexity).
Training runs through seqlm.trainer.Trainer.step, as ``seqlm train`` does.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.batches import SAMPLERS
from seqlm.data import load_corpus
from seqlm.models import RNNLM
from seqlm.trainer import Trainer

MODELS = {  # name: (model fields, optimizer, lr)
    "rnn-manual": ({"cell": "rnn", "impl": "scratch", "bptt_engine": "manual",
                    "hidden_size": 512, "init": "d2l"}, "sgd", 1.0),
    "rnn-fused": ({"cell": "rnn", "impl": "fused", "hidden_size": 512, "init": "d2l"},
                  "sgd", 1.0),
    "gru-manual": ({"cell": "gru", "impl": "scratch", "bptt_engine": "manual",
                    "hidden_size": 384, "embedding_dim": 64}, "adam", 5e-3),
    "lstm-fused": ({"cell": "lstm", "impl": "fused", "hidden_size": 512, "embedding_dim": 64},
                   "adam", 3e-3),
}


def make_trainer(corpus, data: DataConfig, name: str, dtype: str, seed: int) -> Trainer:
    fields, optimizer, lr = MODELS[name]
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, **fields))
    cfg = TrainConfig(optimizer=optimizer, lr=lr, clip=1.0, schedule="constant",
                      max_steps=10**9, eval_every=0, dtype=dtype, sample_tokens=0, seed=seed)
    return Trainer(model, corpus, data, cfg, torch.device("cpu"))


def endless_batches(corpus, data: DataConfig, trainer: Trainer, seed: int):
    """Sequential partitioning, epoch after epoch; the carried state resets at each epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from SAMPLERS[data.sampler](corpus.splits["train"], data.batch_size,
                                          data.num_steps, generator=generator)
        trainer.state = None


def race(corpus, data, name: str, budget: float, chunk: int, seed: int) -> dict:
    runs = {}
    for dtype in ("float32", "bfloat16"):
        trainer = make_trainer(corpus, data, name, dtype, seed)
        runs[dtype] = {"trainer": trainer, "batches": endless_batches(corpus, data, trainer, seed),
                       "seconds": 0.0, "steps": 0, "loss": 0.0, "tokens": 0}
    while any(r["seconds"] < budget for r in runs.values()):
        for r in runs.values():
            if r["seconds"] >= budget:
                continue
            start = time.perf_counter()
            nll = torch.zeros((), dtype=torch.float64)
            tokens = 0
            for _ in range(chunk):
                X, Y = next(r["batches"])
                step_nll, _ = r["trainer"].step(X, Y)
                nll += step_nll
                tokens += Y.numel()
            r["seconds"] += time.perf_counter() - start
            r["steps"] += chunk
            r["tokens"] += tokens
            r["loss"] = float(nll) / tokens  # the last chunk's training loss
    out = {}
    for dtype, r in runs.items():
        val = r["trainer"].validate()
        out[dtype] = {"steps": r["steps"], "tokens_per_s": r["tokens"] / r["seconds"],
                      "train_ppl": math.exp(r["loss"]), "val_ppl": val["ppl"] if val else None}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--clean", default="letters")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds each")
    parser.add_argument("--chunk", type=int, default=10, help="steps per interleaved turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DataConfig(corpus=args.corpus, clean=args.clean, tokenizer="char", batch_size=32,
                      num_steps=35, sampler="sequential")
    corpus = load_corpus(data)
    print(f"corpus {args.corpus} ({args.clean}): vocabulary {corpus.vocab_size}, "
          f"train {len(corpus.splits['train']):,} tokens; budget {args.budget:g} s each, "
          f"{args.threads} threads")
    print(f"{'model':<12}{'dtype':<10}{'steps':>7}{'tokens/s':>10}{'speed x':>9}"
          f"{'train ppl':>11}{'val ppl':>9}")
    for name in args.models:
        result = race(corpus, data, name, args.budget, args.chunk, args.seed)
        base = result["float32"]["tokens_per_s"]
        for dtype, r in result.items():
            val = "-" if r["val_ppl"] is None else f"{r['val_ppl']:.3f}"
            print(f"{name:<12}{dtype:<10}{r['steps']:>7}{r['tokens_per_s']:>10,.0f}"
                  f"{r['tokens_per_s'] / base:>9.2f}{r['train_ppl']:>11.3f}{val:>9}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
