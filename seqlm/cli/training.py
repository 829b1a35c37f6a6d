"""``seqlm train`` (and ``--resume``) and ``seqlm reproduce d2l``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from seqlm.cli.flags import add_config_flags, given
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.errors import EXIT_ON_SIGNAL, ConfigError
from seqlm.presets import (BOOK_PERPLEXITY, PRESETS, merge_choices, preset, read_toml,
                           split_overrides)
SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
# The model's vocab_size comes from the data; the name belongs to DataConfig's bpe target.
SKIP = {"model": {"vocab_size"}}
DEFAULT_PRESET = "cpu-fast"
BUDGETS = ("epochs", "max_steps", "time_budget")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a language model (no flags: the main job)")
    p.add_argument("--preset", help=f"a named recipe: {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="TOML", help="settings file; flags override it")
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--name", help="run name under runs/ (default: preset or cell + time)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN", help="continue a run from checkpoints/last; only "
                   "--epochs, --max-steps, --time-budget and --early-stopping may change")
    p.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--nproc", type=int, metavar="N", help="data-parallel training in N "
                   "processes on this machine, started through torchrun; N must divide "
                   "--batch-size (docs/distributed.md)")
    add_config_flags(p, DataConfig, title="data")
    add_config_flags(p, ModelConfig, title="model", skip=("vocab_size",))
    p.add_argument("--one-hot", dest="embedding_dim", action="store_const", const=None,
                   default=argparse.SUPPRESS,
                   help="feed the chapter's one-hot vectors (same as no --embedding-dim)")
    add_config_flags(p, TrainConfig, title="training")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("reproduce", help="rerun the book's experiments and compare")
    p.add_argument("what", choices=["d2l"], help="d2l: the chapter's three RNN runs")
    p.add_argument("--epochs", type=int, default=None, help="override the book's 500 epochs")
    p.add_argument("--out", default="runs/reproduce-d2l", help="parent directory of the runs")
    p.add_argument("--overwrite", action="store_true", help="replace existing runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_reproduce)


def resolve_configs(args) -> tuple[DataConfig, dict, TrainConfig]:
    """Defaults < --preset (cpu-fast when none is named) < --config < flags, validated
    before any data is read. A budget given in the config or flags replaces all of the
    preset's budgets (epochs, max_steps, time_budget)."""
    chosen: dict = read_toml(args.config) if args.config else {}
    for cls in (DataConfig, ModelConfig, TrainConfig):
        chosen.update(given(args, cls))
    values = preset(args.preset or DEFAULT_PRESET)
    if any(name in chosen for name in BUDGETS):  # the user's budget replaces the preset's
        values = {k: v for k, v in values.items() if k not in BUDGETS}
    values = merge_choices(values, chosen)
    sections = split_overrides(values, SECTIONS, skip=SKIP)
    data, train = DataConfig(**sections["data"]), TrainConfig(**sections["train"])
    ModelConfig(vocab_size=2, **sections["model"])  # validate now; the data sets vocab_size
    return data, sections["model"], train


def _default_out(args, model: dict) -> Path:
    if args.out:
        return Path(args.out)
    name = args.name or f"{args.preset or model.get('cell', 'rnn')}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path("runs") / name


class _Reporter:
    """Progress bar and evaluation lines; everything to stderr when --json owns stdout."""

    def __init__(self, quiet: bool, as_json: bool, total: int | None) -> None:
        from tqdm import tqdm

        self.quiet, self.out = quiet, sys.stderr if as_json else sys.stdout
        self.bar = None if quiet else tqdm(total=total, unit="step", file=sys.stderr,
                                           dynamic_ncols=True, leave=False)

    def step(self, progress) -> None:
        if self.bar is not None:
            self.bar.update(progress.step - self.bar.n)

    def log(self, r: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{r['loss']:.3f}", ppl=f"{r['ppl']:.2f}",
                                 tok_s=f"{r['tokens_per_s']:.0f}", gnorm=f"{r['grad_norm']:.2f}",
                                 refresh=False)

    def eval(self, r: dict) -> None:
        if self.quiet or "val_ppl" not in r:
            return
        line = (f"step {r['step']:>6} | epoch {r['epoch']:>4} | val loss {r['val_loss']:.4f} "
                f"| val ppl {r['val_ppl']:.3f}{' *' if r.get('best') else ''}")
        self.write(line + (f"\n    {r['sample']!r}" if r.get("sample") else ""))

    def recovery(self, r: dict) -> None:
        """One line per divergence-guard recovery, even with --quiet (it changes the run)."""
        self.write(f"step {r['step']:>6} | diverging: {r['reason']}; back to step "
                   f"{r['restored_step']} at lr {r['lr']:.3g} (recovery {r['recovery']} of "
                   f"{r['retries']})")

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_training(session, args, reporter: _Reporter) -> dict:
    from seqlm.run import finish, hooks_for

    caught: list[int] = []

    def on_signal(signum, frame):
        # A second Ctrl-C stops at once; under torchrun the second is torchrun forwarding the
        # first (it kills the ranks itself if they do not stop).
        if caught and not session.dist.enabled:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in EXIT_ON_SIGNAL}
    start = time.perf_counter()
    try:
        hooks = hooks_for(session, on_log=reporter.log, on_eval=reporter.eval,
                          on_step=reporter.step, should_stop=lambda: bool(caught),
                          on_recovery=reporter.recovery)
        session.trainer.run(hooks)
    except RuntimeError as exc:  # a collective failed: another rank died
        lost = session.dist.lost_peer(exc)
        if lost is None:
            raise
        raise lost from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reporter.close()
    summary = finish(session, time.perf_counter() - start)
    summary["exit_status"] = EXIT_ON_SIGNAL[caught[0]] if caught else 0
    return summary


