"""The documented torch-free install (runtime-requirements.txt, README "Without torch"): a
fresh virtual environment with seqlm installed without its dependencies, then numpy and
onnxruntime from the package registry, generates from an export the text torch generates.

Slow (a wheel, a venv and a download: 30-60 s with a warm pip cache); skips, saying why,
where pip cannot reach a package registry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

import seqlm  # noqa: E402
from seqlm.checkpoint import save_checkpoint  # noqa: E402
from seqlm.config import ModelConfig  # noqa: E402
from seqlm.export import export_onnx  # noqa: E402
from seqlm.models import RNNLM  # noqa: E402
from seqlm.tokenize import CharTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "runtime-requirements.txt"
TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding"


def _floors(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        found = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(>=[^;\s]+)", line)
        if found:
            out[found.group(1).lower()] = found.group(2)
    return out


def test_the_runtime_requirements_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _floors(project["dependencies"] + project["optional-dependencies"]["onnx"])
    listed = _floors(REQUIREMENTS.read_text(encoding="utf-8").splitlines())
    assert set(listed) == {"numpy", "onnxruntime", "tomli"}
    assert all(declared[name] == floor for name, floor in listed.items()), (listed, declared)


def _run(args: list, *, timeout: float, **kw) -> subprocess.CompletedProcess:
    """A command outside this interpreter's paths (PYTHONPATH would show the venv this
    checkout's seqlm, and pip would take it as installed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.mark.slow
def test_a_torch_free_environment_generates_from_an_export(tmp_path):
    wheels, venv, source = tmp_path / "wheels", tmp_path / "venv", tmp_path / "source"
    # The wheel is built from a copy, so that setuptools' build/ never lands in the checkout.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "seqlm", source / "seqlm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", wheels, source], timeout=180)
    assert built.returncode == 0, built.stderr[-2000:]
    made = _run([sys.executable, "-m", "venv", venv], timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    pip, bin_dir = [venv / "bin" / "python", "-m", "pip"], venv / "bin"
    probe = _run([*pip, "download", "--no-deps", "-q", "-d", tmp_path / "probe", "--timeout",
                  "15", "--retries", "1", "numpy"], timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach a package registry here: "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    # The documented commands: seqlm without its dependencies, then the runtime's own.
    for args in (["install", "-q", "--no-deps", *wheels.glob("seqlm-*.whl")],
                 ["install", "-q", "-r", REQUIREMENTS]):
        done = _run([*pip, *args], timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    no_torch = _run([bin_dir / "python", "-c", "import torch"], timeout=60)
    assert "No module named 'torch'" in no_torch.stderr

    torch.manual_seed(0)
    tok = CharTokenizer.fit(TEXT)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), cell="gru", hidden_size=24))
    with torch.no_grad():
        model.reference().mul_(8)  # sharper than the initial weights: a greedy path that moves
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "best", model, tok)
    export_onnx(run, run / "onnx", check=False)
    want = seqlm.load(run).generate("the t", max_new_tokens=30, temperature=0)
    for target in (run / "onnx", run):  # the export, and the run that holds it
        out = _run([bin_dir / "seqlm", "generate", target, "--prefix", "the t",
                    "--max-new-tokens", "30", "--temperature", "0"], timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.rstrip("\n") == want
    refused = _run([bin_dir / "seqlm", "train", "--corpus", "builtin"], timeout=120)
    assert refused.returncode == 2 and "needs torch" in refused.stderr
