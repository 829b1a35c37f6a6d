"""One generation stream on the torch backend against onnxruntime: tokens/s and peak memory.

The model has the default architecture (``ModelConfig`` defaults: a one-layer scratch RNN,
256 hidden units, one-hot input) over the builtin corpus's character vocabulary, with random
weights (speed and memory do not depend on the weights' values); ``--model cpu-fast`` takes
the ``cpu-fast`` preset's GRU instead. It is saved as a checkpoint and exported with
:func:`seqlm.export.export_onnx`. Each backend then runs in a fresh interpreter, so that its
peak resident memory (``ru_maxrss``) counts only what that backend imports and holds:

* ``torch``: ``seqlm.load(ckpt).generate`` (:func:`seqlm.generate.generate`; one float32
  stream on the CPU steps through the numpy stepper);
* ``onnx``: ``seqlm.runtime.load(export).generate`` (``step.onnx`` in onnxruntime, torch
  never imported): as loaded by default (the step on one thread), and with onnxruntime's
  own default of one thread per core (``onnx-ort-threads``).

Each generates ``--tokens`` tokens greedily from a short prefix, ``--repeats`` times after
one warm-up call; the best time counts. Usage::

    python benchmarks/onnx_runtime.py --tokens 2000 --repeats 5 [--model cpu-fast] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "the time traveller "
BACKENDS = {"torch": ("torch", None), "onnx": ("onnx", None), "onnx-ort-threads": ("onnx", 0)}


def build(directory: Path, model: str) -> tuple[Path, Path]:
    """Save a random-weight model of the chosen architecture and export it."""
    import torch

    from seqlm.checkpoint import save_checkpoint
    from seqlm.config import preset
    from seqlm.export import export_onnx
    from seqlm.models import RNNLM, ModelConfig
    from seqlm.text import read_corpus
    from seqlm.tokenize import fit_tokenizer

    tokenizer = fit_tokenizer("char", read_corpus("builtin"))
    fields = {}
    if model == "cpu-fast":
        names = ModelConfig.__dataclass_fields__
        fields = {k: v for k, v in preset("cpu-fast").items() if k in names}
    torch.manual_seed(0)
    net = RNNLM(ModelConfig(vocab_size=len(tokenizer.vocab), **fields))
    save_checkpoint(directory / "ckpt", net, tokenizer)
    export_onnx(directory / "ckpt", directory / "onnx")
    return directory / "ckpt", directory / "onnx"


def child(backend: str, threads: int | None, path: str, tokens: int, repeats: int) -> dict:
    """Runs in the fresh interpreter: load, warm up, time, report."""
    start = time.perf_counter()
    if backend == "torch":
        import seqlm

        lm = seqlm.load(path)
    else:
        import seqlm.runtime

        lm = seqlm.runtime.load(path, threads=threads)
    loaded = time.perf_counter() - start
    lm.generate(PREFIX, max_new_tokens=50)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        lm.generate(PREFIX, max_new_tokens=tokens)
        best = min(best, time.perf_counter() - t)
    return {"tokens_per_s": tokens / best, "load_s": loaded, "peak_rss_mb": peak_rss_mb(),
            "torch_imported": "torch" in sys.modules}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, whereas
    ``ru_maxrss`` keeps the forking parent's peak (the fallback elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(model: str, tokens: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqlm-bench-onnx-") as tmp:
        ckpt, onnx = build(Path(tmp), model)
        results = {}
        for name, (backend, threads) in BACKENDS.items():
            path = ckpt if backend == "torch" else onnx
            code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
                    f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import onnx_runtime; "
                    f"print(json.dumps(onnx_runtime.child({backend!r}, {threads!r}, "
                    f"{str(path)!r}, {tokens}, {repeats})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True)
            results[name] = json.loads(out.stdout.splitlines()[-1])
    return {"model": model, "tokens": tokens, "repeats": repeats, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", choices=["default", "cpu-fast"])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.model, args.tokens, args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model} model, one stream, {args.tokens} greedy tokens, best of {args.repeats}")
    print(f"{'backend':<15}{'tokens/s':>10}{'peak RSS MB':>13}{'load s':>8}  torch imported")
    for name, r in report["results"].items():
        print(f"{name:<15}{r['tokens_per_s']:>10,.0f}{r['peak_rss_mb']:>13.0f}"
              f"{r['load_s']:>8.2f}  {r['torch_imported']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
