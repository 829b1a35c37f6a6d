"""The divergence guard: a forced blow-up is survived, a healthy run is untouched, and exact
resume holds across a recovery."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seqlm.config import DataConfig, TrainConfig
from seqlm.run import RunSession
from seqlm.settings import Settings
from seqlm.errors import TrainingDiverged

from conftest import TINY_TEXT

BASE_LR = 0.01


def _session(tmp_path, name, **train):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT)
    data = DataConfig(corpus=str(path), batch_size=4, num_steps=8, split="0.8,0.2,0")
    cfg = TrainConfig(**{"optimizer": "adam", "lr": BASE_LR, "schedule": "constant",
                         "max_steps": 120, "eval_every": 40, "log_every": 5,
                         "guard_every": 10, "sample_tokens": 0, **train})
    model = {"cell": "gru", "impl": "fused", "hidden_size": 32, "embedding_dim": 16,
             "dropout": 0.1}
    return RunSession.start(tmp_path / name, Settings(data, model, cfg))


class Spike:
    """Raises the lr 100x for steps 41-45, once (a transient, as a bad stretch of data or an
    unlucky moment of the optimizer would be), whatever the guard rewinds."""

    def __init__(self, session, first=41, last=45):
        self.cfg, self.first, self.last, self.done = session.trainer.cfg, first, last, False

    def __call__(self, progress):
        self.done = self.done or progress.step >= self.last
        upcoming = progress.step + 1
        hot = not self.done and self.first <= upcoming <= self.last
        self.cfg.lr = BASE_LR * (100 if hot else 1)


def _records(session, kind):
    return [r for r in session.run.records() if r["kind"] == kind]


def _weights(session):
    return load_file(session.run.checkpoints / "last" / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_forced_blowup_recovers_below_the_bigram_baseline(tmp_path):
    session = _session(tmp_path, "spike")
    seen = []
    session.fit(on_step=Spike(session), on_recovery=seen.append)
    recoveries = _records(session, "recovery")
    assert len(recoveries) == 1 and seen == recoveries
    event = recoveries[0]
    assert event["step"] == 45 and event["restored_step"] == 40
    assert "gradient norm" in event["reason"] or "loss" in event["reason"]
    assert event["lr"] == pytest.approx(BASE_LR * 0.5)
    p = session.trainer.progress
    assert p.step == 120 and session.trainer.guard.lr_scale == 0.5
    final = _records(session, "eval")[-1]
    assert final["val_loss"] < session.baselines["bigram"]["loss"]
    # Without the guard the same spike leaves the run far worse at the end.
    plain = _session(tmp_path, "plain", guard_retries=0)
    plain.fit(on_step=Spike(plain))
    assert _records(plain, "eval")[-1]["val_loss"] > final["val_loss"] + 0.1


def test_a_healthy_run_is_untouched(tmp_path):
    guarded = _session(tmp_path, "guarded", max_steps=60)
    guarded.fit()
    plain = _session(tmp_path, "plain", guard_retries=0, max_steps=60)
    plain.fit()
    assert not _records(guarded, "recovery")
    assert _same(_weights(guarded), _weights(plain))


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [43, 52])
def test_resume_is_bit_identical_across_a_recovery(tmp_path, stop_at):
    """Interrupted inside the blow-up window (before the guard sees it), or after the
    recovery, then resumed: the same weights as the run that was never interrupted."""
    full = _session(tmp_path, "full", max_steps=60)
    full.fit(on_step=Spike(full))
    half = _session(tmp_path, "half", max_steps=60)
    half.fit(on_step=Spike(half), should_stop=lambda: half.trainer.progress.step >= stop_at)
    assert half.trainer.progress.stop_reason == "interrupted"
    again = _session(tmp_path, "again", max_steps=60)
    again.run = half.run
    again.resume()
    spike = Spike(again)
    spike.done = bool(_records(again, "recovery"))
    spike(again.trainer.progress)  # the lr the next step gets, as in the uninterrupted run
    again.fit(on_step=spike)
    assert _same(_weights(full), _weights(again))
    assert len(_records(again, "recovery")) == 1
    saved = json.loads((half.run.checkpoints / "last" / "trainer.json").read_text())
    assert saved["guard"]["recoveries"] == 1 and saved["guard"]["lr_scale"] == 0.5


def test_a_nan_is_recovered_from(tmp_path):
    session = _session(tmp_path, "nan", max_steps=60)

    def poison(progress):  # once: a weight turns NaN after step 22
        if progress.step == 22 and not session.trainer.guard.recoveries:
            with torch.no_grad():
                next(session.trainer.model.parameters()).fill_(float("nan"))

    session.fit(on_step=poison)
    (event,) = _records(session, "recovery")
    assert "NaN" in event["reason"] and event["restored_step"] == 20
    assert all(torch.isfinite(t).all() for t in _weights(session).values())


def test_still_diverging_after_the_retries_ends_the_run(tmp_path):
    session = _session(tmp_path, "hopeless", guard_retries=2)

    def poison(progress):  # every time training passes step 42
        if progress.step == 42:
            with torch.no_grad():
                next(session.trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"after 2 recoveries.*checkpoints/best \(step "
                                               r"40.*`lr`"):
        session.fit(on_step=poison)
    assert len(_records(session, "recovery")) == 2
    best = json.loads((session.run.checkpoints / "best" / "trainer.json").read_text())
    assert best["progress"]["step"] == 40


def test_the_cli_prints_one_line_per_recovery(capsys):
    from seqlm.progress import Reporter

    reporter = Reporter(quiet=True, total=None)
    reporter.recovery({"step": 45, "restored_step": 40, "reason": "the loss rose to 5.1",
                       "lr": 0.005, "recovery": 1, "retries": 3})
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "diverging: the loss rose to 5.1; back to step 40 at lr 0.005" in out
