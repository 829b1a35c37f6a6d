"""Settings chosen on the validation split, stored with the run and reused; ``seqlm evaluate
--cache/--dynamic``, where every figure says which evaluation produced it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import seqlm
from seqlm import reading_settings as rs
from seqlm.checkpoint import save_checkpoint
from seqlm.cli import main
from seqlm.config import DataConfig, ModelConfig
from seqlm.data import load_corpus
from seqlm.models import RNNLM
from seqlm.reading import Reading
from seqlm.tokenize import CharTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")  # one-row reads of tiny tensors
TEXT = ("the time traveller for so it will be convenient to speak of him was expounding a "
        "recondite matter to us his grey eyes shone and twinkled\n") * 6


@pytest.fixture(autouse=True)
def small_grids(monkeypatch):
    """Two learning rates and two decays: the choice's logic, not its reach, is tested."""
    monkeypatch.setattr(rs, "LRS", {"sgd": (0.01, 0.3), "rms": (1e-4, 1e-3)})
    monkeypatch.setattr(rs, "DECAYS", (0.0, 0.01))


def make_run(folder: Path, seed: int = 0) -> Path:
    """A run directory whose checkpoint names its corpus (split 0.6/0.2/0.2)."""
    corpus = folder / "tiny.txt"
    corpus.write_text(TEXT)
    torch.manual_seed(seed)
    tok = CharTokenizer.fit(TEXT)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), cell="gru", hidden_size=16,
                              embedding_dim=8))
    data = DataConfig(corpus=str(corpus), split="0.6,0.2,0.2")
    save_checkpoint(folder / "run" / "checkpoints" / "best", model, tok,
                    extra_config={"data": asdict(data)})
    return folder / "run"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_best_mixture_is_the_grids_lowest_loss():
    n = 6
    reading = Reading(targets=np.zeros(n, np.int64), logprobs=np.full(n, np.log(0.1)),
                      cache_logprobs=np.log(np.array([[0.01] * n, [0.9] * n])),
                      filled=np.ones(n, bool), thetas=(0.1, 1.0))
    lam, theta, loss = rs.best_mixture(reading)
    assert (lam, theta) == (max(rs.LAMBDAS), 1.0)
    assert loss == pytest.approx(-np.log((1 - lam) * 0.1 + lam * 0.9))
    useless = Reading(targets=np.zeros(n, np.int64), logprobs=np.full(n, np.log(0.1)),
                      cache_logprobs=np.full((1, n), -np.inf), filled=np.ones(n, bool),
                      thetas=(0.3,))
    assert rs.best_mixture(useless)[0] == 0.0  # the model alone wins: λ = 0


def fixed_loss(loss: float) -> Reading:
    """A reading of 4 tokens whose mean NLL is ``loss``."""
    return Reading(targets=np.zeros(4, np.int64), logprobs=np.full(4, -loss),
                   cache_logprobs=np.zeros((0, 4)), filled=np.zeros(4, bool), thetas=())


@pytest.mark.parametrize("best_lr, expected", [
    (0.027, [3e-3, 9e-3, 2.7e-2]),  # up, as far as LR_REACH allows
    (3e-3, [3e-3, 9e-3]),           # up, until the loss rises again
    (2e-5, [1e-4 / 3, 1e-4 / 9]),   # down
    (3e-4, []),                     # inside the grid: nothing more
])
def test_the_learning_rate_grid_goes_on_past_its_edge_while_the_edge_is_best(best_lr, expected):
    calls = []

    def dynamic_read(lr, decay):
        calls.append((lr, decay))
        return fixed_loss(1.0 + (np.log10(lr) - np.log10(best_lr)) ** 2 + decay)

    grid = (1e-4, 3e-4, 1e-3)
    lr, decay, reading = rs.best_rate(grid, fixed_loss(50.0), dynamic_read)
    rates = [c[0] for c in calls if c[1] == 0.0]
    assert rates == pytest.approx([*grid, *expected])
    assert lr == pytest.approx(min(rates, key=lambda r: abs(np.log(r / best_lr))))
    assert decay == 0.0 and calls[-1][1] == rs.DECAYS[-1]  # then the other decays, at lr


def test_the_grid_stops_at_a_diverged_rate_and_never_extends_past_no_adaptation():
    def exploding(lr, decay):
        return fixed_loss(float("nan") if lr > 1e-3 else 1.0 - lr)

    assert rs.best_rate((1e-4, 1e-3), fixed_loss(2.0), exploding)[0] == 1e-3
    calls = []

    def harmful(lr, decay):
        calls.append(lr)
        return fixed_loss(2.0 + lr)

    assert rs.best_rate((1e-4, 1e-3), fixed_loss(2.0), harmful)[:2] == (0.0, 0.0)
    assert calls == [1e-4, 1e-3]  # static is best: no other rate, no other decay


