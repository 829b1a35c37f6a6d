"""``seqlm train`` (and ``--resume``) and ``seqlm reproduce d2l``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from seqlm.cli.flags import add_config_flags, given
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.errors import EXIT_ON_SIGNAL, ConfigError
from seqlm.presets import BOOK_PERPLEXITY, PRESETS
from seqlm.settings import FROM_CORPUS


def register(sub) -> None:
    p = sub.add_parser("train", help="train a language model (no flags: the main job)")
    p.add_argument("--preset", help=f"a named preset: {', '.join(PRESETS)}")
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
    add_config_flags(p, ModelConfig, title="model", skip=(FROM_CORPUS,))
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


def _settings(args) -> dict:
    """The settings the command line gave (flags only; the preset and the file are named
    apart)."""
    return {**given(args, DataConfig), **given(args, ModelConfig), **given(args, TrainConfig)}


def _open(args, is_main: bool = True):
    from seqlm.session import open_session

    return open_session(preset=args.preset, config=args.config, out=args.out, name=args.name,
                        resume=args.resume, overwrite=args.overwrite, is_main=is_main,
                        **_settings(args))


def cmd_train(args) -> int:
    from seqlm import distributed
    from seqlm.progress import Reporter, start_lines, summary_lines
    from seqlm.session import stop_requests

    if args.resume and args.preset:
        raise ConfigError("--resume continues a run with its own settings; drop --preset")
    if args.nproc is not None:
        _check_nproc(args.nproc)
        if args.nproc > 1:
            return _launch(args)
    is_main = distributed.from_env().is_main  # only rank 0 creates and writes the run
    session = _open(args, is_main)
    quiet = args.quiet or not is_main
    reporter = Reporter(quiet=quiet, out=sys.stderr if args.json else sys.stdout,
                        total=session.trainer.total_steps)
    for line in () if quiet else start_lines(session):
        reporter.write(line)
    try:
        with stop_requests(tuple(EXIT_ON_SIGNAL), immediate=not session.dist.enabled) as got:
            summary = session.fit(**reporter.callbacks(), should_stop=lambda: bool(got()))
            summary["exit_status"] = EXIT_ON_SIGNAL[got()] if got() else 0
    finally:
        reporter.close()
        distributed.shutdown()  # python -m seqlm then ends a rank with exit_process
    if is_main:
        if args.json:
            print(json.dumps(summary, ensure_ascii=False))
        else:
            print("\n".join(summary_lines(summary)), file=reporter.out)
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
    from seqlm import settings
    from seqlm.distributed import Dist, launch
    from seqlm.session import default_out
    from seqlm.rundir import RunDir

    if args.resume:
        run = RunDir.open(args.resume)
        saved = run.read_config()
        settings.resume_budgets(saved, _settings(args))
        batch_size, out = saved["data"]["batch_size"], run.path
    else:
        chosen = settings.resolve(args.preset, args.config, _settings(args))
        out = Path(args.out) if args.out else default_out(args.name, args.preset,
                                                          chosen.model.get("cell", "rnn"))
        RunDir.check_available(out, overwrite=args.overwrite)
        batch_size = chosen.data.batch_size
    Dist(world_size=args.nproc).check_batch_size(batch_size)
    return launch(["train", *_rank_flags(args, out)], args.nproc, run_dir=out)


def _rank_flags(args, out: Path) -> list[str]:
    """The flags every rank gets: this command's, with the run directory fixed."""
    flags = ["--resume", str(args.resume)] if args.resume else ["--out", str(out)]
    flags += [f"--{name}" for name in ("overwrite", "quiet", "json") if getattr(args, name)]
    for name in ("preset", "config"):
        if getattr(args, name):
            flags += [f"--{name}", getattr(args, name)]
    for name, value in _settings(args).items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags += [f"--{flag}", "none" if value is None else str(value)]
    return flags


def cmd_reproduce(args) -> int:
    from seqlm.progress import Reporter
    from seqlm.session import open_session, stop_requests

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be a positive integer, got {args.epochs}")
    rows = {}
    for name in BOOK_PERPLEXITY:
        budget = {"epochs": args.epochs} if args.epochs else {}
        session = open_session(preset=name, out=Path(args.out) / name,
                               overwrite=args.overwrite, **budget)
        reporter = Reporter(quiet=args.quiet, out=sys.stderr, total=session.trainer.total_steps)
        try:
            with stop_requests(tuple(EXIT_ON_SIGNAL)) as got:
                summary = session.fit(**reporter.callbacks(), should_stop=lambda: bool(got()))
        finally:
            reporter.close()
        rows[name] = {"train_ppl": summary["train"]["ppl"], "book_ppl": BOOK_PERPLEXITY[name],
                      "val_ppl": summary["val"]["ppl"] if summary["val"] else None,
                      "tokens_per_s": summary["tokens_per_s"], "seconds": summary["wall_s"],
                      "sample": summary["sample"], "run": summary["run"]}
        if got():
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
