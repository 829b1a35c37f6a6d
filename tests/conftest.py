"""Shared fixtures: the shared Time Machine copy (tests skip cleanly without it), small
corpora, and a torch thread count that keeps the suite fast on two cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _data_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("SEQLM_DATA", "").split(os.pathsep) if p]
    return dirs + [SHARED_DATA]


@pytest.fixture(scope="session")
def timemachine_path() -> Path:
    for folder in _data_dirs():
        path = folder / "timemachine.txt"
        if path.is_file():
            return path
    pytest.skip("timemachine.txt not found (set SEQLM_DATA to the shared data folder)")


@pytest.fixture
def data_env(monkeypatch, timemachine_path, tmp_path):
    """SEQLM_DATA pointing at the shared data and an empty private cache."""
    monkeypatch.setenv("SEQLM_DATA", str(timemachine_path.parent))
    monkeypatch.setenv("SEQLM_CACHE", str(tmp_path / "cache"))
    return timemachine_path


TINY_TEXT = (
    "the time traveller for so it will be convenient to speak of him was expounding a "
    "recondite matter to us his grey eyes shone and twinkled and his usually pale face was "
    "flushed and animated the fire burned brightly and the soft radiance of the incandescent "
    "lights in the lilies of silver caught the bubbles that flashed and passed in our glasses\n"
) * 12


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single_thread():
    """torch on one thread for a module of tiny-tensor tests, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
