"""The harness: its baselines agree with seqlm's paths, and a tiny run finishes in seconds."""

from __future__ import annotations

import json
import os

import pytest
import torch

from seqlm.bench import BenchConfig, Workload, format_report, run_bench
from seqlm.bench.encode import encode_throughput, synthetic_text
from seqlm.bench.paths import make_batches, seqlm_trainer, tokenizer_for
from seqlm.bench.roofline import flops_per_token, step_gemms
from seqlm.bench.textbook import (ConciseModel, TextbookModel, module_train_step,
                                  textbook_predict, textbook_train_step)
from seqlm.bench.timing import PeakMemory, interleave, ratio
from seqlm.cli import main
from seqlm.errors import ConfigError
from seqlm.generate import generate

TINY = {"rnn": Workload("tiny-rnn", "char", "rnn", 12, 16, batch_size=3, num_steps=5),
        "gru": Workload("tiny-gru", "char", "gru", 12, 16, batch_size=3, num_steps=5),
        "lstm": Workload("tiny-lstm", "char", "lstm", 12, 16, batch_size=3, num_steps=5)}


def _stack_gates(book: dict, prefix: str, gates: str) -> torch.Tensor:
    return torch.cat([book[f"{prefix}{g}"].detach().T for g in gates])


def _copy_book_weights(model, book: TextbookModel) -> None:
    """Textbook (row-vector) parameters into seqlm's torch-layout model (biases in bias_ih)."""
    p = book.named_params
    order = {"rnn": "h", "lstm": "ifco"}[book.cell]  # torch stacks i, f, g (the book's c), o
    with torch.no_grad():
        core = model.core
        core.weight_ih_l0.copy_(_stack_gates(p, "W_x", order))
        core.weight_hh_l0.copy_(_stack_gates(p, "W_h", order))
        core.bias_ih_l0.copy_(torch.cat([p[f"b_{g}"].detach() for g in order]))
        core.bias_hh_l0.zero_()
        model.decoder.weight.copy_(p["W_hq"].detach().T)
        model.decoder.bias.copy_(p["b_q"].detach())


def _random_book(w: Workload, *, seed: int, std: float) -> TextbookModel:
    """The textbook model of ``w`` with N(0, std²) weights: the book's 0.01 leaves every
    activation near zero, where the paths could differ without a test noticing."""
    book = TextbookModel(w.cell, w.vocab_size, w.hidden_size,
                         generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for param in book.params:
            param.normal_(0.0, std)
    return book


CLIP = 0.25
CASES = [("rnn", {"impl": "scratch"}), ("rnn", {"impl": "scratch", "bptt_engine": "manual"}),
         ("rnn", {"impl": "fused"}), ("lstm", {"impl": "scratch"}), ("lstm", {"impl": "fused"})]


@pytest.mark.parametrize("cell,fields", CASES)
def test_seqlm_training_step_matches_the_textbook(cell, fields):
    """Two steps of Trainer.step (loss, clip, SGD, carried state) against the book's loop:
    the same losses and the same updated weights (float32 tolerance)."""
    w = TINY[cell]
    torch.manual_seed(0)
    book = _random_book(w, seed=1, std=1.0)
    trainer = seqlm_trainer(w, "cpu", 0, **fields)
    _copy_book_weights(trainer.model, book)
    # the book has one bias where torch has two; freezing bias_hh at 0 makes them the same
    # model under SGD (both would otherwise take the full update) and the same clip norm
    trainer.model.core.bias_hh_l0.requires_grad_(False)
    trainer.cfg.clip = CLIP  # small enough that the clip engages on both sides
    state = None
    for X, Y in make_batches(w, 2, seed=3, device="cpu"):
        book_loss, state = textbook_train_step(book, X, Y, state, theta=CLIP)
        nll, norm = trainer.step(X, Y)
        torch.testing.assert_close(nll / Y.numel(), book_loss, rtol=1e-5, atol=1e-6)
        assert float(norm) > CLIP
    after = TextbookModel(cell, w.vocab_size, w.hidden_size)
    after.named_params = {k: v.detach() for k, v in book.named_params.items()}
    twin = seqlm_trainer(w, "cpu", 0, **fields).model
    _copy_book_weights(twin, after)
    for (name, got), want in zip(trainer.model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("cell,fields", CASES)
def test_seqlm_gradients_match_the_textbook(cell, fields):
    w = TINY[cell]
    book = _random_book(w, seed=2, std=0.3)
    trainer = seqlm_trainer(w, "cpu", 0, **fields)
    model = trainer.model
    _copy_book_weights(model, book)
    (X, Y), = make_batches(w, 1, seed=4, device="cpu")
    y_hat, _ = book(X, book.begin_state(w.batch_size))
    torch.nn.functional.cross_entropy(y_hat, Y.T.reshape(-1)).backward()
    logits, _ = model(X)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, w.vocab_size), Y.reshape(-1))
    loss.backward()
    grads = TextbookModel(cell, w.vocab_size, w.hidden_size)
    grads.named_params = {k: v.grad for k, v in book.named_params.items()}
    expected = seqlm_trainer(w, "cpu", 0, **fields).model
    _copy_book_weights(expected, grads)
    for (name, p), want in zip(model.named_parameters(), expected.parameters()):
        if name == "core.bias_hh_l0":  # receives the same gradient as bias_ih_l0
            want = expected.core.bias_ih_l0
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6, msg=name)


def test_torch_module_baseline_trains():
    w = TINY["gru"]
    torch.manual_seed(0)
    model = ConciseModel("gru", w.vocab_size, w.hidden_size)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = make_batches(w, 4, seed=0, device="cpu")
    state, losses = None, []
    for _ in range(15):
        for X, Y in batches:
            loss, state = module_train_step(model, opt, X, Y, state)
            losses.append(float(loss))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("fields", [{"impl": "scratch"}, {"impl": "fused"},
                                    {"impl": "scratch", "bptt_engine": "manual"}])
