"""Quality at a CPU budget: seqlm's presets against a small transformer at equal wall time.

Each model trains for the same wall-clock budget on the same contiguous split of the same
character stream (``--split 0.9,0.1,0``: the last 10 % held out, vocabulary from the training
part), and is evaluated at the same moments of its budget on the **whole** validation split,
token-weighted. The budget is training time on both sides: each evaluation is taken off the
model's clock (a full-split evaluation costs the transformer about twice what it costs
an RNN, so counting it would tax the peer for the protocol). Evaluations run at every
``--eval-every`` seconds of training and once more on the final weights when the budget is
spent; every model keeps its best evaluation.

With ``--parallel`` the models train at the same time, one process each (``--threads`` each,
1 by default), so that a shared machine's load falls on all of them alike; otherwise one after
the other in one process.

* RNN side: a seqlm preset (``cpu-fast``, ``cpu-quality``, or any ``--preset`` name, with
  ``:key=value,...`` overrides), trained by :class:`seqlm.train.Trainer` through
  :class:`seqlm.run.RunSession`; evaluated by ``Trainer.validate`` (state carried along
  ``batch_size`` rows of the split).
* Peer: a decoder-only transformer written below with nanoGPT's published CPU recipe
  (4 layers, 4 heads, width 128, context 64, batch 12, AdamW lr 1e-3, betas 0.9/0.99, weight
  decay 0.1 on matrices, 100 warm-up steps, cosine to 1e-4, clip 1, no dropout, no biases,
  tied embeddings). Its cosine follows the time budget, as seqlm's does. It is evaluated on
  consecutive non-overlapping 64-token blocks (each token once; context 1-64 tokens).

Usage::

    python benchmarks/quality.py run --corpus builtin --budget 95 \\
        --models cpu-fast,transformer --out runs/quality/builtin-95
    python benchmarks/quality.py plot runs/quality/*/results.json --out docs/quality-curves.png

``run`` writes ``results.json`` (curves, best losses, throughput, samples) and ``curves.png``
to ``--out`` and prints a table. Run it under ``flock /tmp/seqlm-cpu.lock`` on a shared box.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.presets import (field_types, merge_choices, optional_fields, preset,
                           split_overrides)
from seqlm.data import load_corpus
from seqlm.generate import generate
from seqlm.metrics import LN2, bigram_nll
from seqlm.run import RunSession
from seqlm.train import Hooks

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
SKIP = {"model": {"vocab_size"}}
SPLIT = "0.9,0.1,0"
MARKS = (95.0, 540.0)  # the two budgets: report the best loss reached within each


# ---- the peer: a small decoder-only transformer ------------------------------------------

@dataclass
class GPTConfig:
    """The peer's architecture and recipe (nanoGPT's CPU settings for Tiny Shakespeare)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    clip: float = 1.0
    dropout: float = 0.0
    seed: int = 0