def test_chosen_once_stored_beside_the_checkpoint_and_reused_for_the_same_weights(tmp_path):
    run = make_run(tmp_path)
    ckpt = run / "checkpoints" / "best"
    checkpoint_files = files(ckpt)
    lm = seqlm.load(run)
    calls = []

    def splits():
        calls.append(1)
        data = load_corpus(DataConfig(**lm.config["data"]),
                                      tokenizer=lm.tokenizer).splits
        return data["val"], data["train"]

    kw = {"cache_size": 50, "rule": "rms", "splits": splits}
    settings, info = rs.settings_for(lm.model, ckpt, **kw)
    assert info["chosen_now"] and calls == [1]
    assert info["stored_in"] == str(run / "reading" / "best")
    assert {"cache", "dynamic", "cache+dynamic"} <= settings.keys()
    lr = settings["dynamic"]["lr"]  # one of the grid, or steps past its edge
    assert lr == 0.0 or any(np.isclose(lr, r * rs.LR_STEP ** k) for r in rs.LRS["rms"]
                            for k in range(-rs.LR_REACH, rs.LR_REACH + 1))
    assert settings["cache"]["val_loss"] <= settings["dynamic"]["val_loss"] + 10  # numbers
    assert (run / "reading" / "best" / rs.PRIOR_FILE).is_file()
    assert files(ckpt) == checkpoint_files  # the checkpoint is never written
    again, info = rs.settings_for(lm.model, ckpt, **kw)
    assert not info["chosen_now"] and calls == [1] and again == settings
    assert set(info["prior"]) == {n for n, _ in lm.model.named_parameters()}
    bigger, info = rs.settings_for(lm.model, ckpt, **{**kw, "cache_size": 80})
    assert info["chosen_now"] and bigger["cache"]["size"] == 80
    assert bigger["dynamic"] == settings["dynamic"]  # kept: only the cache was chosen again
    make_run(tmp_path, seed=1)  # training went on: other weights in the same place
    assert rs.load_stored(ckpt) == ({}, None)
    assert rs.settings_for(seqlm.load(run).model, ckpt, **kw)[1]["chosen_now"]


def test_a_bare_checkpoint_is_chosen_for_and_nothing_is_written(tmp_path):
    run = make_run(tmp_path)
    bare = tmp_path / "bare"
    (run / "checkpoints" / "best").rename(bare)
    before = files(tmp_path)
    lm = seqlm.load(bare)
    val = np.asarray(lm.tokenizer.encode(TEXT[:300]))
    settings, info = rs.settings_for(lm.model, bare, cache_size=30, rule=None,
                                     splits=lambda: (val, val))
    assert info == {"prior": None, "chosen_now": True, "stored_in": None}
    assert settings["cache"]["size"] == 30 and files(tmp_path) == before


def test_evaluate_reports_each_evaluation_by_name_on_the_test_split(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["evaluate", str(run), "--cache", "60", "--dynamic", "sgd", "--json",
                 "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [row["evaluation"] for row in report["evaluations"]]
    assert names == ["static", "cache", "dynamic", "cache+dynamic"]
    static = report["evaluations"][0]
    assert report["split"] == "test" and report["evaluation"] == "static"
    assert (report["loss"], report["tokens"]) == (static["loss"], static["tokens"])
    assert all(row["tokens"] == static["tokens"] and row["seconds_per_1k"] > 0
               for row in report["evaluations"])
    assert report["evaluations"][1]["settings"]["cache"]["size"] == 60
    assert report["evaluations"][2]["settings"]["dynamic"]["rule"] == "sgd"
    assert report["chosen_now"] and report["rows"] == 1
    assert main(["evaluate", str(run), "--json"]) == 0  # the plain figure is labelled too
    plain = json.loads(capsys.readouterr().out)
    assert plain["evaluation"] == "static" and plain["split"] == "val"
    assert main(["evaluate", str(run), "--cache", "60", "--dynamic", "sgd"]) == 0
    text = capsys.readouterr().out
    assert f"settings chosen earlier on the first {report['chosen_on']['tokens']:,} tokens" \
        in text
    assert [line.split()[0] for line in text.splitlines()[1:5]] == names
    lm = seqlm.load(run)
    both = lm.score(TEXT[:200], cache=True, dynamic=True)
    assert both.evaluation == "cache+dynamic"
    assert lm.score(TEXT[:200], cache=True).evaluation == "cache"


@pytest.mark.parametrize("argv, message", [
    (["--cache", "0"], "seqlm evaluate: error: --cache must be a positive integer, got 0"),
    (["--dynamic", "adam"], "argument --dynamic: invalid choice: 'adam'"),
    (["--cache", "10", "--num-steps", "0"], "--num-steps must be a positive integer"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    run = make_run(tmp_path)
    before = files(tmp_path)
    with pytest.raises(SystemExit) if "adam" in argv else _nothing() as raised:
        status = main(["evaluate", str(run), *argv])
    status = raised.value.code if "adam" in argv else status
    err = capsys.readouterr().err.strip()
    assert status == 2 and message in err and len(err.splitlines()) == 1
    assert files(tmp_path) == before


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
