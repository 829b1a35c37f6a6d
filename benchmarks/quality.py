"""Quality at a CPU budget: seqlm's presets against a peer at equal wall time.

Each model trains for the same wall-clock budget on the same contiguous split of the same
token stream, and is evaluated at the same moments of its budget on the **whole** validation
split, token-weighted. Character streams (``--tokenizer char``) use ``--split 0.9,0.1,0``
(the last 10 % held out); word streams (``--tokenizer word``, newlines kept as the ``"\\n"``
token that plays word_language_model's ``<eos>``) use ``0.9,0.05,0.05``; the vocabulary comes
from the training part. The budget is training time on both sides: each evaluation is taken
off the model's clock (a full-split evaluation costs the transformer about twice what it costs
an RNN, so counting it would tax the peer for the protocol). Evaluations run at every
``--eval-every`` seconds of training and once more on the final weights when the budget is
spent; every model keeps its best evaluation.

With ``--parallel`` the models train at the same time, one process each (``--threads`` each,
1 by default), so that a shared machine's load falls on all of them alike; otherwise one after
the other in one process.

* RNN side: a seqlm preset (``cpu-fast``, ``cpu-quality``, or any ``--preset`` name, with
  ``:key=value,...`` overrides), trained by :class:`seqlm.trainer.Trainer` through
  :class:`seqlm.run.RunSession`; evaluated by ``Trainer.validate`` (state carried along
  ``batch_size`` rows of the split).
* Peers (benchmarks/quality_peers.py): ``transformer``, nanoGPT's CPU settings, and ``wlm``,
  pytorch/examples' word_language_model LSTM, both with ``:key=value,...`` overrides.

Usage::

    python benchmarks/quality.py run --corpus builtin --budget 95 \\
        --models cpu-fast,transformer --out runs/quality/builtin-95
    python benchmarks/quality.py plot runs/quality/*/results.json --out docs/quality-curves.png
    python benchmarks/quality.py matrix            # every corpus x {95 s, 9 min}, stored rows
    python benchmarks/quality.py matrix --table-only --doc docs/quality.md

``run`` writes ``results.json`` (curves, best losses, throughput, samples) and ``curves.png``
to ``--out`` and prints a table; ``matrix`` is described in benchmarks/quality_matrix.py. Run
them under ``flock /tmp/seqlm-cpu.lock`` on a shared box.
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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if str(Path(__file__).resolve().parent) not in sys.path:  # the peers and the matrix beside us
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_busy  # noqa: E402
import quality_matrix  # noqa: E402
from quality_peers import (GPTConfig, WLMConfig, gpt_sample, train_gpt,  # noqa: E402
                           train_wlm, wlm_sample)
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.recipe import rules
from seqlm import settings
from seqlm.presets import preset
from seqlm.settings import Settings, field_types, optional_fields
from seqlm.data import load_corpus
from seqlm.text import CLEANING
from seqlm.errors import SeqlmError
from seqlm.generate import generate
from seqlm.metrics import LN2, bigram_nll
from seqlm.run import RunSession

# How the harness turns text into ids: the same for every model of a run.
STREAMS = {
    "char": {"clean": "none", "tokenizer": "char", "keep_newlines": False, "split": "0.9,0.1,0"},
    "word": {"clean": "none", "tokenizer": "word", "keep_newlines": True,
             "split": "0.9,0.05,0.05"},
}
PEERS = {"transformer": (GPTConfig, train_gpt, gpt_sample), "wlm": (WLMConfig, train_wlm,
                                                                     wlm_sample)}
MARKS = (95.0, 540.0)  # the two budgets: report the best loss reached within each


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


def stream(tokenizer: str, clean: str | None = None) -> dict:
    """The data settings of a ``tokenizer`` stream, with ``clean`` (``--clean``) when given."""
    return {**STREAMS[tokenizer], **({"clean": clean} if clean else {})}


def stream_corpus(corpus: str, tokenizer: str, clean: str | None = None):
    """The ids every model of a run trains and is evaluated on."""
    return load_corpus(DataConfig(corpus=corpus, **stream(tokenizer, clean)))


def rnn_settings(spec: str, corpus: str, tokenizer: str, budget: float, threads: int,
                 clean: str | None = None) -> Settings:
    """The settings of ``spec`` (a preset with ``:key=value`` overrides, the user's choices)
    under the harness's protocol: the budget replaces the preset's, and the same stream,
    threads and evaluation times for every model are imposed without counting as choices."""
    base, overrides = parse_spec(spec)
    chosen = {**typed(overrides, (DataConfig, ModelConfig, TrainConfig)), "time_budget": budget}
    fixed = {"corpus": corpus, **stream(tokenizer, clean), "max_tokens": None,
             "eval_every": 0, "early_stopping": None, "device": "cpu", "sample_tokens": 0,
             **({"threads": threads} if threads else {})}  # 0: the recipe chooses
    return settings.resolve(base, choices=chosen, fixed=fixed)


def train_rnn(spec: str, corpus_name: str, tokenizer: str, budget: float, eval_every: float,
              threads: int, clean: str | None = None):
    session = RunSession(rnn_settings(spec, corpus_name, tokenizer, budget, threads, clean),
                         preset=parse_spec(spec)[0])
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

    events: list[dict] = []

    def on_event(record: dict) -> None:  # a thread change or a new plan
        nonlocal trainer
        events.append(record)
        if record.get("restart"):  # the recipe started the run again: a new model
            trainer = session.trainer
            curve.clear()
            state.update(next=eval_every, eval_s=0.0)

    start = time.perf_counter()
    session.fit(on_step=on_step, on_eval=on_eval, on_event=on_event)
    final_s = time.perf_counter() - start - trainer.progress.elapsed - state["eval_s"]
    p = trainer.progress
    n_params = sum(q.numel() for q in trainer.model.parameters())
    return {"kind": "rnn", "config": session.configs(), "params": n_params, "steps": p.step,
            "tokens": p.tokens, "train_s": p.elapsed, "eval_s": state["eval_s"],
            "final_eval_s": final_s, "curve": curve, "events": events}, session


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
    final = result["curve"][-1]
    assert final["final"], "the last evaluation is the final weights'"
    result["final_loss"] = final["loss"]
    result["tokens_per_s"] = result["tokens"] / max(result["train_s"], 1e-9)


def setup(models: list[str], tokenizer: str, clean: str | None = None) -> dict:
    """What a run's numbers depend on besides the machine and the budget, as it resolves now:
    the stream, each preset's settings (with the spec's overrides), each peer's config and,
    when a preset adapts, the recipe's rules (:func:`seqlm.recipe.rules`). Stored as a
    result's ``"setup"`` (``"recipe"`` in results written before that name)."""
    out = {"stream": stream(tokenizer, clean), "models": {}}
    for spec in models:
        name, overrides = parse_spec(spec)
        if name in PEERS:
            cls = PEERS[name][0]
            out["models"][spec] = dataclasses.asdict(cls(**typed(overrides, (cls,))))
        else:
            out["models"][spec] = {**preset(name),
                                   **typed(overrides, (DataConfig, ModelConfig, TrainConfig))}
    if any(settings.get("adapt") for settings in out["models"].values()):
        out["rules"] = rules()
    return json.loads(json.dumps(out))  # as it reads back from a results file


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = stream_corpus(args.corpus, args.tokenizer, args.clean)
    val = corpus.splits["val"]
    prefix = args.prefix or corpus.tokenizer.decode(val[:24])
    out = {"corpus": args.corpus, "budget": args.budget, "eval_every": args.eval_every,
           "threads": args.threads, "parallel": args.parallel,
           "tokenizer": args.tokenizer, "clean": stream(args.tokenizer, args.clean)["clean"],
           "split": STREAMS[args.tokenizer]["split"],
           "vocab_size": corpus.vocab_size,
           "tokens": {k: int(len(v)) for k, v in corpus.splits.items()},
           "bigram_loss": bigram_nll(corpus.splits["train"], val, corpus.vocab_size, 0.1),
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
           "prefix": prefix, "setup": setup(args.models, args.tokenizer, args.clean),
           "models": {}}
    if args.parallel:
        out["models"] = run_parallel(args, prefix)
        return out
    for spec in args.models:
        out["models"][spec] = run_one(args, spec, corpus, prefix)
    return out