class CausalBlock(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x)); (B, T, C) -> (B, T, C)."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd, bias=False), nn.LayerNorm(c.n_embd, bias=False)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd, bias=False),
                                 nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token + learned position embeddings, ``n_layer`` blocks, final norm, tied decoder.

    ``forward(tokens (B, T)) -> logits (B, T, V)`` with ``T <= block_size``.
    """

    def __init__(self, c: GPTConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(vocab_size, c.n_embd)
        self.pos = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.Sequential(*[CausalBlock(c) for _ in range(c.n_layer)])
        self.ln = nn.LayerNorm(c.n_embd, bias=False)
        self.head = nn.Linear(c.n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:  # GPT-2 init; residual projections scaled by depth
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("proj.weight",
                                                                        "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.ln(self.blocks(self.tok(tokens) + self.pos(positions))))


@torch.inference_mode()
def gpt_evaluate(model: TinyGPT, tokens: np.ndarray, batch_size: int = 64) -> tuple[float, int]:
    """Summed NLL and count over every target of ``tokens`` (all ``len - 1``), the stream cut
    into consecutive ``block_size`` blocks (the last one shorter), each read from no context."""
    was_training = model.training
    model.eval()
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    T = model.config.block_size
    n_full = (len(data) - 1) // T
    total, count = 0.0, 0
    pieces = [(data[: n_full * T].view(n_full, T), data[1: n_full * T + 1].view(n_full, T))]
    if n_full * T < len(data) - 1:
        pieces.append((data[n_full * T: -1][None], data[n_full * T + 1:][None]))
    for X, Y in pieces:
        for i in range(0, len(X), batch_size):
            logits = model(X[i: i + batch_size])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           Y[i: i + batch_size].reshape(-1), reduction="sum"))
            count += Y[i: i + batch_size].numel()
    model.train(was_training)
    return total, count


def gpt_optimizer(model: TinyGPT, c: GPTConfig) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": c.weight_decay},
                              {"params": others, "weight_decay": 0.0}],
                             lr=c.lr, betas=(0.9, c.beta2))


def gpt_lr(c: GPTConfig, step: int, frac: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr`` over the
    fraction ``frac`` of the time budget spent."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def train_gpt(c: GPTConfig, corpus, budget: float, eval_every: float) -> tuple[dict, TinyGPT]:
    torch.manual_seed(c.seed)
    model = TinyGPT(c, corpus.vocab_size)
    opt = gpt_optimizer(model, c)
    train, val = corpus.splits["train"], corpus.splits["val"]
    data = torch.from_numpy(np.asarray(train, dtype=np.int64))
    gen = torch.Generator().manual_seed(c.seed + 1)
    curve, eval_s, elapsed, step, tokens, next_eval = [], 0.0, 0.0, 0, 0, eval_every
    offsets = torch.arange(c.block_size + 1)
    tick = time.perf_counter()
    while elapsed < budget:
        starts = torch.randint(len(data) - c.block_size - 1, (c.batch_size, 1), generator=gen)
        window = data[starts + offsets]
        for group in opt.param_groups:
            group["lr"] = gpt_lr(c, step, elapsed / budget)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)
        opt.step()
        step, tokens = step + 1, tokens + window[:, 1:].numel()
        now = time.perf_counter()
        elapsed, tick = elapsed + now - tick, now
        if elapsed >= next_eval and elapsed < budget:
            eval_s += _gpt_point(model, val, curve, elapsed, step, tokens)
            next_eval += eval_every
            tick = time.perf_counter()  # evaluation is off the clock
    final_s = _gpt_point(model, val, curve, elapsed, step, tokens, final=True)
    n_params = sum(p.numel() for p in model.parameters())
    return {"kind": "transformer", "config": dataclasses.asdict(c), "params": n_params,
            "steps": step, "tokens": tokens, "train_s": elapsed, "eval_s": eval_s,
            "final_eval_s": final_s, "curve": curve}, model


def _gpt_point(model, val, curve, elapsed, step, tokens, final=False) -> float:
    start = time.perf_counter()
    nll, count = gpt_evaluate(model, val)
    curve.append({"elapsed": elapsed, "step": step, "tokens": tokens, "loss": nll / count,
                  "count": count, "final": final})
    return time.perf_counter() - start


@torch.inference_mode()
def gpt_sample(model: TinyGPT, tokenizer, prefix: str, n: int, temperature: float,
               seed: int) -> str:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(np.asarray(tokenizer.encode(prefix), dtype=np.int64))[None]
    for _ in range(n):
        logits = model(ids[:, -model.config.block_size:])[0, -1] / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        ids = torch.cat([ids, nxt[None]], dim=1)
    return tokenizer.decode(ids[0].tolist())


# ---- the RNN side: seqlm's own trainer -----------------------------------------------------

def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``'cpu-fast:hidden_size=768,lr=0.002'`` -> ``('cpu-fast', {...})`` (values as text)."""
    base, _, rest = spec.partition(":")
    pairs = [p.split("=", 1) for p in rest.split(",") if p]
    bad = [p[0] for p in pairs if len(p) != 2]
    if bad:
        raise SystemExit(f"quality.py: expected key=value in {spec!r}, got {bad}")
    return base, dict(pairs)


