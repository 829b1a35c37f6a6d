"""The quality-at-a-budget harness (benchmarks/quality.py) end to end on a tiny budget, its
whole-split token-weighted evaluation, the word_language_model peer, the matrix's plan and
table (benchmarks/quality_matrix.py), and the time-following cosine it relies on."""

from __future__ import annotations

import dataclasses
import importlib
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


@pytest.fixture(scope="module")
def peers(quality):
    return importlib.import_module("quality_peers")  # beside quality.py, on its sys.path


@pytest.fixture(scope="module")
def matrix(quality):
    return importlib.import_module("quality_matrix")


# adapt= off: a 1-s budget on a loaded machine would trip the recipe's budget check
TINY_RNN = ("cpu-fast:hidden_size=16,embedding_dim=8,batch_size=4,num_steps=8,warmup_steps=2,"
            "adapt=")
TINY_GPT = "transformer:n_layer=1,n_head=2,n_embd=16,block_size=8,batch_size=4,warmup_steps=2"


@pytest.mark.slow  # trains both sides
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
        assert r["final_loss"] == curve[-1]["loss"]
        assert r["best_loss"] < math.log(res["vocab_size"]) + 0.5
        assert r["sample"].startswith(res["prefix"]) and len(r["sample"]) > len(res["prefix"])
    # The plot sub-command reads results back and prints the table.
    assert quality.main(["plot", str(out / "results.json"), "--out", str(tmp_path / "c.png"),
                         "--table"]) == 0


def test_transformer_evaluation_is_token_weighted_over_every_target(peers):
    torch.manual_seed(0)
    c = peers.GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=5)
    model = peers.TinyGPT(c, vocab_size=7)
    tokens = np.random.default_rng(0).integers(0, 7, size=23)  # 22 targets: 4 blocks of 5 + 2
    total, count = peers.gpt_evaluate(model, tokens, batch_size=3)
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


TINY_WLM = "wlm:emsize=16,nhid=16,batch_size=4,bptt=8,eval_batch_size=2"


def test_the_word_stream_keeps_newlines_as_eos_and_splits_off_a_test_part(quality, tiny_corpus):
    corpus = quality.stream_corpus(str(tiny_corpus), "word")
    newline = corpus.tokenizer.encode("\n")
    assert len(newline) == 1 and newline[0] != 0  # "\n" is a word of the vocabulary
    lines = [line for line in tiny_corpus.read_text().split("\n")[:-1]]
    train_lines = int(np.sum(corpus.splits["train"] == newline[0]))
    assert 0 < train_lines < len(lines) and all(len(corpus.splits[k]) for k in ("val", "test"))


def test_wlm_peer_trains_its_loss_falls_and_every_val_target_counts(peers, quality, tiny_corpus,
                                                                   single_thread):
    corpus = quality.stream_corpus(str(tiny_corpus), "word")
    # lr_decay 1 here: an evaluation every 0.05 s would otherwise quarter the lr to nothing.
    c = peers.WLMConfig(emsize=16, nhid=16, batch_size=4, bptt=8, eval_batch_size=2,
                        lr_decay=1.0)
    torch.manual_seed(c.seed)  # the model train_wlm starts from
    nll, count = peers.wlm_evaluate(peers.WordLSTM(c, corpus.vocab_size), corpus.splits["val"])
    n_val = len(corpus.splits["val"])
    assert count == (n_val // 2 - 1) * 2  # two rows, every target of each row once
    # A step budget, so that a loaded machine changes only where the evaluations fall.
    result, model = peers.train_wlm(c, corpus, budget=60.0, eval_every=0.05, max_steps=200)
    curve = result["curve"]
    assert result["steps"] == 200 and len(curve) >= 2 and curve[-1]["final"]
    assert {p["count"] for p in curve} == {count}
    assert curve[-1]["loss"] < nll / count - 0.5
    assert all(p["lr"] == c.lr for p in curve[:-1])
    # The lr each evaluation leaves: quartered whenever the loss is no better than the best.
    quartered = dataclasses.replace(c, lr_decay=4.0)
    curve = peers.train_wlm(quartered, corpus, 60.0, eval_every=0.05, max_steps=200)[0]["curve"]
    lr, best = c.lr, math.inf
    for p in curve[:-1]:
        lr, best = (lr, p["loss"]) if p["loss"] < best else (lr / 4, best)
        assert p["lr"] == pytest.approx(lr)
    text = peers.wlm_sample(model, corpus.tokenizer, "the time", 5, 0.7, 0)
    assert text.startswith("the time") and len(text.split()) == 7


def test_wlm_lr_is_quartered_on_an_evaluation_that_does_not_improve(peers):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=20.0)
    policy = peers.Quartering(opt, 4.0)
    assert [policy(loss)["lr"] for loss in (3.0, 2.0, 2.5, 2.0, 1.0, 1.5)] == [
        20.0, 20.0, 5.0, 1.25, 1.25, 0.3125]
    assert opt.param_groups[0]["lr"] == 0.3125


