"""seqlm serve's API keeps its documented status codes under hostile requests.

Each request here is one a demanding user sent (issue 28): a full queue must be a 429 before
any byte of a stream, bad seeds, lone surrogates, wrong JSON types and malformed JSON a 422
naming the field in plain words, a body over the limit a 413 however it is sent, and no
request a 500. The queue is tested on a real server (uvicorn on loopback, in a thread), the
rest through the ASGI test client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from seqlm.decoding import MAX_SEED  # noqa: E402
from seqlm.serve import Limits, create_app, load_runs  # noqa: E402
from seqlm.serve.middleware import RequestGuard  # noqa: E402
from test_serve import make_run  # noqa: E402

LIMITS = Limits(max_text=500, max_new_tokens=2000, max_state_tokens=600,
                max_gradient_steps=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return load_runs([make_run(tmp_path_factory.mktemp("api"))])


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs, limits=LIMITS), raise_server_exceptions=False) as c:
        yield c


@contextlib.contextmanager
def serving(app):
    """The app on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def _post(client, path: str, body: bytes | dict, **headers):
    if isinstance(body, dict):
        return client.post(path, json=body)
    return client.post(path, content=body,
                       headers={"Content-Type": "application/json", **headers})


def _refused(response, status: int, field: str | None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    out = response.json()
    assert out["field"] == field, out
    return out["error"]


def test_a_full_queue_is_429_before_any_byte_of_the_stream(runs):
    app = create_app(runs, limits=Limits(max_concurrent=1, max_queued=1, queue_timeout=30))
    body = {"prefix": "the ", "max_new_tokens": 2000, "seed": 1}
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/api/generate", json=body) as first:  # holds the slot
            assert first.status_code == 200
            lines = first.iter_lines()
            assert json.loads(next(lines))["type"] == "prefix"
            queued: list = []
            waiter = threading.Thread(target=lambda: queued.append(
                http.post("/api/generate", json={**body, "max_new_tokens": 20})))
            waiter.start()
            deadline = time.monotonic() + 20
            while http.get("/api/runs").json()["queue"]["waiting"] < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.01)
            for path, extra in (("/api/generate", {}), ("/api/score", {"text": "the"})):
                full = http.post(path, json={**(body if not extra else {}), **extra})
                assert _refused(full, 429, None).endswith("retry shortly")
                assert full.headers["retry-after"] == "1"
        waiter.join(30)  # the first stream closed: the queued one ran to its end
    answer = [json.loads(line) for line in queued[0].text.splitlines()]
    assert queued[0].status_code == 200
    assert [x["type"] for x in answer] == ["prefix"] + ["token"] * 20 + ["end"]


@pytest.mark.slow  # about 3 s
def test_a_burst_gets_whole_streams_or_429_never_an_error_line(runs):
    app = create_app(runs, limits=Limits(max_concurrent=2, max_queued=2, queue_timeout=30))
    body = {"prefix": "the ", "max_new_tokens": 300, "seed": 3}

    async def burst(url: str) -> list:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/api/generate", json=body)
                                          for _ in range(12)))

    with serving(app) as url:
        answers = asyncio.run(burst(url))
        assert httpx.get(f"{url}/api/runs").json()["queue"] == {
            "running": 0, "waiting": 0, "max_concurrent": 2, "max_queued": 2}
    for answer in answers:
        if answer.status_code == 429:
            assert "retry" in answer.json()["error"]
            continue
        kinds = [json.loads(line)["type"] for line in answer.text.splitlines()]
        assert answer.status_code == 200 and kinds[-1] == "end" and "error" not in kinds


@pytest.mark.parametrize("raw, field, words", [
    (b'{"seed": -1}', "seed", ">= 0"),
    (f'{{"seed": {MAX_SEED + 1}}}'.encode(), "seed", "<= "),
    (b'{"seed": 1180591620717411303424}', "seed", "<= "),
    (b'{"seed": "7"}', "seed", "must be an integer"),
    (b'{"top_k": true}', "top_k", "must be an integer, got true"),
    (b'{"top_k": "3"}', "top_k", "must be an integer"),
    (b'{"top_k": 2.0}', "top_k", "must be an integer"),
    (b'{"greedy": "yes"}', "greedy", "must be true or false"),
    (b'{"greedy": 1}', "greedy", "must be true or false"),
    (b'{"temperature": "0.5"}', "temperature", "must be a number"),
    (b'{"temperature": NaN}', "temperature", "finite number"),
    (b'{"max_new_tokens": 2001}', "max_new_tokens", "<= 2000"),
    (b'{"prefix": 5}', "prefix", "must be a string"),
    (b'{"prefix": "the \\ud800 time"}', "prefix", "lone surrogate"),
    (b'{"run": "\\udfff"}', "run", "lone surrogate"),
    (b'{"topk": 3}', "topk", "not a field"),
    (b'{not json', "body", "not valid JSON"),
    (b'{"prefix": "the"', "body", "not valid JSON"),
    (b'[1, 2]', "body", "one JSON object"),
    (b'"the time"', "body", "one JSON object"),
    (b'\xff\xfe{"prefix": 1}', "body", "JSON"),
])
def test_generate_refuses_a_bad_body_with_422_naming_the_field(client, raw, field, words):
    message = _refused(_post(client, "/api/generate", raw), 422, field)
    assert words in message and "\n" not in message
    if field != "body":
        assert f"`{field}`" in message