def typed(values: dict[str, str], classes) -> dict:
    """Converts ``key=value`` text to each owning dataclass field's type."""
    out = {}
    for key, text in values.items():
        cls = next((c for c in classes if key in field_types(c)), None)
        if cls is None:
            raise SystemExit(f"quality.py: unknown setting {key!r}")
        kind = field_types(cls)[key]
        if text.lower() == "none" and key in optional_fields(cls):
            out[key] = None
        elif kind is bool:
            out[key] = text.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(text)
    return out


def rnn_configs(spec: str, corpus: str, budget: float, threads: int):
    base, overrides = parse_spec(spec)
    values = preset(base)
    values = {k: v for k, v in values.items() if k not in ("epochs", "max_steps")}
    values = merge_choices(values, typed(overrides, (DataConfig, ModelConfig, TrainConfig)))
    # Same stream for every model; the harness owns the budget and the evaluation times.
    values.update(corpus=corpus, clean="none", tokenizer="char", split=SPLIT, max_tokens=None,
                  time_budget=budget, eval_every=0, early_stopping=None, threads=threads,
                  device="cpu", sample_tokens=0)
    sections = split_overrides(values, SECTIONS, skip=SKIP)
    return (DataConfig(**sections["data"]), sections["model"],
            TrainConfig(**sections["train"]))


def train_rnn(spec: str, corpus_name: str, budget: float, eval_every: float, threads: int):
    data, model_fields, train = rnn_configs(spec, corpus_name, budget, threads)
    session = RunSession(data, model_fields, train, preset=parse_spec(spec)[0])
    trainer = session.trainer
    curve, state = [], {"next": eval_every, "eval_s": 0.0}

    def point(report: dict, p, final: bool) -> None:
        curve.append({"elapsed": p.elapsed, "step": p.step, "tokens": p.tokens,
                      "loss": report["loss"], "count": report["tokens"], "final": final})

    def on_step(p) -> None:
        if p.elapsed >= state["next"] and p.elapsed < budget:
            start = time.perf_counter()
            point(trainer.validate(), p, False)
            seconds = time.perf_counter() - start
            # The trainer adds the time spent in this hook to the next step's elapsed; taking
            # it off now keeps the evaluation off the clock (and out of the lr schedule).
            p.elapsed -= seconds
            state["eval_s"] += seconds
            state["next"] += eval_every

    def on_eval(record: dict) -> None:  # the trainer's own evaluation of the final weights
        point({"loss": record["val_loss"], "tokens": record["val_tokens"]}, trainer.progress,
              True)

    start = time.perf_counter()
    trainer.run(Hooks(on_step=on_step, on_eval=on_eval))
    final_s = time.perf_counter() - start - trainer.progress.elapsed - state["eval_s"]
    p = trainer.progress
    n_params = sum(q.numel() for q in trainer.model.parameters())
    return {"kind": "rnn", "config": session.configs(), "params": n_params, "steps": p.step,
            "tokens": p.tokens, "train_s": p.elapsed, "eval_s": state["eval_s"],
            "final_eval_s": final_s, "curve": curve}, session


# ---- the comparison ------------------------------------------------------------------------

