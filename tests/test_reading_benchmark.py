"""benchmarks/reading.py end to end on a tiny run: the figures of every evaluation, a run
without a test split measured on the half of val it was not chosen on, the table and the
plot."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from seqlm import reading_settings as rs
from seqlm.checkpoint import save_checkpoint
from seqlm.config import DataConfig, ModelConfig
from seqlm.models import RNNLM
from seqlm.tokenize import CharTokenizer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "reading.py"
TEXT = "the time traveller for so it will be convenient to speak of him was expounding\n" * 8
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]  # a few seconds


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("seqlm_bench_reading", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_measure_table_and_plot(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(rs, "LRS", {"sgd": (0.01,), "rms": (1e-4,)})
    monkeypatch.setattr(rs, "DECAYS", (0.0,))
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT)
    tok = CharTokenizer.fit(TEXT)
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), cell="gru", hidden_size=16))
    run = tmp_path / "tiny"
    save_checkpoint(run / "checkpoints" / "best", model, tok, extra_config={
        "data": asdict(DataConfig(corpus=str(corpus), split="0.8,0.2,0"))})
    out = tmp_path / "result.json"
    assert bench.main(["measure", str(run), "--cache", "100", "--dynamic", "sgd",
                       "--result", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["figures_on"] == "val, second half"  # no test split
    predicted = result["evaluations"][0]["tokens"]  # every token but the first
    assert result["figure_tokens"] == result["split_tokens"] == predicted + 1
    val = int(len(TEXT) * 0.2)
    assert result["chosen_on"]["tokens"] == pytest.approx(val // 2, abs=2)
    assert [r["evaluation"] for r in result["evaluations"]] == list(bench.EVALUATIONS)
    assert set(result["gains"]) == set(bench.EVALUATIONS[1:])
    static = result["evaluations"][0]["loss"]
    assert result["gains"]["cache"]["loss"] == pytest.approx(
        static - result["evaluations"][1]["loss"])
    assert result["threads"] == 1 and "loadavg_before" in result
    text = bench.table([result])
    assert text.count("| tiny | val, second half (") == 4 and "cache+dynamic" in text
    line = bench.summary([result]).splitlines()[-1]
    assert line.startswith("| tiny | ?, 1 × 16 GRU, char | val, second half (")
    assert line.count("|") == 6 + 2 * 3  # static loss and time, then two cells per evaluation
    assert bench.main(["measure", str(run), "--dynamic", "sgd", "--max-tokens", "20",
                       "--result", str(out)]) == 0
    short = json.loads(out.read_text())
    assert short["figure_tokens"] == 20 and short["split_tokens"] == result["split_tokens"]
    assert "first 20 of" in bench.table([short])
    cache_only = {**result, "gains": {"cache": result["gains"]["cache"]}}
    assert bench.summary([cache_only, result]).splitlines()[2].count("– | –") == 2
    assert bench.main(["plot", str(out), "--out", str(tmp_path / "reading.png")]) == 0
    assert (tmp_path / "reading.png").stat().st_size > 1000
