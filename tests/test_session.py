"""seqlm.train, the one call that trains from Python, and the run it opens (seqlm.session)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import seqlm
from seqlm.cli import main
from seqlm.errors import ConfigError
from seqlm.session import open_session, stop_requests

ROOT = str(Path(seqlm.__file__).resolve().parents[1])
TINY = {"max_steps": 6, "eval_every": 3, "hidden_size": 16, "embedding_dim": 8,
        "batch_size": 4, "num_steps": 8, "split": "0.8,0.2,0", "adapt": "", "threads": 1,
        "sample_tokens": 5}


def test_train_returns_the_model_seqlm_load_gives_with_the_run_summary(tiny_corpus, tmp_path,
                                                                      capsys):
    lm = seqlm.train(tiny_corpus, out=tmp_path / "run", progress=False, **TINY)
    assert isinstance(lm, seqlm.LanguageModel) and lm.checkpoint == "best"
    assert capsys.readouterr().out == ""  # progress=False shows nothing
    assert lm.summary["steps"] == 6 and lm.summary["stop_reason"] == "max_steps"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 16 and saved["preset"] is None
    assert (tmp_path / "run" / "checkpoints" / "last").is_dir()
    assert lm.generate("the time", max_new_tokens=5, seed=0).startswith("the time")
    # its validation perplexity is what `seqlm evaluate` reads off the run
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint_step"] == lm.summary["best_val"]["step"]
    assert report["ppl"] == pytest.approx(lm.summary["best_val"]["ppl"], rel=1e-9)


def test_a_run_from_python_resumes_on_the_command_line(tiny_corpus, tmp_path, capsys):
    seqlm.train(tiny_corpus, out=tmp_path / "run", progress=False, **TINY)
    assert main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "9", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 9 and summary["stop_reason"] == "max_steps"


def test_progress_shows_the_run_lines(tiny_corpus, tmp_path, capsys):
    seqlm.train(tiny_corpus, out=tmp_path / "run", **TINY)
    out = capsys.readouterr().out
    assert out.startswith("corpus ") and "val ppl" in out and "stopped: max_steps" in out


def test_bad_settings_raise_the_library_error_naming_them(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="`hidden_size` must be a positive integer"):
        seqlm.train(tiny_corpus, out=tmp_path / "a", hidden_size=0)
    with pytest.raises(ConfigError, match="unknown setting 'hiden_size'"):
        seqlm.train(tiny_corpus, out=tmp_path / "b", hiden_size=8)
    with pytest.raises(ConfigError, match="`vocab_size` is not a setting"):
        seqlm.train(tiny_corpus, out=tmp_path / "c", vocab_size=8)
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing left behind


def test_an_interrupt_saves_last_and_returns_what_was_trained(tiny_corpus, tmp_path):
    def interrupt(progress):  # a notebook's interrupt arrives as SIGINT in the main thread
        if progress.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    session = open_session(tiny_corpus, out=tmp_path / "run", **{**TINY, "max_steps": 50})
    with stop_requests() as received:
        summary = session.fit(on_step=interrupt, should_stop=lambda: bool(received()))
    assert summary["stop_reason"] == "interrupted" and 2 <= summary["steps"] < 50
    assert received() == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_stop_requests_installs_nothing_outside_the_main_thread():
    seen = []

    def worker():
        with stop_requests() as received:
            seen.append(received())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [None]


@pytest.mark.slow
def test_train_in_a_fresh_interpreter_imports_torch_only_when_called(tiny_corpus, tmp_path):
    code = ("import sys, seqlm; assert 'torch' not in sys.modules; "
            f"lm = seqlm.train({str(tiny_corpus)!r}, out={str(tmp_path / 'run')!r}, "
            f"progress=False, **{TINY!r}); print(lm.summary['steps'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"