def summarize(result: dict, budget: float) -> None:
    """Adds the best loss reached within each mark (and the budget) to ``result``."""
    marks = sorted({m for m in MARKS if m <= budget} | {budget})
    best = {}
    for mark in marks:  # an evaluation counts when it starts within the mark
        within = [pt["loss"] for pt in result["curve"] if pt["elapsed"] <= mark + 1e-6
                  or (pt["final"] and mark == budget)]
        best[f"{mark:g}"] = min(within) if within else None
    result["best"] = best
    result["best_loss"] = min(pt["loss"] for pt in result["curve"])
    result["tokens_per_s"] = result["tokens"] / max(result["train_s"], 1e-9)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    corpus = load_corpus(DataConfig(corpus=args.corpus, clean="none", split=SPLIT))
    val = corpus.splits["val"]
    prefix = args.prefix or corpus.tokenizer.decode(val[:24])
    out = {"corpus": args.corpus, "budget": args.budget, "eval_every": args.eval_every,
           "threads": args.threads, "parallel": args.parallel, "split": SPLIT,
           "vocab_size": corpus.vocab_size,
           "tokens": {k: int(len(v)) for k, v in corpus.splits.items()},
           "bigram_loss": bigram_nll(corpus.splits["train"], val, corpus.vocab_size, 0.1),
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
           "prefix": prefix, "models": {}}
    if args.parallel:
        out["models"] = run_parallel(args, prefix)
        return out
    for spec in args.models:
        out["models"][spec] = run_one(args, spec, corpus, prefix)
    return out


def run_one(args, spec: str, corpus, prefix: str) -> dict:
    """Trains and evaluates one model, then samples from its final weights."""
    load = os.getloadavg()[0]
    if spec.split(":")[0] == "transformer":
        c = GPTConfig(**typed(parse_spec(spec)[1], (GPTConfig,)))
        result, model = train_gpt(c, corpus, args.budget, args.eval_every)
        sample = gpt_sample(model, corpus.tokenizer, prefix, args.sample_tokens,
                            args.temperature, args.seed)
    else:
        result, session = train_rnn(spec, args.corpus, args.budget, args.eval_every,
                                    args.threads)
        if not np.array_equal(session.corpus.splits["val"], corpus.splits["val"]):
            raise SystemExit("quality.py: the RNN's validation split differs from the "
                             "transformer's; the comparison would be unfair")
        sample = generate(session.trainer.model, session.tokenizer, prefix,
                          max_new_tokens=args.sample_tokens, temperature=args.temperature,
                          seed=args.seed)[0]
    result.update(sample=sample, loadavg_before=load, loadavg_after=os.getloadavg()[0])
    summarize(result, args.budget)
    print(f"{spec}: best {result['best_loss']:.4f} nats/char after {result['steps']} steps, "
          f"{result['tokens_per_s']:,.0f} tokens/s, eval {result['eval_s']:.1f} s",
          file=sys.stderr, flush=True)
    return result


def run_parallel(args, prefix: str) -> dict:
    """Each model in its own process, all at once; returns their results by spec."""
    import subprocess

    procs, parts = [], []
    for i, spec in enumerate(args.models):
        part = args.out / "parts" / str(i)
        cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--corpus", args.corpus,
               "--budget", str(args.budget), "--eval-every", str(args.eval_every),
               "--threads", str(args.threads), "--prefix", prefix, "--sample-tokens",
               str(args.sample_tokens), "--temperature", str(args.temperature), "--seed",
               str(args.seed), "--out", str(part), "--models", spec]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        parts.append(part)
    if any(proc.wait() for proc in procs):
        raise SystemExit("quality.py: a model's process failed (see its error above)")
    models = {}
    for part in parts:
        models.update(json.loads((part / "results.json").read_text(encoding="utf-8"))["models"])
    return models