@pytest.mark.slow  # trains both sides
def test_a_word_run_trains_seqlm_and_wlm_on_the_same_ids(quality, tiny_corpus, tmp_path):
    out = tmp_path / "w"
    assert quality.main(["run", "--corpus", str(tiny_corpus), "--tokenizer", "word",
                         "--budget", "0.8", "--threads", "1", "--sample-tokens", "4",
                         "--models", TINY_RNN.replace("batch_size=4", "batch_size=2"),
                         TINY_WLM, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tokenizer"] == "word" and res["split"] == "0.9,0.05,0.05"
    assert res["setup"]["stream"]["keep_newlines"] is True
    assert {r["kind"] for r in res["models"].values()} == {"rnn", "wlm"}
    for r in res["models"].values():
        assert r["curve"][-1]["final"] and r["final_loss"] == r["curve"][-1]["loss"]


def test_each_budget_runs_the_preset_nearest_it(matrix):
    assert [matrix.preset_for(b) for b in (8, 95, 540, 900)] == [
        "cpu-fast", "cpu-fast", "cpu-quality", "cpu-quality"]


def _stored(quality, tmp_path, row="builtin", budget=95.0):
    models = ["cpu-fast" if budget < 300 else "cpu-quality", "transformer"]
    path = tmp_path / f"quality-{row}-{budget:g}.json"
    path.write_text(json.dumps({"setup": quality.setup(models, "char")}))
    return path


def test_plan_skips_a_stored_result_only_while_its_setup_stands(quality, matrix, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(matrix, "SHARED_DATA", tmp_path / "nowhere")
    monkeypatch.setenv("SEQLM_DATA", str(tmp_path / "empty"))
    path = _stored(quality, tmp_path)
    items = matrix.plan(["builtin", "alice"], [95.0, 540.0], tmp_path, quality.setup)
    act = {(i["row"], i["budget"]): (i["action"], i["reason"]) for i in items}
    assert act[("builtin", 95.0)] == ("skip", "stored with the current setup")
    assert act[("builtin", 540.0)] == ("run", "no stored result")
    assert act[("alice", 95.0)][0] == "missing" and "SEQLM_DATA" in act[("alice", 95.0)][1]
    assert items[0]["models"] == ["cpu-fast", "transformer"]
    assert items[1]["models"] == ["cpu-quality", "transformer"]
    forced = matrix.plan(["builtin"], [95.0], tmp_path, quality.setup, force=True)
    assert forced[0]["action"] == "run"
    stored = json.loads(path.read_text())
    stored["setup"]["models"]["cpu-fast"]["lr"] *= 2  # the preset changed since
    path.write_text(json.dumps(stored))
    again = matrix.plan(["builtin"], [95.0], tmp_path, quality.setup)[0]
    assert again["action"] == "run" and again["reason"] == "setup changed (cpu-fast)"
    stored["setup"]["models"]["cpu-fast"]["lr"] /= 2
    stored["setup"]["rules"]["deep_steps"] += 100  # a rule of seqlm.recipe changed since
    path.write_text(json.dumps(stored))
    ruled = matrix.plan(["builtin"], [95.0], tmp_path, quality.setup)[0]
    assert ruled["reason"] == "setup changed (the recipe's rules)"
    assert "rules" not in quality.setup(["d2l-scratch"], "char")  # nothing adapts there
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "alice.txt").write_text("text")
    found = matrix.plan(["alice"], [95.0], tmp_path, quality.setup)[0]
    assert found["action"] == "run" and found["corpus"] == str(tmp_path / "empty" / "alice.txt")
    # alice's stream drops the Gutenberg licence: a result stored without it no longer stands
    alice = tmp_path / "quality-alice-95.json"
    alice.write_text(json.dumps({"setup": quality.setup(["cpu-fast", "transformer"], "char")}))
    stale = matrix.plan(["alice"], [95.0], tmp_path, quality.setup)[0]
    assert stale["reason"] == "setup changed (the stream)"
    alice.write_text(json.dumps({"setup": quality.setup(["cpu-fast", "transformer"], "char",
                                                          "gutenberg")}))
    assert matrix.plan(["alice"], [95.0], tmp_path, quality.setup)[0]["action"] == "skip"


def test_a_failed_row_is_logged_and_the_matrix_goes_on(matrix, tmp_path):
    items = [{"row": row, "budget": 95.0, "models": ["cpu-fast", "transformer"],
              "corpus": row, "path": tmp_path / f"quality-{row}-95.json", "action": "run",
              "reason": "no stored result"} for row in ("builtin", "python-source")]
    items.append({**items[0], "row": "alice", "action": "missing", "reason": "no file"})

    def run(args):
        if args.corpus == "builtin":
            raise SystemExit("quality.py: a model's process failed (see its error above)")
        assert (args.parallel, args.threads, args.eval_every) == (True, 1, 95.0 / 12)
        return {"corpus": args.corpus, "models": {}}

    logged = []
    assert matrix.run_matrix(items, run, sample_tokens=5, log=logged.append) == 1
    assert not items[0]["path"].exists()
    assert json.loads(items[1]["path"].read_text())["row"] == "python-source"
    assert [line.split(": ")[2].split(",")[0].split(" (")[0] for line in logged] == [
        "running", "failed", "running", "skipped"]


def _result(row, budget, rnn, peer, bigram, rnn_final=None, peer_name="transformer"):
    def model(kind, best, final):
        curve = [{"elapsed": budget / 2, "loss": best, "final": False},
                 {"elapsed": budget, "loss": final, "final": True}]
        return {"kind": kind, "best_loss": best, "final_loss": final, "curve": curve,
                "steps": 10, "tokens_per_s": 1000.0}
    spec = "cpu-fast" if budget < 300 else "cpu-quality"
    return {"row": row, "corpus": row, "budget": budget, "threads": 1, "bigram_loss": bigram,
            "models": {spec: model("rnn", rnn, rnn if rnn_final is None else rnn_final),
                       peer_name: model(peer_name, peer, peer)}}


def test_matrix_table_flags_each_done_when_check(quality, tmp_path, capsys):
    results = {("builtin", 95): _result("builtin", 95.0, 1.20, 1.50, 2.3),
               ("builtin", 540): _result("builtin", 540.0, 1.18, 1.10, 2.3, rnn_final=1.25),
               ("sanguoyanyi", 95): _result("sanguoyanyi", 95.0, 5.0, 5.5, 5.2),
               ("sanguoyanyi", 540): _result("sanguoyanyi", 540.0, 4.9, 5.4, 5.2)}
    for (row, budget), res in results.items():
        (tmp_path / f"quality-{row}-{budget}.json").write_text(json.dumps(res))
    doc = tmp_path / "quality.md"
    doc.write_text("intro\n<!-- matrix:begin -->\nold\n<!-- matrix:end -->\nrest\n")
    assert quality.main(["matrix", "--table-only", "--rows", "builtin", "sanguoyanyi", "alice",
                         "--results", str(tmp_path), "--doc", str(doc)]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split(" | ")[:2]): line.split(" | ")[-4:] for line in out.splitlines()
            if line.startswith("| builtin") or line.startswith("| sanguoyanyi")}
    # stable, gain over the short budget, ahead of the peer, perplexity vs 0.8 x bigram
    assert rows[("| builtin", "95 s")] == ["pass", "–", "pass", "– |"]
    assert rows[("| builtin", "540 s")] == ["FAIL", "FAIL", "FAIL", "– |"]  # 0.07 drift, 0.02
    assert rows[("| sanguoyanyi", "95 s")] == ["pass", "–", "pass", "FAIL |"]  # exp(-0.2) > 0.8
    assert rows[("| sanguoyanyi", "540 s")] == ["pass", "pass", "pass", "– |"]
    assert "| alice | 95 s | not run |" in out
    assert "| timemachine | 540 s | not run |" in out  # every row shows, --rows or not
    assert "7 checks pass, 4 fail: builtin 540 s stable" in out
    text = doc.read_text()
    assert text.startswith("intro\n<!-- matrix:begin -->\n| row |") and "old" not in text
    assert text.endswith("<!-- matrix:end -->\nrest\n")
    assert (tmp_path / "quality-matrix.png").stat().st_size > 0
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        quality.main(["matrix", "--table-only", "--rows", "builtin", "--results",
                      str(tmp_path), "--doc", str(doc)])


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