def cmd_train(args) -> int:
    from seqlm import distributed
    from seqlm.run import RunSession

    if args.nproc is not None:
        _check_nproc(args.nproc)
        if args.nproc > 1:
            return _launch(args)
    is_main = distributed.from_env().is_main  # only rank 0 creates and writes the run
    if args.resume:
        flags = {**given(args, DataConfig), **given(args, ModelConfig), **given(args, TrainConfig)}
        session = RunSession.reopen(args.resume, flags, is_main=is_main)
    else:
        data, model_fields, train = resolve_configs(args)
        session = RunSession.start(_default_out(args, model_fields), data, model_fields, train,
                                   preset=args.preset, overwrite=args.overwrite,
                                   is_main=is_main)
    quiet = args.quiet or not is_main
    reporter = _Reporter(quiet, args.json, session.trainer.total_steps)
    if not quiet:
        _print_start(session, reporter)
    try:
        summary = run_training(session, args, reporter)
    finally:
        distributed.shutdown()  # python -m seqlm then ends a rank with exit_process
    if is_main:
        _print_summary(summary, args, reporter)
    return summary["exit_status"]


def _check_nproc(nproc: int) -> None:
    world = os.environ.get("WORLD_SIZE")
    if nproc < 1:
        raise ConfigError(f"--nproc must be a positive number of processes, got {nproc}")
    if world is not None and nproc != int(world):
        raise ConfigError(f"--nproc {nproc} under torchrun, which started {world} processes; "
                          "drop --nproc (torchrun's --nproc-per-node sets the count)")


def _launch(args) -> int:
    """``seqlm train --nproc N``: checks what it can, then runs this command without
    ``--nproc`` under torchrun; a failed rank becomes one DistributedError."""
    from seqlm.distributed import Dist, launch
    from seqlm.run import RunDir, budget_overrides

    if args.resume:
        run = RunDir.open(args.resume)
        saved = run.read_config()
        budget_overrides(saved, {**given(args, DataConfig), **given(args, ModelConfig),
                                 **given(args, TrainConfig)})
        batch_size, out = saved["data"]["batch_size"], run.path
    else:
        data, model_fields, _ = resolve_configs(args)
        out = _default_out(args, model_fields)
        RunDir.check_available(out, overwrite=args.overwrite)
        batch_size = data.batch_size
    Dist(world_size=args.nproc).check_batch_size(batch_size)
    return launch(["train", *_rank_flags(args, out)], args.nproc, run_dir=out)


def _rank_flags(args, out: Path) -> list[str]:
    """The flags every rank gets: this command's, with the run directory fixed."""
    flags = ["--resume", str(args.resume)] if args.resume else ["--out", str(out)]
    flags += [f"--{name}" for name in ("overwrite", "quiet", "json") if getattr(args, name)]
    for name in ("preset", "config"):
        if getattr(args, name):
            flags += [f"--{name}", getattr(args, name)]
    values = {**given(args, DataConfig), **given(args, ModelConfig), **given(args, TrainConfig)}
    for name, value in values.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags += [f"--{flag}", "none" if value is None else str(value)]
    return flags


