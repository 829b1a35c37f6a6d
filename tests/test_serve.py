"""seqlm serve's API through the ASGI test client: every endpoint, bad inputs and limits.

The numbers must be the library's: generation equals :meth:`LanguageModel.generate` with the
same seed, scores equal :meth:`LanguageModel.score`, states :meth:`LanguageModel.states`.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402
from seqlm.checkpoint import save_checkpoint  # noqa: E402
from seqlm.cli import main  # noqa: E402
from seqlm.config import DataConfig, ModelConfig  # noqa: E402
from seqlm.batches import random_plan, sequential_plan  # noqa: E402
from seqlm.data import build_corpus  # noqa: E402
from seqlm.metrics import bigram_nll, unigram_nll  # noqa: E402
from seqlm.models import RNNLM  # noqa: E402
from seqlm.serve import Limits, create_app, load_runs  # noqa: E402
from seqlm.serve.units import text_features  # noqa: E402
from seqlm.serve.baseline import Bigram  # noqa: E402
from seqlm.serve.limits import Busy, Gate  # noqa: E402

SPLIT = "0.8,0.2,0"
QUOTED = 'the "time traveller" (for so it will be) was expounding'


def make_run(root: Path, name: str = "tiny", *, hidden_size: int = 16, seed: int = 0) -> Path:
    """A run directory as seqlm train leaves it (untrained weights: the API does not care)."""
    corpus_file = root / "tiny.txt"
    corpus_file.write_text(TINY_TEXT, encoding="utf-8")
    data = DataConfig(corpus=str(corpus_file), split=SPLIT)
    corpus = build_corpus(TINY_TEXT, tokenizer="char", split=data.split_fractions())
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, cell="gru",
                              hidden_size=hidden_size, embedding_dim=8))
    run = root / name
    save_checkpoint(run / "checkpoints" / "best", model, corpus.tokenizer,
                    extra_config={"data": asdict(data)})
    (run / "config.json").write_text(json.dumps({"data": asdict(data)}), encoding="utf-8")
    records = [{"kind": "train", "step": 5, "tokens": 160, "loss": 3.2, "ppl": 24.5,
                "lr": 1e-3, "grad_norm": 0.4, "elapsed": 0.5},
               {"kind": "eval", "step": 5, "tokens": 160, "val_ppl": 23.0, "elapsed": 0.6}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "samples.txt").write_text("--- step 5\nthe time tr\n--- step 10\nthe time x\n")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return load_runs([make_run(root), make_run(root, "other", hidden_size=12, seed=1)])


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs, limits=Limits(max_text=500, max_new_tokens=300,
                                                   max_state_tokens=100,
                                                   max_gradient_steps=30))) as c:
        yield c


def stream_lines(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_runs_lists_each_served_run(client):
    out = client.get("/api/runs").json()
    assert [r["name"] for r in out["runs"]] == ["tiny", "other"]
    assert out["runs"][1]["hidden_size"] == 12 and out["runs"][0]["has_metrics"]
    assert out["limits"]["max_new_tokens"] == 300


def test_generate_streams_the_library_s_tokens(client, runs):
    body = {"prefix": "the time", "max_new_tokens": 40, "temperature": 0.9, "top_k": 8,
            "seed": 7}
    response = client.post("/api/generate", json=body)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = stream_lines(response)
    assert [x["type"] for x in lines] == ["prefix"] + ["token"] * 40 + ["end"]
    assert "".join(t["text"] for t in lines[0]["tokens"]) == "the time"
    tokens = lines[1:-1]
    expected = runs["tiny"].lm.generate("the time", max_new_tokens=40, temperature=0.9,
                                        top_k=8, seed=7)
    assert "the time" + "".join(t["text"] for t in tokens) == expected
    for t in tokens:
        probs = [p for _, p in t["top"]]
        assert len(probs) == 10 and probs == sorted(probs, reverse=True)
        vocab = len(runs["tiny"].lm.tokenizer.vocab)
        assert 0 < t["prob"] <= 1 and 0 < t["entropy"] <= math.log2(vocab) + 1e-9
    assert lines[-1]["tokens"] == 40
    again = stream_lines(client.post("/api/generate", json=body))
    assert [t["id"] for t in again[1:-1]] == [t["id"] for t in tokens]


def test_greedy_and_the_second_run(client, runs):
    lines = stream_lines(client.post("/api/generate", json={
        "run": "other", "prefix": "the ", "max_new_tokens": 15, "greedy": True,
        "temperature": 5.0}))
    assert lines[0]["run"] == "other"
    text = "the " + "".join(t["text"] for t in lines[1:-1])
    assert text == runs["other"].lm.generate("the ", max_new_tokens=15, temperature=0)
    assert all(t["prob"] == pytest.approx(t["top"][0][1]) for t in lines[1:-1])  # argmax


@pytest.mark.parametrize("body, field", [
    ({"temperature": -1}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": "most"}, "top_p"),
    ({"max_new_tokens": 301}, "max_new_tokens"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"prefix": "x" * 501}, "prefix"),
    ({"topk": 3}, "topk"),
])
def test_bad_knobs_are_422_naming_the_field(client, body, field):
    response = client.post("/api/generate", json=body)
    assert response.status_code == 422
    out = response.json()
    assert out["field"] == field and field in out["error"]


def test_a_body_beyond_the_text_limit_is_refused_unread(client):
    response = client.post("/api/score", content=b"x" * 10_000,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "--max-text" in response.json()["error"]


def test_unknown_run_and_bad_json_are_json_errors(client):
    response = client.post("/api/score", json={"run": "nope", "text": "abc"})
    assert response.status_code == 404 and "'tiny'" in response.json()["error"]
    assert client.get("/api/runs/nope/metrics").status_code == 404
    response = client.post("/api/score", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]
    assert client.post("/api/score", json={}).json()["field"] == "text"


def test_score_equals_the_library_and_marks_unknown_tokens(client, runs):
    text = "the time traveller zq"  # z and q are not in the tiny corpus
    out = client.post("/api/score", json={"text": text}).json()
    lib = runs["tiny"].lm.score(text)
    assert out["perplexity"] == pytest.approx(lib.perplexity)
    assert out["bits_per_token"] == pytest.approx(lib.bits_per_token)
    assert "".join(t["text"] for t in out["tokens"]) == text
    assert [t["unknown"] for t in out["tokens"]][-2:] == [True, True] and out["unknown"] == 2
    for row, lp in zip(out["tokens"], lib.logprobs):
        assert row["logprob"] == pytest.approx(lp)
        assert row["surprisal"] == pytest.approx(-lp / math.log(2))
    assert all(t["bigram_logprob"] < 0 for t in out["tokens"])
    vocab = len(runs["tiny"].lm.tokenizer.vocab)
    for row, nats in zip(out["tokens"], lib.entropy):  # the model's, in bits
        assert row["entropy"] == pytest.approx(nats / math.log(2))
        assert 0 < row["entropy"] <= math.log2(vocab) + 1e-9
    base = [t["bigram_logprob"] for t in out["tokens"]]  # the same tokens as the model's
    assert out["baseline"]["perplexity"] == pytest.approx(math.exp(-np.mean(base)))
    assert out["baseline"]["name"].endswith("bigram") and out["baseline"]["perplexity"] > 1


@pytest.mark.slow  # chooses reading settings on val
def test_score_reads_with_the_cache_and_adaptation_the_run_stored(tmp_path, capsys):
    """The Score tab's readings: a 422 naming `reading` until settings are chosen and
    stored, then the library's cache+dynamic figures beside the trained weights' own."""
    run = make_run(tmp_path)
    runs = load_runs([run])
    with TestClient(create_app(runs)) as c:
        text = "the time traveller the time traveller"
        refused = c.post("/api/score", json={"text": text, "reading": "cache"})
        assert refused.status_code == 422 and refused.json()["field"] == "reading"
        assert "seqlm evaluate RUN --cache SIZE" in refused.json()["error"]
        assert main(["evaluate", str(run), "--cache", "40", "--dynamic", "sgd", "--split", "val",
                     "--json"]) == 0
        capsys.readouterr()
        out = c.post("/api/score", json={"text": text, "reading": "cache+dynamic"}).json()
        lib = runs["tiny"].lm.score(text, cache=True, dynamic=True)
        assert out["evaluation"] == lib.evaluation == "cache+dynamic"
        assert out["perplexity"] == pytest.approx(lib.perplexity)
        assert out["static_perplexity"] == pytest.approx(math.exp(-lib.static_logprobs.mean()))
        for row, lp, slp in zip(out["tokens"], lib.logprobs, lib.static_logprobs):
            assert row["logprob"] == pytest.approx(lp)
            assert row["static_logprob"] == pytest.approx(slp)
        static = c.post("/api/score", json={"text": text}).json()
        assert static["evaluation"] == "static" and static.get("static_perplexity") is None
        assert all(row.get("static_logprob") is None for row in static["tokens"])
        bad = c.post("/api/score", json={"text": text, "reading": "both"})
        assert bad.status_code == 422 and bad.json()["field"] == "reading"


def test_word_tokens_read_with_their_spaces(tmp_path):
    from seqlm.tokenize import WordTokenizer

    tok = WordTokenizer.fit("the time traveller was expounding a matter to us")
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), cell="gru", hidden_size=8))
    save_checkpoint(tmp_path / "words", model, tok)  # a bare checkpoint: no corpus, no metrics
    with TestClient(create_app(load_runs([tmp_path / "words"]))) as c:
        out = c.post("/api/score", json={"text": "the time machine was a matter"}).json()
        assert "".join(t["text"] for t in out["tokens"]) == "the time machine was a matter"
        assert [t["unknown"] for t in out["tokens"]] == [False, False, True, False, False,
                                                         False]
        assert "unavailable" in out["baseline"]
        states = c.post("/api/states", json={"text": "the time machine"}).json()
        assert states["tokens"] == ["the", " time", " machine"]
        assert c.get("/api/runs/words/metrics").json()["records"] == []


def test_bigram_per_token_agrees_with_the_training_baseline():
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 7, 500), rng.integers(0, 7, 60)
    lp = Bigram(train, 7, 0.1).logprobs(test)
    assert -lp[0] == pytest.approx(unigram_nll(train, test[:1], 7))  # no context: unigram
    assert -lp.sum() == pytest.approx(bigram_nll(train, test, 7, 0.1) * 60)


def test_states_are_the_library_s_with_ranked_units(client, runs):
    out = client.post("/api/states", json={"text": QUOTED}).json()
    h = runs["tiny"].lm.states(QUOTED)
    assert (out["layers"], len(out["tokens"]), out["hidden_size"]) == h.shape
    assert np.allclose(np.array(out["states"]), h, atol=1e-4)
    variances = [v for _, _, v in out["ranking"]["variance"]]
    assert variances == sorted(variances, reverse=True)
    assert variances[0] == pytest.approx(h[0].var(axis=0).max(), rel=1e-5)
    assert out["ranking"]["correlation"]["inside quotes"]
    response = client.post("/api/states", json={"text": "a" * 101})
    assert response.status_code == 422 and "100" in response.json()["error"]


def test_text_features():
    f = text_features(list('a "b" (c)\nd'))
    assert f["inside quotes"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert f["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert f["position in line"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert f["after a space"].tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert f["punctuation"].tolist() == [0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0]


def test_text_features_read_chinese():
    f = text_features(list("他说：「你好（朋友）。」我笑了。"))
    assert f["inside quotes"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert f["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert f["position in sentence"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2,
                                                  3, 4]
    assert "after a space" not in f and "position in line" not in f  # meaningless here


def test_gradients_per_lag_on_the_text_s_last_tokens(client):
    out = client.post("/api/gradients", json={"text": "the time traveller"}).json()
    assert out["lag"] == list(range(17)) and len(out["grad_norm"]) == 17
    assert all(g > 0 and math.isfinite(g) for g in out["grad_norm"])
    assert out["jacobian_norm"][0] == 1.0 and len(out["jacobian_norm"]) == 17  # a small state
    assert out["growth"] == pytest.approx(out["grad_norm"][-1] / out["grad_norm"][0])
    long = client.post("/api/gradients", json={"text": TINY_TEXT[:200]}).json()
    assert long["num_steps"] == 30  # the limit: the text's last 31 tokens
    short = client.post("/api/gradients", json={"text": "t"})
    assert short.status_code == 422 and short.json()["field"] == "text"


def test_sampling_plans_are_the_data_module_s(client):
    out = client.get("/api/sampling?n_tokens=35&batch_size=2&num_steps=5&seed=3").json()
    plans = out["strategies"]
    gen = torch.Generator().manual_seed(3)
    assert plans["random"]["starts"] == random_plan(35, 2, 5, gen).tolist()
    gen = torch.Generator().manual_seed(3)
    assert plans["sequential"]["starts"] == sequential_plan(35, 2, 5, gen).tolist()
    assert plans["sequential"]["contiguous"] and not plans["random"]["contiguous"]
    response = client.get("/api/sampling?n_tokens=8&batch_size=2&num_steps=5")
    assert response.status_code == 422 and "needs at least 15" in response.json()["error"]
    assert client.get("/api/sampling?n_tokens=500").json()["field"] == "n_tokens"


def test_metrics_follow_a_run_being_written(client, runs):
    run = runs["tiny"].path
    out = client.get("/api/runs/tiny/metrics").json()
    assert [r["kind"] for r in out["records"]] == ["train", "eval"]
    assert out["samples"] == [{"step": 5, "text": "the time tr"},
                              {"step": 10, "text": "the time x"}]
    with open(run / "metrics.jsonl", "a") as f:  # a writer caught mid-line
        f.write('{"kind": "train", "step": 10, "loss": NaN, "ppl": Infinity}\n{"kind": "tr')
    out = client.get("/api/runs/tiny/metrics").json()
    assert len(out["records"]) == 3 and out["records"][-1]["ppl"] is None
    (run / "metrics.jsonl").rename(run / "moved.jsonl")
    try:
        assert client.get("/api/runs/tiny/metrics").json()["records"] == []
    finally:
        (run / "moved.jsonl").rename(run / "metrics.jsonl")


def test_a_failing_request_is_500_json_and_the_server_goes_on(runs, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    with TestClient(create_app(runs), raise_server_exceptions=False) as c:
        monkeypatch.setattr(runs["tiny"].lm, "score", broken)
        response = c.post("/api/score", json={"text": "the time"})
        assert response.status_code == 500 and "disk on fire" in response.json()["error"]
        monkeypatch.undo()
        assert c.post("/api/score", json={"text": "the time"}).status_code == 200


def test_a_full_queue_is_429(runs):
    app = create_app(runs, limits=Limits(max_concurrent=1, max_queued=0))
    with TestClient(app) as c:
        app.state.gate.running = 1  # a generation holds the only slot
        for path, body in (("/api/generate", {}), ("/api/score", {"text": "the"})):
            response = c.post(path, json=body)
            assert response.status_code == 429 and response.headers["retry-after"] == "1"
            assert "retry" in response.json()["error"]


def test_gate_queues_then_refuses():
    async def scenario():
        gate = Gate(Limits(max_concurrent=1, max_queued=1, queue_timeout=0.2))
        await gate.enter()
        waiter = asyncio.create_task(gate.enter())  # queued
        await asyncio.sleep(0.01)
        with pytest.raises(Busy):  # the queue is full
            await gate.enter()
        gate.leave()
        await waiter  # got the slot
        with pytest.raises(Busy, match="waited"):  # times out in the queue
            await gate.enter()
        gate.leave()
        assert (gate.running, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_page_docs_and_static_files_make_no_external_request(client):
    from seqlm.serve.app import STATIC

    page = client.get("/")
    assert page.status_code == 200 and 'data-tab="sampling"' in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/api/generate" in docs.text
    assert client.get("/openapi.json").json()["paths"]["/api/score"]
    for file in STATIC.iterdir():
        text = file.read_text(encoding="utf-8")
        assert "http:" not in text and "https:" not in text and "//cdn" not in text, file.name
        assert client.get(f"/static/{file.name}").status_code == 200


def test_host_header_outside_the_allowed_names_is_refused(runs):
    with TestClient(create_app(runs, allowed_hosts=["127.0.0.1"]),
                    base_url="http://127.0.0.1") as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400


def test_serve_refuses_a_bad_run_or_port_before_starting(tmp_path, capsys, runs):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert main(["serve", str(runs["tiny"].path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(runs["tiny"].path), "--max-concurrent", "0"]) == 2


def test_serve_refuses_a_taken_port(runs, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(runs["tiny"].path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "--port" in err


def test_serve_prints_the_url_and_warns_off_loopback(runs, capsys, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets: served.append(sockets[0].getsockname()[1]))
    # 127.0.0.2 is still this machine, but not a name the server treats as loopback
    assert main(["serve", str(runs["tiny"].path), "--host", "127.0.0.2", "--port", "0"]) == 0
    out = capsys.readouterr()
    port = served[0]
    assert f"http://127.0.0.2:{port}/" in out.out and "warning" in out.err
    assert main(["serve", str(runs["tiny"].path), "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_serve_without_the_web_stack_says_how_to_install_it(runs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    assert main(["serve", str(runs["tiny"].path)]) == 2
    assert "pip install -e '.[serve]'" in capsys.readouterr().err
