"""``seqlm bench``: training, generation and encoding throughput against the baselines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seqlm.cli.flags import add_config_flags, given
from seqlm.errors import ConfigError


def register(sub) -> None:
    from seqlm.bench import BenchConfig

    p = sub.add_parser("bench", help="tokens/s of every path against the textbook baseline "
                       "and the GEMM roofline (about 3 minutes; --quick under 1)")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, a 10 MB text, no bf16 or memory columns")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="JSON", help="also write the JSON report to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_config_flags(p, BenchConfig, title="benchmark")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args) -> int:
    from seqlm.bench import BenchConfig, format_report, run_bench

    fields = given(args, BenchConfig)
    cfg = BenchConfig.quick(**fields) if args.quick else BenchConfig(**fields)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite or choose another "
                          "path")
    report = run_bench(cfg, on_progress=lambda line: print(f"bench: {line}", file=sys.stderr,
                                                           flush=True))
    if out is not None:
        try:
            out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot write ({exc.strerror}); choose a writable "
                              "path") from None
    print(json.dumps(report) if args.json else format_report(report))
    return 0
