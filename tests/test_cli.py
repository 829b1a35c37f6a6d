"""End-to-end: the real command line in subprocesses, as a user runs it.

Each command runs in a process of its own, forked from one that imported seqlm and torch once
(tests/forkrun.py: the same ``python -m seqlm``, without paying the imports each time); a
command that reads standard input starts a fresh interpreter.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TEXT
from forkrun import Runner

pytestmark = pytest.mark.slow  # every test runs the command line in processes of its own

# --adapt "": these runs test the command line, not the recipe (tests/test_recipe.py and
# tests/test_replan.py run it end to end), so they skip its probe of a few seconds each.
TINY_TRAIN = ["--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "4",
              "--num-steps", "8", "--max-steps", "12", "--eval-every", "6", "--log-every", "3",
              "--sample-tokens", "10", "--split", "0.8,0.2,0", "--adapt", ""]


_runner: Runner | None = None


@pytest.fixture(scope="module", autouse=True)
def forked(tmp_path_factory):
    global _runner
    _runner = Runner(tmp_path_factory.mktemp("cli-streams"),
                     {**os.environ, "PYTHONWARNINGS": "ignore"})
    yield
    _runner.close()
    _runner = None


def seqlm(*args, cwd=None, env=None, check=True, stdin=None):
    argv, env = [str(a) for a in args], {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    if stdin is None and _runner is not None:
        done = _runner.run(argv, Path(cwd or os.getcwd()), env)
        proc = subprocess.CompletedProcess(argv, done.rc, done.stdout, done.stderr)
    else:
        proc = subprocess.run([sys.executable, "-m", "seqlm", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, input=stdin, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_stats_time_machine_letters_char_vocab_is_28(data_env):
    out = json.loads(seqlm("stats", "--corpus", "timemachine", "--clean", "letters",
                           "--tokenizer", "char", "--json").stdout)
    assert out["vocab_size"] == 28 and out["tokens"] == 173_428


def test_stats_word_level_reports_token_and_type_counts(data_env, tmp_path):
    proc = seqlm("stats", "--corpus", "timemachine", "--clean", "letters", "--tokenizer", "word",
                 "--plot", tmp_path / "zipf.png")
    assert "32,775 word tokens, vocabulary 4,580" in proc.stdout
    assert (tmp_path / "zipf.png").is_file()
    again = seqlm("stats", "--corpus", "timemachine", "--plot", tmp_path / "zipf.png",
                  check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_train_generate_evaluate_round_trip(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    run = tmp_path / "run"
    summary = json.loads(seqlm("train", "--corpus", corpus, "--out", run, "--cell", "gru",
                               *TINY_TRAIN, "--json").stdout)
    assert summary["steps"] == 12 and summary["stop_reason"] == "max_steps"
    assert summary["val"]["ppl"] > 1 and summary["baselines"]["bigram"]["ppl"] > 1
    for name in ("config.json", "metrics.jsonl", "curves.png", "samples.txt",
                 "checkpoints/last/model.safetensors", "checkpoints/best/vocab.json"):
        assert (run / name).is_file(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"step", "tokens", "loss", "ppl", "grad_norm", "lr", "tokens_per_s"} <= set(train[0])
    gen = json.loads(seqlm("generate", run, "--prefix", "the time", "--max-new-tokens", "20",
                           "--seed", "3", "--json").stdout)
    assert gen["samples"][0].startswith("the time") and len(gen["samples"][0]) >= 28
    again = json.loads(seqlm("generate", run, "--prefix", "the time", "--max-new-tokens", "20",
                             "--seed", "3", "--json").stdout)
    assert again == gen
    ev = json.loads(seqlm("evaluate", run, "--split", "val", "--json").stdout)
    assert ev["tokens"] > 0 and ev["ppl"] == pytest.approx(summary["val"]["ppl"], rel=0.05)
    streamed = seqlm("generate", run / "checkpoints" / "last", "--prefix", "the zzz",
                     "--max-new-tokens", "5")
    assert streamed.stdout.startswith("the zzz") and "warning" in streamed.stderr


def test_train_with_the_chapters_random_start_sampling_and_resume_it(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    run = tmp_path / "run"
    summary = json.loads(seqlm("train", "--corpus", corpus, "--out", run, *TINY_TRAIN,
                               "--sampler", "random-start", "--json").stdout)
    assert summary["steps"] == 12 and math.isfinite(summary["val"]["ppl"])
    assert json.loads((run / "config.json").read_text())["data"]["sampler"] == "random-start"
    resumed = json.loads(seqlm("train", "--resume", run, "--max-steps", "15", "--json").stdout)
    assert resumed["steps"] == 15  # the saved config's sampler loads back


def test_existing_run_is_not_overwritten_and_resume_continues(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    run = tmp_path / "run"
    seqlm("train", "--corpus", corpus, "--out", run, *TINY_TRAIN, "--quiet")
    before = (run / "checkpoints/last/model.safetensors").read_bytes()
    clash = seqlm("train", "--corpus", corpus, "--out", run, *TINY_TRAIN, check=False)
    assert clash.returncode == 2 and "--overwrite" in clash.stderr
    assert (run / "checkpoints/last/model.safetensors").read_bytes() == before
    wrong = seqlm("train", "--resume", run, "--hidden-size", "32", check=False)
    assert wrong.returncode == 2 and "contradicts" in wrong.stderr
    out = json.loads(seqlm("train", "--resume", run, "--max-steps", "15", "--quiet",
                           "--json").stdout)
    assert out["steps"] == 15


def test_stdin_corpus_and_prepare(tmp_path):
    prep = tmp_path / "prep"
    seqlm("prepare", prep, "--corpus", "-", "--tokenizer", "word", stdin=TINY_TEXT)
    assert (prep / "train.npy").is_file() and (prep / "corpus.json").is_file()
    out = json.loads(seqlm("train", "--corpus", prep, "--out", tmp_path / "r", *TINY_TRAIN,
                           "--json").stdout)
    assert out["vocab_size"] < 100 and out["steps"] == 12


def test_bad_flag_is_one_line_exit_2():
    proc = seqlm("train", "--num-steps", "0", check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--num-steps" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bptt_diagnostics_and_compare(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    out = json.loads(seqlm("bptt", "--corpus", corpus, "--hidden-size", "8", "--steps", "12",
                           "--batch-size", "2", "--truncation-error", "--plot",
                           tmp_path / "g.png", "--json").stdout)
    curve = out["curves"]["model"]
    assert len(curve["grad_norm"]) == 12 and curve["jacobian_norm"][0] == 1.0
    assert [r["tau"] for r in out["truncation_error"]] == [1, 2, 4, 8]
    assert out["truncation_error"][-1]["rel_error"] < out["truncation_error"][0]["rel_error"]
    assert (tmp_path / "g.png").is_file()
    for name, trunc in (("a", "window"), ("b", "tau:3")):
        seqlm("train", "--corpus", corpus, "--out", tmp_path / name, "--cell", "rnn",
              "--impl", "scratch", "--truncation", trunc, *TINY_TRAIN, "--quiet")
    cmp = json.loads(seqlm("compare", tmp_path / "a", tmp_path / "b", "--plot",
                           tmp_path / "c.png", "--json").stdout)
    assert set(cmp["runs"]) == {"a", "b"} and (tmp_path / "c.png").is_file()


@pytest.mark.slow
def test_bptt_sweep_shows_both_explosion_and_vanishing(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    out = json.loads(seqlm("bptt", "--corpus", corpus, "--hidden-size", "8", "--steps", "40",
                           "--batch-size", "2", "--sweep", "--plot", tmp_path / "g.png",
                           "--json", env={"OMP_NUM_THREADS": "1"}).stdout)  # tiny tensors
    growth = {name: c["grad_norm"][-1] / c["grad_norm"][0] for name, c in out["curves"].items()}
    assert max(growth.values()) >= 10, growth  # a gradient that explodes through time
    assert min(growth.values()) <= 1 / 100, growth  # and one that vanishes
    assert growth["rnn-linear-rho1.5"] >= 10 and growth["rnn-linear-rho0.5"] <= 1 / 100
    linear = out["curves"]["rnn-linear-rho1.5"]
    assert abs(linear["slope"] - math.log(1.5)) < 0.03 and linear["rho"] == 1.5


def test_sigterm_saves_last_and_exits_143(tmp_path):
    import signal
    import time

    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "seqlm", "train", "--corpus", str(corpus), "--out", str(run),
            "--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "4", "--num-steps",
            "8", "--time-budget", "120", "--eval-every", "0", "--log-every", "1", "--quiet",
            "--split", "0.8,0.2,0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    state = json.loads((run / "checkpoints" / "last" / "trainer.json").read_text())
    assert state["progress"]["step"] >= 1 and state["progress"]["stop_reason"] == "interrupted"
