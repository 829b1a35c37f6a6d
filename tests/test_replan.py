"""The recipe's choices followed during a run (seqlm.replan), fed measured speeds: a quiet
machine, a busy start that fooled the probe, and a neighbour that arrives half way."""

from __future__ import annotations

from dataclasses import replace

import pytest

from seqlm.config import ModelConfig
from seqlm.recipe import DEEP_STEPS, Measurement, dropout_for, eval_every_for, wants_depth
from seqlm.replan import CHECK_SHARE, Planner, Restart

BUDGET = 540.0
QUIET = 20_000.0  # tokens/s of the 1-layer model on a quiet machine
DEEP = 11_000.0  # the 2-layer model's
NAMES = ("dropout", "eval_every", "num_layers")


def _measurement(rate: float) -> Measurement:
    return Measurement(train_tokens=1_000_000, val_tokens=50_000, vocab_size=65,
                       tokens_per_step=2048, train_tokens_per_s=rate, eval_tokens_per_s=5e4,
                       budget=BUDGET, unseen_bigrams=0.002)


def _quiet_choice() -> tuple[int, float, int]:
    """What the recipe chooses on a quiet machine (the rule of recipe.build_model)."""
    shallow, deep = _measurement(QUIET), _measurement(DEEP)
    one = ModelConfig(vocab_size=65, cell="gru", hidden_size=512, num_layers=1)
    assert wants_depth(one, shallow) and deep.steps >= DEEP_STEPS  # this case goes deep
    return 2, dropout_for(deep.effective_epochs, deep.epochs), eval_every_for(deep.steps)


def _planner(rate: float, layers: int, dropout: float) -> Planner:
    model = ModelConfig(vocab_size=65, cell="gru", hidden_size=512, num_layers=layers,
                        dropout=dropout)
    m = _measurement(rate)
    return Planner(NAMES, m, model, eval_every_for(m.steps),
                   deep_speed=lambda layers: DEEP if layers == 2 else QUIET)


def _feed(planner: Planner, rates: list[float], *, window: float = 2.0):
    """One log window every ``window`` seconds at each rate, going on from the windows fed
    before; returns the plans made."""
    plans = []
    for rate in rates:
        elapsed, tokens = getattr(planner, "_fed", (0.0, 0))
        planner._fed = (elapsed + window, tokens + int(rate * window))
        plan = planner.observe(rate, len(planner.windows) * 20, planner._fed[1], planner._fed[0])
        if plan:
            plans.append(plan)
    return plans


def test_a_quiet_run_keeps_the_quiet_choices():
    depth, dropout, eval_every = _quiet_choice()
    planner = _planner(DEEP, depth, dropout)
    plans = _feed(planner, [DEEP] * 200)
    assert len(plans) == 1 and plans[0]["reason"] == "the first check"
    assert plans[0]["chosen"] == {}  # the probe read the machine right: nothing to change
    assert plans[0]["elapsed"] >= CHECK_SHARE * BUDGET


def test_a_busy_start_that_fooled_the_probe_starts_again_with_the_quiet_depth_and_dropout():
    depth, dropout, _ = _quiet_choice()
    busy = QUIET / 18  # the probe ran beside a process spinning on both cores
    m = _measurement(busy)
    planner = _planner(busy, 1, dropout_for(m.effective_epochs, m.epochs))
    assert planner.model.dropout == 0.0  # what the fooled probe chose
    with pytest.raises(Restart) as restart:  # busy for the first 10 s, quiet after
        _feed(planner, [busy] * 5 + [QUIET] * 100)
    chosen = restart.value.record["chosen"]
    assert restart.value.model.num_layers == depth == chosen["num_layers"]
    assert chosen["dropout"] == pytest.approx(dropout, abs=0.02)
    assert restart.value.record["restart"] and restart.value.record["lost_s"] > 0


def test_a_neighbour_arriving_half_way_lowers_dropout_and_spaces_the_evaluations():
    depth, dropout, eval_every = _quiet_choice()
    planner = _planner(DEEP, depth, dropout)
    first = _feed(planner, [DEEP] * 135)  # 270 s quiet
    slow = _feed(planner, [DEEP / 3] * 20)
    assert [p["reason"] for p in first] == ["the first check"]
    assert len(slow) == 1 and slow[0]["reason"] == "the speed changed"
    assert slow[0]["chosen"]["dropout"] < dropout  # fewer passes than planned: less dropout
    assert slow[0]["chosen"]["eval_every"] < eval_every  # fewer steps: the same dozen evals
    assert slow[0]["epochs"] == pytest.approx((270 * DEEP + 270 * DEEP / 3) / 1e6, rel=0.05)
    assert _feed(planner, [DEEP / 3] * 40) == []  # no new plan while the speed holds


def test_nothing_is_planned_without_a_time_budget():
    planner = _planner(QUIET, 1, 0.0)
    planner.planned = replace(planner.planned, budget=None)
    assert _feed(planner, [QUIET / 10] * 50) == []


# -- a real run beside a busy start --------------------------------------------------------
SPIN = ("import sys, time\nend = time.perf_counter() + float(sys.argv[1])\n"
        "while time.perf_counter() < end:\n    pass\n")


def _spin(seconds: float, cores: int = 2):
    """Processes that keep ``cores`` cores busy for ``seconds`` (a neighbour's start-up)."""
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(cores)]


def _deep_run(tmp_path, name: str, corpus) -> dict:
    import json

    from seqlm.cli import main

    out = tmp_path / name
    code = main(["train", "--corpus", str(corpus), "--out", str(out), "--time-budget", "12",
                 "--hidden-size", "32", "--batch-size", "8", "--num-steps", "16",
                 "--sample-tokens", "0", "--quiet", "--json"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    return {"layers": config["model"]["num_layers"], "dropout": config["model"]["dropout"],
            "restarted": any(r.get("restart") for r in config["recipe"].get("replans", []))}


@pytest.mark.slow
def test_a_run_whose_first_seconds_are_busy_chooses_as_a_quiet_run(tmp_path, tiny_corpus,
                                                                     capsys):
    """cpu-fast on a small text: quietly the recipe goes to 2 layers with dropout; a run
    started beside two spinning processes probes too slow, then starts again at its first
    check with the quiet run's depth and about its dropout."""
    quiet = _deep_run(tmp_path, "quiet", tiny_corpus)
    spinners = _spin(2.5)
    try:
        busy = _deep_run(tmp_path, "busy", tiny_corpus)
    finally:
        for p in spinners:
            p.wait()
    assert quiet["layers"] == 2 and quiet["dropout"] > 0
    assert busy["layers"] == quiet["layers"]
    assert busy["dropout"] == pytest.approx(quiet["dropout"], abs=0.1)
