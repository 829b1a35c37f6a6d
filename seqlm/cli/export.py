"""``seqlm export``: write a trained model as ONNX graphs plus its vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from seqlm.runtime.format import export_dir

FORMATS = ("onnx",)


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as ONNX graphs for onnxruntime (no torch "
                       "needed to run them)")
    p.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="what to write")
    p.add_argument("--out", default=None, help="directory to create (default: RUN/onnx for a "
                   "run, CHECKPOINT-onnx beside a checkpoint directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export there")
    p.add_argument("--no-check", action="store_true", help="skip running the graphs with "
                   "onnxruntime against torch")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from seqlm.export import export_onnx

    out = Path(args.out) if args.out else export_dir(args.checkpoint)
    report = export_onnx(args.checkpoint, out, overwrite=args.overwrite,
                         check=not args.no_check)
    if args.json:
        print(json.dumps({"out": str(report.out), "format": args.format, "files": report.files,
                          "max_abs_diff": report.max_abs_diff}))
        return 0
    checked = ", ".join(f"{k} {v:.1e}" for k, v in report.max_abs_diff.items())
    print(f"exported {args.checkpoint} to {report.out}: {', '.join(report.files)}"
          + (f"; onnxruntime vs torch, max |logits difference|: {checked}" if checked else ""))
    print(f"generate without torch: seqlm generate {report.out}")
    return 0
