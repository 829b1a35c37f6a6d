"""``seqlm bptt`` (gradient flow through time) and ``seqlm compare`` (runs side by side)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from seqlm.cli.commands import _refuse_existing
from seqlm.cli.flags import add_config_flags, given
from seqlm.config import DataConfig, ModelConfig
from seqlm.errors import ConfigError
from seqlm.settings import FROM_CORPUS

SHOWN_LAGS = (0, 1, 2, 5, 10, 20, 50, 100, 150, 199)
# Data fields bptt does not take as flags (its --batch-size and --steps are its own).
SKIPPED_DATA = ("split", "max_tokens", "sampler", "batch_size", "num_steps")


def register(sub) -> None:
    p = sub.add_parser("bptt", help="how gradients vanish or explode through time")
    p.add_argument("checkpoint", nargs="?", help="a run or checkpoint; without one, a freshly "
                   "initialised model built from the model flags")
    p.add_argument("--steps", type=int, default=200, help="sequence length T")
    p.add_argument("--batch-size", type=int, default=8, help="sequences averaged over")
    p.add_argument("--sweep", action="store_true", help="W_hh at spectral radius 0.5/1/1.5 "
                   "behind identity, tanh and relu; W_hh = 1.5 I; gru and lstm")
    p.add_argument("--clipping", action="store_true", help="the book's exercise: train the "
                   "d2l-scratch preset without and with gradient clipping, side by side")
    # Defaults left to seqlm.exercises (read when the command runs: it imports torch, which
    # building the parser must not, so that `seqlm generate --backend onnx` never does).
    p.add_argument("--clipping-steps", type=int, default=None,
                   help="steps of each --clipping run (default: the exercise's; about 0.1 s "
                   "each)")
    p.add_argument("--clipping-lr", type=float, default=None,
                   help="SGD learning rate of the --clipping runs (default: the exercise's; "
                   "the book's is 1)")
    p.add_argument("--truncation-error", action="store_true",
                   help="error of the tau-truncated gradient against the full one as tau grows")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh model and the data")
    p.add_argument("--plot", metavar="PNG", help="figure path (default gradient-flow.png, in "
                   "the run directory when one is given)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_flags(p, DataConfig, title="data (for a fresh model)",
                     skip=SKIPPED_DATA)
    add_config_flags(p, ModelConfig, title="model (for a fresh model)", skip=(FROM_CORPUS,))
    p.set_defaults(handler=cmd_bptt)

    p = sub.add_parser("compare", help="training curves of several runs in one plot")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--plot", metavar="PNG", default="compare.png", help="figure path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_compare)


def _data_flags(args) -> dict:
    """The data flags given on the command line (bptt's own --batch-size left out)."""
    return {k: v for k, v in given(args, DataConfig).items() if k not in SKIPPED_DATA}


def _model_and_tokens(args):
    """The model (trained or fresh) and a (B, T+1) token batch from its corpus (the whole of
    it: every split, encoded by the model's tokenizer or one fitted on the training split)."""
    import torch

    from seqlm.checkpoint import load_checkpoint, resolve_checkpoint
    from seqlm.data import load_corpus
    from seqlm.models import RNNLM

    torch.manual_seed(args.seed)
    if args.checkpoint:
        ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint))
        data = DataConfig(**{**ckpt.config.get("data", {}), **_data_flags(args),
                             "max_tokens": None})
        model, corpus = ckpt.model, load_corpus(data, tokenizer=ckpt.tokenizer)
    else:
        corpus = load_corpus(DataConfig(**{**_data_flags(args), "max_tokens": None}))
        model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, **given(args, ModelConfig)))
    ids = torch.as_tensor(np.concatenate(list(corpus.splits.values())).astype("int64"))
    need = args.batch_size * (args.steps + 1)
    if len(ids) < need:
        raise ConfigError(f"the corpus has {len(ids)} tokens; `batch_size` {args.batch_size} × "
                          f"(`steps` {args.steps} + 1) needs {need}; lower them")
    gen = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(len(ids) - args.steps - 1, (args.batch_size,), generator=gen)
    batch = torch.stack([ids[s: s + args.steps + 1] for s in starts.tolist()])
    return model.double().eval(), batch, corpus.vocab_size


def cmd_bptt(args) -> int:
    from seqlm import diagnostics
    from seqlm.exercises import clipping_exercise

    if args.steps < 2 or args.batch_size < 1:
        raise ConfigError("--steps must be >= 2 and --batch-size >= 1")
    if args.clipping_steps is not None and args.clipping_steps < 1:
        raise ConfigError(f"--clipping-steps must be >= 1, got {args.clipping_steps}")
    model, batch, _ = _model_and_tokens(args)
    report: dict = {"model": vars(model.config), "steps": args.steps,
                    "batch_size": args.batch_size}
    report.update(diagnostics.language_model_flow(
        model, batch, with_sweep=args.sweep, with_truncation_error=args.truncation_error,
        seed=args.seed))
    if args.clipping:
        knobs = {k: v for k, v in (("steps", args.clipping_steps), ("lr", args.clipping_lr))
                 if v is not None}
        report["clipping"] = clipping_exercise(**knobs, overrides=_data_flags(args))
    plot = Path(args.plot) if args.plot else (
        Path(args.checkpoint) if args.checkpoint and Path(args.checkpoint).is_dir()
        else Path(".")) / "gradient-flow.png"
    _refuse_existing(plot, args.overwrite, "figure")
    diagnostics.plot_gradient_flow(report["curves"], str(plot))
    report["plot"] = str(plot)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        _print_bptt(report)
    return 0