def run_one(args, spec: str, corpus, prefix: str) -> dict:
    """Trains and evaluates one model, then samples from its final weights."""
    load = os.getloadavg()[0]
    name, overrides = parse_spec(spec)
    if name in PEERS:
        config_class, train_peer, sample_peer = PEERS[name]
        c = config_class(**typed(overrides, (config_class,)))
        result, model = train_peer(c, corpus, args.budget, args.eval_every)
        sample = sample_peer(model, corpus.tokenizer, prefix, args.sample_tokens,
                             args.temperature, args.seed) if args.sample_tokens else ""
    else:
        result, session = train_rnn(spec, args.corpus, args.tokenizer, args.budget,
                                    args.eval_every, args.threads, args.clean)
        if not np.array_equal(session.corpus.splits["val"], corpus.splits["val"]):
            raise SystemExit("quality.py: the RNN's validation split differs from the "
                             "peer's; the comparison would be unfair")
        sample = generate(session.trainer.model, session.tokenizer, prefix,
                          max_new_tokens=args.sample_tokens, temperature=args.temperature,
                          seed=args.seed)[0] if args.sample_tokens else ""
        if getattr(args, "keep", None):  # the final weights as a run seqlm.load reads
            from seqlm.rundir import RunDir

            session.run = RunDir.create(args.keep, overwrite=True)
            session.run.write_config(session.configs())
            session.save("last", session.trainer)
    result.update(sample=sample, loadavg_before=load, loadavg_after=os.getloadavg()[0])
    summarize(result, args.budget)
    print(f"{spec}: best {result['best_loss']:.4f} nats/token after {result['steps']} steps, "
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
               "--tokenizer", args.tokenizer, *(["--clean", args.clean] if args.clean else []),
               "--budget", str(args.budget), "--eval-every", str(args.eval_every),
               "--threads", str(args.threads), "--prefix", prefix, "--sample-tokens",
               str(args.sample_tokens), "--temperature", str(args.temperature), "--seed",
               str(args.seed), "--out", str(part), "--models", spec,
               *(["--keep", str(args.keep)] if getattr(args, "keep", None)
                 and spec.split(":")[0] not in PEERS else [])]
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

    vocab = stream_corpus(args.corpus, "char").vocab_size
    steps = {}
    for spec in args.models:
        chosen = rnn_settings(spec, args.corpus, "char", 1.0, 1)
        data, train = chosen.data, chosen.train
        model = RNNLM(chosen.model_config(vocab))
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
    lines = ["| row | budget | model | params | steps | tokens/s | best val loss (nats/token) "
             "| bits/token | within 95 s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for res in sorted(results, key=lambda r: (r.get("row", r["corpus"]), r["budget"])):
        for name, r in res["models"].items():
            b95 = r["best"].get("95")
            lines.append(f"| {res.get('row', res['corpus'])} | {res['budget']:g} s | {name} "
                         f"| {r['params']:,} "
                         f"| {r['steps']:,} | {r['tokens_per_s']:,.0f} | {r['best_loss']:.4f} "
                         f"| {r['best_loss'] / LN2:.4f} | "
                         f"{'-' if b95 is None else f'{b95:.4f}'} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({r.get("row", r["corpus"]) for r in results})
    cols = min(len(corpora), 4)
    rows = math.ceil(len(corpora) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(corpora):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, corpora):
        runs = [r for r in results if r.get("row", r["corpus"]) == name]
        longest = max(r["budget"] for r in runs)
        for res in runs:
            for spec, r in res["models"].items():
                pts = r["curve"]
                ax.plot([p["elapsed"] for p in pts], [p["loss"] for p in pts],
                        "o-" if res["budget"] == longest else "s--", ms=3,
                        label=f"{spec} ({res['budget']:g} s, "
                        f"{res['threads'] or 'chosen'} thread"
                        f"{'s' if res['threads'] != 1 else ''})")
        ax.axhline(res["bigram_loss"], color="grey", ls="--", label="bigram (add-0.1)")
        ax.set_title(f"{name}: validation loss vs training time")
        ax.set_xlabel("training wall time, evaluations off the clock (s)")
        ax.set_ylabel("validation loss (nats/token)")
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
    p.add_argument("--tokenizer", choices=tuple(STREAMS), default="char",
                   help="token unit of the stream every model sees")
    p.add_argument("--clean", choices=CLEANING, default=None,
                   help="seqlm's --clean for the stream (default none; gutenberg drops "
                   "Project Gutenberg's header and licence)")
    p.add_argument("--budget", type=float, default=95.0, help="seconds per model")
    p.add_argument("--eval-every", type=float, default=None,
                   help="seconds between evaluations (default budget / 12)")
    p.add_argument("--models", nargs="+", default=["cpu-fast", "transformer"],
                   help="each a seqlm preset or a peer (transformer, wlm), optionally with "
                   "overrides: "
                   "cpu-fast:hidden_size=768,lr=0.002")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per model (default 1 with --parallel, else 2; 0: "
                   "a preset that adapts threads chooses them)")
    p.add_argument("--parallel", action="store_true",
                   help="train the models at the same time, one process each")
    p.add_argument("--prefix", default=None, help="sample prefix (default: start of val)")
    p.add_argument("--sample-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="directory for results and plot")
    p.add_argument("--keep", type=Path, default=None, help="also save the seqlm model's final "
                   "weights as a run directory here (one seqlm model)")
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
    quality_matrix.add_parser(sub)
    quality_busy.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "matrix":
        return quality_matrix.main(args, run=run, setup=setup, plot=plot)
    if args.command == "busy":
        return quality_busy.main(args, run=run, setup=setup)
    if args.command == "run":
        args.eval_every = args.eval_every or args.budget / 12
        if args.threads is None:
            args.threads = 1 if args.parallel else 2
        try:
            results = run(args)
        except SeqlmError as exc:  # a setting or corpus seqlm cannot use: one line
            print(f"quality.py: {exc}", file=sys.stderr)
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
        plot([results], args.out / "curves.png")
        print(table([results]))
        return 0
    if args.command == "throughput":
        print("\n".join(throughput(args)))
        return 0
    results = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
    pairs = [p for p, r in zip(args.results, results) if "models" not in r]
    if pairs:  # quality-busy-*.json match the same glob: their table is `busy --table-only`
        print(f"quality.py: skipped {len(pairs)} files that hold no run (busy pairs: "
              "quality.py busy --table-only)", file=sys.stderr)
        results = [r for r in results if "models" in r]
    plot(results, args.out)
    if args.table:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