def test_seqlm_gru_paths_train_like_torchs_gru_loop(fields):
    """The book's GRU puts the reset gate before the recurrent product and torch's after it,
    so seqlm's GRU paths (torch's equations) are checked against the nn.GRU baseline: two
    steps of Trainer.step and of the module loop give the same losses and weights."""
    w = TINY["gru"]
    torch.manual_seed(0)
    module = ConciseModel("gru", w.vocab_size, w.hidden_size)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)
    trainer = seqlm_trainer(w, "cpu", 0, **fields)
    trainer.cfg.clip = CLIP
    trainer.model.core.load_state_dict(module.rnn.state_dict())
    trainer.model.decoder.load_state_dict(module.linear.state_dict())
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    state = None
    for X, Y in make_batches(w, 2, seed=3, device="cpu"):
        loss, state = module_train_step(module, optimizer, X, Y, state, clip=CLIP)
        nll, norm = trainer.step(X, Y)
        torch.testing.assert_close(nll / Y.numel(), loss, rtol=1e-5, atol=1e-6)
        assert float(norm) > CLIP
    for name, got in trainer.model.core.named_parameters():
        torch.testing.assert_close(got, module.rnn.get_parameter(name), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(trainer.model.decoder.weight, module.linear.weight,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell,impl", [("rnn", "scratch"), ("rnn", "fused"),
                                       ("lstm", "scratch")])
def test_seqlm_generation_matches_the_books_predict_loop(cell, impl):
    w = TINY[cell]
    book = _random_book(w, seed=5, std=0.8)
    model = seqlm_trainer(w, "cpu", 0, impl=impl).model
    _copy_book_weights(model, book)
    tok = tokenizer_for(w)
    prefix_ids = [3, 5, 7, 2]
    want = textbook_predict(prefix_ids, 30, book)
    got = generate(model, tok, tok.decode(prefix_ids), max_new_tokens=30, temperature=0)
    assert got[0] == tok.decode(want)


def test_flops_per_token_is_the_sum_of_the_step_gemms():
    for w in TINY.values():
        total = sum(2 * count * m * k * n for count, m, k, n in step_gemms(w))
        assert total == flops_per_token(w) * w.tokens_per_step


def test_interleave_rotates_and_ratio_pairs_rounds():
    calls = []
    samples = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                         rounds=3, reps=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert [len(v) for v in samples.values()] == [3, 3]
    assert ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's writable /proc/self/clear_refs to reset the peak mark")
def test_peak_memory_sees_a_large_temporary():
    with PeakMemory() as watch:
        block = torch.ones(40_000_000, dtype=torch.uint8)  # 40 MB, touched
        del block
    assert watch.mb is not None and 35 < watch.mb < 200


def test_peak_memory_is_none_where_the_mark_cannot_be_reset(monkeypatch, tmp_path):
    from seqlm.bench import timing

    monkeypatch.setattr(timing, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with PeakMemory() as watch:
        pass
    assert watch.mb is None


def test_synthetic_text_is_deterministic_and_sized():
    text = synthetic_text(200_000, seed=1)
    assert text == synthetic_text(200_000, seed=1) and text != synthetic_text(200_000, seed=2)
    assert 200_000 <= len(text) < 230_000 and text.isascii()
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz ,.\n")
    row = encode_throughput("word", text)
    assert row["tokens"] > 30_000 and row["mb_per_s"] > 0


@pytest.mark.slow  # times every path
def test_quick_harness_on_tiny_workloads_reports_every_path():
    cfg = BenchConfig.quick(sections="train,generate,encode", rounds=2, gen_tokens=20, threads=1,
                            gen_rounds=2, encode_mb=0.2, peak_size=64, bf16=True, memory=True)
    report = run_bench(cfg, workloads=[TINY["rnn"], TINY["gru"], TINY["lstm"]])
    names = [r["path"] for r in report["train"][0]["paths"]]
    assert names[:2] == ["textbook", "torch nn.RNN"]
    assert {"scratch", "scratch manual-BPTT", "fused", "fused bf16", "GEMM bound"} <= set(names)
    defaults = [[r["path"] for r in block["paths"] if r["default"]] for block in report["train"]]
    assert defaults == [["scratch manual-BPTT"], ["scratch manual-BPTT"], ["fused"]]
    for block in report["train"]:
        for row in block["paths"]:
            assert row["tokens_per_s"] > 0 and row["vs_textbook"] > 0
        assert block["paths"][0]["vs_textbook"] == 1.0
    assert [b["workload"]["name"] for b in report["generate"]] == ["tiny-rnn", "tiny-gru",
                                                                   "tiny-lstm"]
    assert [r["tokenizer"] for r in report["encode"]] == ["char", "word"]
    text = format_report(report)
    assert "tiny-lstm" in text and "GEMM bound" in text and "MB/s" in text
    json.dumps(report)  # plain data


def test_cli_bench_json_and_errors(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--json", "--sections", "encode", "--encode-mb", "0.2",
                 "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["encode"][0]["tokenizer"] == "char"
    assert json.loads(out.read_text())["encode"] == printed["encode"]
    assert main(["bench", "--sections", "encode", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["bench", "--workloads", "char-rnn,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "char-rnn" in err[0]


def test_bench_config_validation():
    with pytest.raises(ConfigError, match="rounds"):
        BenchConfig(rounds=0)
    with pytest.raises(ConfigError, match="sections"):
        BenchConfig(sections="train,fly")
    assert BenchConfig.quick(threads=1).threads == 1
