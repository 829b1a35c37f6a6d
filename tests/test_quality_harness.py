"""The quality-at-a-budget harness (benchmarks/quality.py) end to end on a tiny budget, its
whole-split token-weighted evaluation, and the time-following cosine it relies on."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqlm.config import TrainConfig
from seqlm.schedule import lr_factor

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("seqlm_bench_quality", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass type hints resolve through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


TINY_RNN = "cpu-fast:hidden_size=16,embedding_dim=8,batch_size=4,num_steps=8,warmup_steps=2"
TINY_GPT = "transformer:n_layer=1,n_head=2,n_embd=16,block_size=8,batch_size=4,warmup_steps=2"


def test_harness_runs_both_sides_and_evaluates_the_whole_split(quality, tiny_corpus, tmp_path):
    out = tmp_path / "q"
    assert quality.main(["run", "--corpus", str(tiny_corpus), "--budget", "1.0",
                         "--eval-every", "0.3", "--threads", "1", "--sample-tokens", "12",
                         "--models", TINY_RNN, TINY_GPT, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (out / "curves.png").stat().st_size > 0
    n_val = res["tokens"]["val"]
    assert res["split"] == "0.9,0.1,0" and res["tokens"]["test"] == 0 and n_val > 100
    rnn, gpt = res["models"][TINY_RNN], res["models"][TINY_GPT]
    # Every target of the split, once: the transformer all n - 1, the RNN's carried-state rows
    # all but the < batch_size tokens that do not fill a row.
    assert {p["count"] for p in gpt["curve"]} == {n_val - 1}
    assert {p["count"] for p in rnn["curve"]} == {(n_val - 1) // 4 * 4}
    for r in (rnn, gpt):
        curve = r["curve"]
        assert len(curve) >= 2 and curve[-1]["final"] and not any(p["final"] for p in curve[:-1])
        assert [p["elapsed"] for p in curve] == sorted(p["elapsed"] for p in curve)
        assert r["train_s"] >= 1.0 and curve[-1]["elapsed"] == pytest.approx(r["train_s"])
        assert r["best_loss"] == min(p["loss"] for p in curve) == r["best"]["1"]
        assert r["best_loss"] < math.log(res["vocab_size"]) + 0.5
        assert r["sample"].startswith(res["prefix"]) and len(r["sample"]) > len(res["prefix"])
    # The plot sub-command reads results back and prints the table.
    assert quality.main(["plot", str(out / "results.json"), "--out", str(tmp_path / "c.png"),
                         "--table"]) == 0


def test_transformer_evaluation_is_token_weighted_over_every_target(quality):
    torch.manual_seed(0)
    c = quality.GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=5)
    model = quality.TinyGPT(c, vocab_size=7)
    tokens = np.random.default_rng(0).integers(0, 7, size=23)  # 22 targets: 4 blocks of 5 + 2
    total, count = quality.gpt_evaluate(model, tokens, batch_size=3)
    assert count == 22
    ref = 0.0
    with torch.no_grad():
        for start in range(0, 22, 5):
            x = torch.as_tensor(tokens[start: min(start + 5, 22)])[None]
            y = torch.as_tensor(tokens[start + 1: min(start + 6, 23)])
            ref += float(F.cross_entropy(model(x)[0], y, reduction="sum"))
    assert total == pytest.approx(ref, rel=1e-5)


def test_model_specs_are_parsed_and_typed(quality):
    name, values = quality.parse_spec("cpu-fast:hidden_size=64,embedding_dim=none,lr=0.002")
    assert name == "cpu-fast"
    from seqlm.config import DataConfig, ModelConfig
    typed = quality.typed(values, (DataConfig, ModelConfig, TrainConfig))
    assert typed == {"hidden_size": 64, "embedding_dim": None, "lr": 0.002}
    with pytest.raises(SystemExit, match="unknown setting"):
        quality.typed({"hidden": "3"}, (ModelConfig,))
    with pytest.raises(SystemExit, match="key=value"):
        quality.parse_spec("cpu-fast:hidden_size")


def test_throughput_ab_reports_every_spec_and_thread_count(quality, capsys):
    assert quality.main(["throughput", "--models", "cpu-fast:hidden_size=8,embedding_dim=4",
                         "--thread-counts", "1", "--rounds", "2", "--seconds", "0.05"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "threads=1" in lines[0] and "2 rounds" in lines[0]


def test_cosine_follows_the_time_budget_when_the_length_in_steps_is_unknown():
    cfg = TrainConfig(schedule="cosine", warmup_steps=5, min_lr_ratio=0.1, time_budget=100.0)
    assert lr_factor(cfg, 2, None, elapsed=1.0) == pytest.approx(3 / 5)  # warm-up in steps
    assert lr_factor(cfg, 50, None, elapsed=0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, None, elapsed=50.0) == pytest.approx(0.55)
    assert lr_factor(cfg, 50, None, elapsed=100.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 50, None, elapsed=130.0) == pytest.approx(0.1)
    # Both budgets: the one nearer its end sets the pace.
    both = TrainConfig(schedule="cosine", min_lr_ratio=0.1, time_budget=100.0, max_steps=1000)
    assert lr_factor(both, 500, 1000, elapsed=10.0) == pytest.approx(0.55)
    assert lr_factor(both, 10, 1000, elapsed=50.0) == pytest.approx(0.55)
    assert lr_factor(TrainConfig(schedule="constant", time_budget=10.0), 9, None, 9.0) == 1.0