@pytest.mark.parametrize("path", ["/api/score", "/api/states", "/api/gradients"])
@pytest.mark.parametrize("raw, field", [
    (b'{"text": "a \\ud800"}', "text"), (b'{"text": 3}', "text"), (b'{}', "text"),
    (b'{"text": ""}', "text"), (b'{"text": null}', "text"), (b'{"text": "ab", "x": 1}', "x"),
])
def test_text_routes_refuse_bad_text_with_422(client, path, raw, field):
    _refused(_post(client, path, raw), 422, field)


@pytest.mark.parametrize("query, field", [
    ("seed=1180591620717411303424", "seed"), ("seed=-1", "seed"), ("seed=1.5", "seed"),
    ("n_tokens=0", "n_tokens"), ("batch_size=99999999999999999999", "batch_size"),
    ("num_steps=x", "num_steps"), ("n_tokens=8&batch_size=2&num_steps=5", "n_tokens"),
])
def test_sampling_query_refuses_bad_numbers_with_422(client, query, field):
    _refused(client.get(f"/api/sampling?{query}"), 422, field)
    assert client.get(f"/api/sampling?seed={MAX_SEED}").status_code == 200


def test_bodies_over_the_limit_are_413_chunked_or_not(client):
    big = b'{"text": "' + b"x" * 10_000 + b'"}'
    _refused(_post(client, "/api/score", big), 413, "body")

    def chunks():  # no Content-Length: sent chunked
        for _ in range(50):
            yield b"x" * 1000

    response = client.post("/api/score", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert "--max-text" in _refused(response, 413, "body")


def test_a_chunked_body_is_refused_after_the_limit_without_reading_the_rest():
    """The guard reads at most one chunk past the limit of a body that never ends."""
    sent, read = [], [0]

    async def endless() -> dict:
        read[0] += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the body passed the guard")

    guard = RequestGuard(app, max_body=8096)
    scope = {"type": "http", "method": "POST", "path": "/api/score",
             "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(guard(scope, endless, send))
    assert sent[0]["status"] == 413 and read[0] == 9  # 9,000 bytes > 8,096: stop there


def test_score_compares_model_and_bigram_on_the_same_tokens(client, runs):
    out = client.post("/api/score", json={"text": "the time"}).json()
    lib = runs["tiny"].lm.score("the time")
    rows = out["tokens"]
    assert len(rows) == len(lib.ids) and all(r["bigram_logprob"] is not None for r in rows)
    assert rows[0]["prob"] > 0 and rows[0]["entropy"] > 0  # the first token is scored
    model_bits = -sum(r["logprob"] for r in rows) / len(rows) / 0.6931471805599453
    bigram_bits = -sum(r["bigram_logprob"] for r in rows) / len(rows) / 0.6931471805599453
    assert out["bits_per_token"] == pytest.approx(model_bits)
    assert out["baseline"]["bits_per_token"] == pytest.approx(bigram_bits)


def test_a_lone_surrogate_in_an_unknown_run_name_is_answered_not_crashed(client):
    response = client.get("/api/runs/%ED%A0%80/metrics")
    assert response.status_code == 404 and response.json()["field"] == "run"
    assert client.get("/api/nothing-here").status_code == 404
    assert client.put("/api/score").status_code == 405


def test_the_sampling_view_without_torch_is_501_not_500(client, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails, as without it
    monkeypatch.delitem(sys.modules, "seqlm.serve.analysis", raising=False)
    monkeypatch.delitem(sys.modules, "seqlm.batches", raising=False)
    assert "torch" in _refused(client.get("/api/sampling"), 501, None)


def test_the_server_answers_normally_after_all_of_it(client):
    response = client.post("/api/generate", json={"prefix": "the ", "max_new_tokens": 5,
                                                  "seed": MAX_SEED})
    kinds = [json.loads(line)["type"] for line in response.text.splitlines()]
    assert response.status_code == 200 and kinds == ["prefix"] + ["token"] * 5 + ["end"]
