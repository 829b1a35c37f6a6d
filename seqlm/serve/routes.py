"""The API routes that run the model: generate (streamed), score, states and gradients.

Each passes the :class:`~seqlm.serve.limits.Gate` and runs the model in a worker thread,
so the event loop keeps answering other requests. ``/api/generate`` takes its slot before
the answer starts (a full queue, or a wait past ``--queue-timeout``, is a 429 before any byte
of the stream), then answers NDJSON, one JSON object per line::

    {"type": "prefix", "run": ..., "tokens": [step, ...]}     the warm-up, scored
    {"type": "token", "text": ..., "id": ..., "prob": ..., "top": [[text, p], ...],
     "entropy": ...}                                          one line per new token
    {"type": "end", "tokens": n, "seconds": s}                or {"type": "error", ...}

Lines are flushed as soon as the first token exists, then in groups of whatever was sampled
within ``FLUSH_SECONDS``, so a fast model is not slowed by one network write per token.
"""

# No `from __future__ import annotations`: FastAPI reads the request bodies' types, made
# per server in model_routes, from the signatures at run time.
import json
import time
from collections.abc import Callable, Iterator

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from seqlm.errors import SeqlmError
from seqlm.serve import engine
from seqlm.serve.answers import GradientsAnswer, ScoreAnswer, StatesAnswer
from seqlm.serve.limits import Gate, Limits
from seqlm.serve.runs import ServedRun, pick_run
from seqlm.serve.schemas import FieldError, request_models

FLUSH_SECONDS = 0.02


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
    field: str | None = None


ERRORS = {
    400: {"model": ErrorBody, "description": "the Host header names another machine"},
    404: {"model": ErrorBody, "description": "no run of that name (field: run)"},
    413: {"model": ErrorBody, "description": "a body larger than the text limit allows"},
    422: {"model": ErrorBody, "description": "a field the server cannot use (named)"},
}
BUSY = {429: {"model": ErrorBody, "description": "the model's queue is full; retry after "
              "the Retry-After seconds"}}
STREAM = {200: {"description": "NDJSON lines: prefix, token..., end (or error)",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
          # stated as JSON here: the route's own media type is the stream's
          **{code: {"description": answer["description"], "content": {"application/json": {
              "schema": ErrorBody.model_json_schema()}}}
             for code, answer in {**ERRORS, **BUSY}.items()}}


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _take(steps: Iterator[dict], seconds: float) -> tuple[bytes, int, bool]:
    """Lines for the tokens sampled within ``seconds`` (at least one); ``(bytes, count,
    finished)``."""
    out, t0 = [], time.perf_counter()
    for row in steps:
        out.append(_line({"type": "token", **row}))
        if time.perf_counter() - t0 >= seconds:
            return b"".join(out), len(out), False
    return b"".join(out), len(out), True


class NDJSONStream(StreamingResponse):
    """The generation stream: closes its generator and gives the gate's slot back however
    the answer ends.

    When a client goes away in the middle, the server's ``send`` fails and Starlette leaves
    the generator suspended at a ``yield``; its cleanup would wait for the garbage collector.
    Closing it here runs it at once, and ``on_close`` (the gate's ``leave``) runs even when
    the generator never started.
    """

    media_type = "application/x-ndjson"

    def __init__(self, content, *, on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type=self.media_type)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self._on_close()


async def ndjson_stream(run: ServedRun, req, request: Request):
    """The lines of one ``/api/generate`` answer (see the module docstring); a failure
    after the first line ends the stream with an error line."""
    t0, count = time.perf_counter(), 0
    try:
        warm, steps = await anyio.to_thread.run_sync(lambda: engine.stream(
            run.lm, req.prefix, max_new_tokens=req.max_new_tokens,
            temperature=req.effective_temperature, top_k=req.top_k, top_p=req.top_p,
            seed=req.seed))
        yield _line({"type": "prefix", "run": run.name, "tokens": warm})
        finished, budget = False, 0.0  # the first token goes out alone, at once
        while not finished:
            if await request.is_disconnected():  # the page's Stop: free the slot now
                return
            chunk, n, finished = await anyio.to_thread.run_sync(_take, steps, budget)
            count, budget = count + n, FLUSH_SECONDS
            if chunk:
                yield chunk
        yield _line({"type": "end", "tokens": count, "seconds": time.perf_counter() - t0})
    except Exception as exc:  # a failure mid-stream ends the stream, not the server
        yield _line({"type": "error", "error": f"{type(exc).__name__}: {exc}"})


def model_routes(runs: dict[str, ServedRun], limits: Limits, gate: Gate) -> APIRouter:
    """The routes that run a model, each behind ``gate``."""
    router = APIRouter(prefix="/api")
    Generate, Text, Score = request_models(limits)

    async def in_worker(fn, *args):
        """Run ``fn(*args)`` in a thread while holding a slot of the gate."""
        await gate.enter()
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        finally:
            gate.leave()

    @router.post("/generate", response_class=NDJSONStream, status_code=200, responses=STREAM)
    async def generate(req: Generate, request: Request):
        """Stream a continuation of ``prefix`` as NDJSON (see the module docstring)."""
        run = pick_run(runs, req.run)
        req.check()
        await gate.enter()  # a full queue is a 429 now, before the answer starts
        return NDJSONStream(ndjson_stream(run, req, request), on_close=gate.leave)

    @router.post("/score", response_model=ScoreAnswer, responses={**ERRORS, **BUSY})
    async def score(req: Score) -> dict:
        """Per-token log-probability, surprisal and entropy of ``text``, perplexity,
        bits/token, and the bigram baseline on the same tokens where the run's corpus is
        readable; with ``reading`` other than static, the model that keeps learning as it
        reads beside the trained weights' own figures."""
        run = pick_run(runs, req.run)
        return await in_worker(engine.score_answer, run, req.text, req.reading)

    @router.post("/states", response_model=StatesAnswer, responses={**ERRORS, **BUSY})
    async def states(req: Text) -> dict:
        """Hidden state after every token, per layer (and an LSTM's cell state), and the
        units' rankings."""
        run = pick_run(runs, req.run)
        return await in_worker(engine.states_answer, run, req.text, limits.max_state_tokens)

    @router.post("/gradients", response_model=GradientsAnswer, responses={**ERRORS, **BUSY})
    async def gradients(req: Text) -> dict:
        """‖∂l_T/∂h_{T−k}‖ against the lag k on the text's last tokens."""
        run = pick_run(runs, req.run)
        if run.backend != "torch":
            raise FieldError("run", f"run {run.name!r} is served from its ONNX export, which "
                             "has no gradients; serve the run with --backend torch")
        ids = [int(i) for i in run.tokenizer.encode(req.text)][-limits.max_gradient_steps - 1:]
        try:
            out = await in_worker(_gradients, run, ids)
        except SeqlmError as exc:
            raise FieldError("text", str(exc)) from None
        unknown = int(np.sum(np.asarray(ids) == run.tokenizer.vocab.unk))
        return {"run": run.name, "unknown": unknown, **out}

    return router


def _gradients(run: ServedRun, ids: list[int]) -> dict:
    from seqlm.serve.analysis import gradient_by_lag  # torch: only where a route needs it

    out = gradient_by_lag(run.model, ids)
    for key in ("grad_norm", "jacobian_norm"):  # an exploding model's inf is JSON's null
        if out[key] is not None:
            out[key] = [engine.finite(x) for x in out[key]]
    return {**out, "growth": engine.finite(out["growth"]), "slope": engine.finite(out["slope"])}