def _print_bptt(report: dict) -> None:
    curves = report["curves"]
    lags = [k for k in SHOWN_LAGS if k < report["steps"]]
    print("||dl_T/dh_(T-k)|| by lag k (batch mean); Jacobian-product spectral norm in brackets")
    print(f"{'curve':<18}" + "".join(f"{'k=' + str(k):>18}" for k in lags))
    for name, c in curves.items():
        cells = []
        for k in lags:
            jac = c["jacobian_norm"][k] if c.get("jacobian_norm") else math.nan
            cells.append(f"{c['grad_norm'][k]:9.2e} [{jac:7.1e}]")
        print(f"{name:<18}" + "".join(f"{x:>18}" for x in cells))
    _print_growth(curves, report["steps"])
    for row in report.get("truncation_error", []):
        print(f"tau {row['tau']:>3}: relative error {row['rel_error']:.3f}, cosine "
              f"{row['cosine']:.4f}")
    if "clipping" in report:
        _print_clipping(report["clipping"])
    print(f"plot: {report['plot']}")


def _fmt(value, spec: str) -> str:
    """``value`` formatted as ``spec`` (a width and a type), or '-' at that width."""
    width = int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()))
    return f"{'-':>{width}}" if value is None else format(value, spec)


MEAN_DPHI = "mean phi'"


def _print_growth(curves: dict, steps: int) -> None:
    print(f"\nper lag, the measured slope of log||J_T...J_(T-k+1)|| (lags {steps // 2}.."
          f"{steps - 1}) beside log rho; mean phi' along the trajectory; growth = "
          "||dl_T/dh_(T-k)|| at the last lag / at k=0")
    print(f"{'curve':<18}{'rho':>6}{'log rho':>9}{'slope':>9}{MEAN_DPHI:>10}{'growth':>10}")
    for name, c in curves.items():
        rho = c.get("rho")
        log_rho = math.log(rho) if rho else None
        print(f"{name:<18}{_fmt(rho, '6g')}{_fmt(log_rho, '9.4f')}{_fmt(c.get('slope'), '9.4f')}"
              f"{_fmt(c.get('mean_dphi'), '10.3f')}{_fmt(c.get('growth'), '10.2e')}")


def _print_clipping(result: dict) -> None:
    off, on = result["runs"]["off"], result["runs"]["on"]
    print(f"\n{result['preset']} at lr {result['lr']:g}, {result['steps']} steps: pre-clip "
          f"gradient norm and training perplexity per step, clipping off | clip "
          f"{result['clip']:g}")
    print(f"{'step':>5}{'norm':>11}{'ppl':>11}   |{'norm':>11}{'ppl':>11}")
    for step in range(max(len(off["ppl"]), len(on["ppl"]))):
        cells = [f"{run[key][step]:>11.3g}" if step < len(run[key]) else f"{'':>11}"
                 for run in (off, on) for key in ("grad_norm", "ppl")]
        print(f"{step + 1:>5}{cells[0]}{cells[1]}   |{cells[2]}{cells[3]}")
    for name, run in (("off", off), ("on", on)):
        note = f"; {run['diverged']}" if run["diverged"] else ""
        print(f"clipping {name}: held-out perplexity {run['val_ppl']:.4g}{note}")


def cmd_compare(args) -> int:
    from seqlm.plots import plot_comparison
    from seqlm.rundir import RunDir

    runs = {}
    for path in args.runs:
        run = RunDir.open(path)
        name = Path(path).name
        runs[name if name not in runs else path] = run.records()
    _refuse_existing(Path(args.plot), args.overwrite, "figure")
    plot_comparison(runs, args.plot)
    rows = {}
    for name, records in runs.items():
        train = [r for r in records if r.get("kind") == "train"]
        val = [r.get("val_ppl") for r in records if r.get("kind") == "eval" and "val_ppl" in r]
        rows[name] = {"steps": train[-1]["step"] if train else 0,
                      "tokens": train[-1]["tokens"] if train else 0,
                      "seconds": train[-1]["elapsed"] if train else 0.0,
                      "train_ppl": train[-1]["ppl"] if train else None,
                      "best_val_ppl": min(val) if val else None}
    if args.json:
        print(json.dumps({"runs": rows, "plot": args.plot}))
        return 0
    print(f"{'run':<28} {'steps':>7} {'tokens':>11} {'seconds':>8} {'train ppl':>9} "
          f"{'best val ppl':>12}")
    for name, r in rows.items():
        best = f"{r['best_val_ppl']:.3f}" if r["best_val_ppl"] else "-"
        train = f"{r['train_ppl']:.3f}" if r["train_ppl"] else "-"
        print(f"{name:<28} {r['steps']:>7} {r['tokens']:>11,} {r['seconds']:>8.1f} "
              f"{train:>9} {best:>12}")
    print(f"plot: {args.plot}")
    return 0
