"""benchmarks/gpu_check.py, the prepared check of the CUDA path, as a dry run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_as_a_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["failed"] == []
    assert report["tests"]["returncode"] == 0
    assert all(report["parity"][cell]["ok"] for cell in ("rnn", "gru", "lstm"))
    assert report["recipe"]["steps"] > 0 and report["recipe"]["best_val_ppl"] > 1
    assert {row["section"] for row in report["throughput"]["rows"]} == {"generate"}


@pytest.mark.slow
def test_without_cuda_the_real_check_says_where_to_run_it():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert done.stderr.count("\n") == 1