def throughput(args) -> list[str]:
    """Training tokens/s of each RNN spec at each thread count, measured in interleaved rounds
    in this one process (the order flips every round); medians over ``--rounds``."""
    import statistics

    from seqlm.models import RNNLM
    from seqlm.schedule import make_optimizer

    vocab = load_corpus(DataConfig(corpus=args.corpus, clean="none", split=SPLIT)).vocab_size
    steps = {}
    for spec in args.models:
        data, model_fields, train = rnn_configs(spec, args.corpus, 1.0, 1)
        model = RNNLM(ModelConfig(vocab_size=vocab, **model_fields))
        opt = make_optimizer(model, train)
        X = torch.randint(vocab, (data.batch_size, data.num_steps))

        def step(model=model, opt=opt, X=X, clip=train.clip or math.inf):
            logits, _ = model(X)
            loss = F.cross_entropy(logits.reshape(-1, vocab), X.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        steps[spec] = (step, X.numel())
    rates = {(spec, t): [] for spec in steps for t in args.thread_counts}
    for r in range(args.rounds):
        order = [(spec, t) for spec in steps for t in args.thread_counts]
        for spec, t in order if r % 2 == 0 else order[::-1]:
            torch.set_num_threads(t)
            fn, n = steps[spec]
            fn()  # settle the thread pool at this size
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                fn()
                count += 1
            rates[(spec, t)].append(count * n / (time.perf_counter() - start))
    return [f"{spec} threads={t}: median {statistics.median(v):,.0f} tokens/s "
            f"(min {min(v):,.0f}, max {max(v):,.0f}, {len(v)} rounds)"
            for (spec, t), v in rates.items()]


def table(results: list[dict]) -> str:
    lines = ["| corpus | budget | model | params | steps | tokens/s | best val loss (nats/char) "
             "| bits/char | within 95 s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for res in sorted(results, key=lambda r: (r["corpus"], r["budget"])):
        for name, r in res["models"].items():
            b95 = r["best"].get("95")
            lines.append(f"| {res['corpus']} | {res['budget']:g} s | {name} | {r['params']:,} "
                         f"| {r['steps']:,} | {r['tokens_per_s']:,.0f} | {r['best_loss']:.4f} "
                         f"| {r['best_loss'] / LN2:.4f} | "
                         f"{'-' if b95 is None else f'{b95:.4f}'} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({r["corpus"] for r in results})
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.5), squeeze=False)
    for ax, name in zip(axes[0], corpora):
        runs = [r for r in results if r["corpus"] == name]
        longest = max(r["budget"] for r in runs)
        for res in runs:
            for spec, r in res["models"].items():
                pts = r["curve"]
                ax.plot([p["elapsed"] for p in pts], [p["loss"] for p in pts],
                        "o-" if res["budget"] == longest else "s--", ms=3,
                        label=f"{spec} ({res['budget']:g} s, {res['threads']} thread"
                        f"{'s' if res['threads'] > 1 else ''})")
        ax.axhline(res["bigram_loss"], color="grey", ls="--", label="bigram (add-0.1)")
        ax.set_title(f"{name}: validation loss vs training time")
        ax.set_xlabel("training wall time, evaluations off the clock (s)")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train each model for the budget and compare")
    p.add_argument("--corpus", default="builtin", help="builtin, timemachine or a text file")
    p.add_argument("--budget", type=float, default=95.0, help="seconds per model")
    p.add_argument("--eval-every", type=float, default=None,
                   help="seconds between evaluations (default budget / 12)")
    p.add_argument("--models", nargs="+", default=["cpu-fast", "transformer"],
                   help="each a seqlm preset or 'transformer', optionally with overrides: "
                   "cpu-fast:hidden_size=768,lr=0.002")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per model (default 1 with --parallel, else 2)")
    p.add_argument("--parallel", action="store_true",
                   help="train the models at the same time, one process each")
    p.add_argument("--prefix", default=None, help="sample prefix (default: start of val)")
    p.add_argument("--sample-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="directory for results and plot")
    p = sub.add_parser("throughput", help="interleaved A/B of training tokens/s by threads")
    p.add_argument("--corpus", default="builtin", help="sets the vocabulary size")
    p.add_argument("--models", nargs="+", default=["cpu-fast"])
    p.add_argument("--thread-counts", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    p = sub.add_parser("plot", help="one PNG (a panel per corpus) from results.json files")
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--table", action="store_true", help="also print the markdown table")
    args = parser.parse_args(argv)
    if args.command == "run":
        args.eval_every = args.eval_every or args.budget / 12
        args.threads = args.threads or (1 if args.parallel else 2)
        results = run(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
        plot([results], args.out / "curves.png")
        print(table([results]))
        return 0
    if args.command == "throughput":
        print("\n".join(throughput(args)))
        return 0
    results = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
    plot(results, args.out)
    if args.table:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
