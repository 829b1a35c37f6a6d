"""Shared fixtures: the shared Time Machine copy (tests skip cleanly without it), small
corpora, and a torch thread count that keeps the suite fast on two cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The suite starts ~60 fresh interpreters (the command line, torchrun, the notebook's kernel,
# a pytest inside the GPU check's dry run). Where PYTHONDONTWRITEBYTECODE is set, as in some CI
# images, each of them compiles seqlm from source again: about 0.9 s of the 3 s a
# `python -m seqlm` takes here. They keep the bytecode instead (__pycache__ is ignored by git).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

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


# A short Chinese text written for these tests (not from any book): full-width brackets and
# quotes, several sentences per line, for the playground's Chinese run.
TINY_TEXT_ZH = (
    "海边有一座白色的灯塔，守塔的老人每天傍晚都会爬上一百二十级台阶，把灯点亮。"
    "他的孙女小梅问他：「爷爷，灯为什么要一直亮着？」老人笑着说：「因为夜里还有船在回家。」"
    "小梅在笔记本上写下《灯塔日记》四个字，又在旁边画了一条小船（船上坐着一只猫）。"
    "第二天早上起了大雾，渔船都停在港口里，谁也看不清远处的礁石。"
    "老人说：“雾散之前，我们只能等。”小梅就坐在窗边数海鸥，一只、两只、三只……"
    "中午的时候，风从北边吹来，雾慢慢变薄了，太阳像一枚铜钱挂在天上。"
    "渔民们收拾好渔网，一艘接一艘地出海；小梅跑到礁石上挥手，喊着：「早点回来！」\n"
) * 8


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
