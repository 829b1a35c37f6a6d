"""The prepared check of seqlm's CUDA path, in one call of under 5 minutes on a lent GPU.

1. **environment**: torch, CUDA, cuDNN and the device;
2. **tests**: the test files whose device-aware tests run on CUDA when it is there;
3. **parity**: cuDNN's fused RNN/GRU/LSTM against the chapter's scratch cores on the device,
   the same weights: outputs, final states and gradients;
4. **recipe**: ``cpu-fast`` as ``seqlm.train`` runs it, on the device, for ``--budget`` seconds
   on The Time Machine (or the built-in corpus): what the recipe measured and chose, the best
   validation perplexity, tokens/s;
5. **throughput**: ``seqlm bench --quick`` on the device (training and generation paths).

Usage::

    python benchmarks/gpu_check.py --out gpu-check.json      # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                 # on the CPU: every step, tiny

``--dry-run`` runs every step on the CPU with tiny sizes and a 3-second budget, so the test
suite checks that the script works where no GPU is lent (tests/test_gpu_check.py). Each step's
result (or its error, in one line) goes into the JSON report; the exit status is 1 when a step
failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_lm.py", "tests/test_minrnn.py", "tests/test_scratch.py"]


def environment(device: str) -> dict:
    out = {"torch": torch.__version__, "device": device,
           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda"):
        out.update(name=torch.cuda.get_device_name(device),
                   cudnn=torch.backends.cudnn.version(),
                   memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30,
                                   1))
    return out


def tests(dry_run: bool) -> dict:
    """The device-aware test files, in a child process (``-x``; ``-k`` narrows a dry run)."""
    files = ["tests/test_lm.py::test_resolve_device"] if dry_run else TEST_FILES
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    tail = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    return {"returncode": done.returncode, "summary": tail[0] if tail else "",
            "seconds": round(time.perf_counter() - start, 1)}


def parity(device: str, hidden: int) -> dict:
    """Max |difference| between a fused core and the scratch core holding its weights."""
    from seqlm.models import make_core

    out = {}
    for cell in ("rnn", "gru", "lstm"):
        torch.manual_seed(0)
        fused = make_core(cell, "fused", 16, hidden, 2).to(device)
        scratch = make_core(cell, "scratch", 16, hidden, 2).to(device)
        scratch.load_state_dict(fused.state_dict())
        x = torch.randn(4, 12, 16, device=device)
        diffs = []
        for core in (fused, scratch):
            xi = x.clone().requires_grad_(True)
            y, state = core(xi)
            last = state[0] if isinstance(state, tuple) else state
            (y.square().sum() + last.sum()).backward()
            diffs.append((y.detach(), last.detach(), xi.grad,
                          [p.grad for p in core.parameters()]))
        (ya, sa, ga, pa), (yb, sb, gb, pb) = diffs
        out[cell] = {"output": (ya - yb).abs().max().item(),
                     "state": (sa - sb).abs().max().item(),
                     "input_grad": (ga - gb).abs().max().item(),
                     "weight_grad": max((a - b).abs().max().item() for a, b in zip(pa, pb))}
        out[cell]["ok"] = max(out[cell].values()) < 1e-3
    return out


def recipe(device: str, budget: float, dry_run: bool) -> dict:
    """cpu-fast through ``seqlm.train`` on ``device``."""
    import seqlm
    from seqlm.errors import CorpusError
    from seqlm.text import fetch

    corpus = "builtin"
    try:
        if not dry_run:
            fetch("timemachine", timeout=5.0)  # a SEQLM_DATA copy, the cache, or a download
            corpus = "timemachine"
    except CorpusError:
        pass  # offline without a copy: the built-in corpus
    extra = {"hidden_size": 32} if dry_run else {}
    with tempfile.TemporaryDirectory(prefix="seqlm-gpu-check-") as tmp:
        if dry_run:  # a small text of this script's own words
            corpus = str(Path(tmp) / "text.txt")
            Path(corpus).write_text(" ".join(__doc__.split()) * 40, encoding="utf-8")
        lm = seqlm.train(corpus, preset="cpu-fast", time_budget=budget, device=device,
                         out=Path(tmp) / "run", progress=False, sample_tokens=0, **extra)
        summary = lm.summary
        config = json.loads((Path(tmp) / "run" / "config.json").read_text())
    return {"corpus": corpus, "budget": budget, "steps": summary["steps"],
            "tokens_per_s": round(summary["tokens_per_s"]),
            "best_val_ppl": summary["best_val"]["ppl"] if summary["best_val"] else None,
            "bigram_ppl": summary["baselines"]["bigram"]["ppl"],
            "recipe": config.get("recipe", {}).get("chosen"),
            "model": {k: config["model"][k] for k in ("cell", "impl", "hidden_size",
                                                       "num_layers", "dropout")}}


def throughput(device: str, dry_run: bool) -> dict:
    """``seqlm bench --quick`` on ``device``, in a child process."""
    cmd = [sys.executable, "-m", "seqlm", "bench", "--quick", "--json", "--device",
           "cpu" if dry_run else device]
    if dry_run:
        cmd += ["--sections", "generate", "--gen-tokens", "20", "--gen-rounds", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                           else f"exit status {done.returncode}")
    report = json.loads(done.stdout)
    rows = []
    for section in ("train", "generate"):
        for block in report.get(section, []):
            for row in block.get("paths", []):
                rows.append({"section": section, "workload": block["workload"]["name"],
                             "path": row["path"], "tokens_per_s": row.get("tokens_per_s")})
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny")
    p.add_argument("--budget", type=float, default=95.0, help="seconds of the recipe's run")
    p.add_argument("--out", help="write the JSON report here too")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device here; run it on the GPU machine, or --dry-run "
              "on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    budget = 3.0 if args.dry_run else args.budget
    steps = {"environment": lambda: environment(device),
             "tests": lambda: tests(args.dry_run),
             "parity": lambda: parity(device, 8 if args.dry_run else 256),
             "recipe": lambda: recipe(device, budget, args.dry_run),
             "throughput": lambda: throughput(device, args.dry_run)}
    report, failed = {"dry_run": args.dry_run}, []
    for name, step in steps.items():
        start = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            report[name] = step()
        except Exception as exc:  # a failed step is reported; the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                            "where": traceback.format_exc().strip().splitlines()[-3:]}
            failed.append(name)
        report[name + "_seconds"] = round(time.perf_counter() - start, 1)
    if isinstance(report.get("tests"), dict) and report["tests"].get("returncode"):
        failed.append("tests")
    if isinstance(report.get("parity"), dict) and not all(
            v.get("ok") for v in report["parity"].values() if isinstance(v, dict)):
        failed.append("parity")
    report["failed"] = failed
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
