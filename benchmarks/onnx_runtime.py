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

The processes run side by side, idle but for the generation each is asked for in turn:
``--rounds`` rounds of ``--tokens`` greedy tokens from a short prefix, after one warm-up
call, the backends interleaved within each round; tokens/s is each backend's median over the
rounds and ``x torch`` the median of the per-round ratios. Usage::

    python benchmarks/onnx_runtime.py --tokens 2000 --rounds 10 [--model cpu-fast] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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
    from seqlm.presets import preset
    from seqlm.export import export_onnx
    from seqlm.config import ModelConfig
    from seqlm.models import RNNLM
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


def child(backend: str, threads: int | None, path: str) -> None:
    """The fresh interpreter's loop: load, warm up, then answer each line of stdin
    (``N``: generate N tokens and print the seconds; EOF: print the report and exit)."""
    start = time.perf_counter()
    if backend == "torch":
        import seqlm

        lm = seqlm.load(path)
    else:
        import seqlm.runtime

        lm = seqlm.runtime.load(path, threads=threads)
    loaded = time.perf_counter() - start
    lm.generate(PREFIX, max_new_tokens=50)
    print("ready", flush=True)
    for line in sys.stdin:
        t = time.perf_counter()
        lm.generate(PREFIX, max_new_tokens=int(line))
        print(time.perf_counter() - t, flush=True)
    print(json.dumps({"load_s": loaded, "peak_rss_mb": peak_rss_mb(),
                      "torch_imported": "torch" in sys.modules}), flush=True)


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


def _start(backend: str, threads: int | None, path: Path) -> subprocess.Popen:
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(Path(__file__).parent)!r}]; "
            f"import onnx_runtime; onnx_runtime.child({backend!r}, {threads!r}, {str(path)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {backend} process did not start")
    return proc


def run(model: str, tokens: int, rounds: int) -> dict:
    """All backends' processes at once, timed in turn round after round (A B C A B C ...),
    so that a machine drifting between fast and slow phases shifts all of them alike."""
    with tempfile.TemporaryDirectory(prefix="seqlm-bench-onnx-") as tmp:
        ckpt, onnx = build(Path(tmp), model)
        procs = {name: _start(backend, threads, ckpt if backend == "torch" else onnx)
                 for name, (backend, threads) in BACKENDS.items()}
        times: dict[str, list[float]] = {name: [] for name in procs}
        for _ in range(rounds):
            for name, proc in procs.items():
                proc.stdin.write(f"{tokens}\n")
                proc.stdin.flush()
                times[name].append(float(proc.stdout.readline()))
        results = {}
        for name, proc in procs.items():
            out, _ = proc.communicate()
            rates = [tokens / t for t in times[name]]
            ratios = [a / b for a, b in zip(times["torch"], times[name])]
            results[name] = {**json.loads(out.strip().splitlines()[-1]),
                             "tokens_per_s": statistics.median(rates),
                             "tokens_per_s_range": [min(rates), max(rates)],
                             "x_torch": statistics.median(ratios)}
    return {"model": model, "tokens": tokens, "rounds": rounds, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", choices=["default", "cpu-fast"])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.model, args.tokens, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model} model, one stream, {args.tokens} greedy tokens, median of "
          f"{args.rounds} interleaved rounds")
    print(f"{'backend':<18}{'tokens/s':>10}{'x torch':>9}{'peak RSS MB':>13}{'load s':>8}"
          "  torch imported")
    for name, r in report["results"].items():
        print(f"{name:<18}{r['tokens_per_s']:>10,.0f}{r['x_torch']:>9.2f}"
              f"{r['peak_rss_mb']:>13.0f}{r['load_s']:>8.2f}  {r['torch_imported']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