def _print_start(session, reporter: _Reporter) -> None:
    c, b = session.corpus, session.baselines
    sizes = ", ".join(f"{k} {len(v):,}" + (f" (OOV {c.oov_rate[k]:.2%})" if c.oov_rate.get(k)
                                           else "") for k, v in c.splits.items())
    n_params = sum(p.numel() for p in session.trainer.model.parameters())
    reporter.write(f"corpus {session.data.corpus}: {session.data.tokenizer} tokens, vocabulary "
                   f"{c.vocab_size:,}; {sizes}")
    world = session.dist.world_size
    where = f"{world} processes on {session.device.type}" if world > 1 else session.device
    cfg = session.model_cfg
    engine = ", hand-written BPTT" if cfg.impl == "scratch" and cfg.bptt_engine == "manual" else ""
    output = f", adaptive softmax (cutoffs {cfg.cutoffs})" if cfg.output == "adaptive" else ""
    reporter.write(f"model {cfg.cell}/{cfg.impl}{engine}{output}, "
                   f"{n_params:,} parameters, on {where}; run {session.run.path}")
    if session.recipe:
        m, chosen = session.recipe["measured"], session.recipe["chosen"]
        budget = f" in {m['budget']:g} s" if m["budget"] else ""
        epochs = f"{m['epochs']:.1f} epochs{budget}" if m["epochs"] else "no budget"
        reporter.write(f"recipe: {m['train_tokens_per_s']:,.0f} tokens/s measured, "
                       f"{epochs}: " + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    reporter.write(f"baselines on {b['split']}: unigram ppl {b['unigram']['ppl']:.3f}, "
                   f"bigram ppl {b['bigram']['ppl']:.3f} (add-k, k={b['bigram']['k']})")


def _print_summary(summary: dict, args, reporter: _Reporter) -> None:
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    out = reporter.out
    train, val, base = summary["train"], summary["val"], summary["baselines"]
    print(f"stopped: {summary['stop_reason']} after {summary['steps']:,} steps, "
          f"{summary['tokens']:,} tokens, {summary['wall_s']:.1f} s, "
          f"{summary['tokens_per_s']:,.0f} tokens/s", file=out)
    if train:
        print(f"train perplexity {train['ppl']:.3f}", file=out)
    if val:
        print(f"validation perplexity {val['ppl']:.3f} ({val['bits']:.3f} bits/token); bigram "
              f"baseline {base['bigram']['ppl']:.3f}, unigram {base['unigram']['ppl']:.3f}",
              file=out)
    best = summary.get("best_val")
    if best and val:
        print(f"best validation perplexity {best['ppl']:.3f} at step {best['step']:,} "
              f"(checkpoints/best; generate and evaluate use it, --last picks the final "
              "weights)", file=out)
    if summary.get("sample"):
        print(f"\n{summary['sample']}\n", file=out)
    print(f"run: {summary['run']}  (seqlm generate {summary['run']} --prefix ...)", file=out)


def cmd_reproduce(args) -> int:
    from seqlm.run import RunSession

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be a positive integer, got {args.epochs}")
    rows = {}
    for name in BOOK_PERPLEXITY:
        values = preset(name)
        if args.epochs:
            values["epochs"] = args.epochs
        sections = split_overrides(values, SECTIONS, skip=SKIP)
        session = RunSession.start(Path(args.out) / name, DataConfig(**sections["data"]),
                                   sections["model"], TrainConfig(**sections["train"]),
                                   preset=name, overwrite=args.overwrite)
        reporter = _Reporter(args.quiet, True, session.trainer.total_steps)
        summary = run_training(session, args, reporter)
        rows[name] = {"train_ppl": summary["train"]["ppl"], "book_ppl": BOOK_PERPLEXITY[name],
                      "val_ppl": summary["val"]["ppl"] if summary["val"] else None,
                      "tokens_per_s": summary["tokens_per_s"], "seconds": summary["wall_s"],
                      "sample": summary["sample"], "run": summary["run"]}
        if summary["exit_status"]:
            break
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'preset':<20} {'train ppl':>9} {'book':>5} {'val ppl':>8} {'tokens/s':>10} "
          f"{'seconds':>8}")
    for name, r in rows.items():
        val = f"{r['val_ppl']:.2f}" if r["val_ppl"] else "-"
        print(f"{name:<20} {r['train_ppl']:>9.2f} {r['book_ppl']:>5.1f} {val:>8} "
              f"{r['tokens_per_s']:>10,.0f} {r['seconds']:>8.1f}")
    for name, r in rows.items():
        print(f"\n{name}: {r['sample']}")
    return 0
