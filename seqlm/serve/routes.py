"""The API routes that run the model: generate (streamed), score, states and gradients.

Each passes the :class:`~seqlm.serve.limits.Gate` and runs the model in a worker thread,
so the event loop keeps answering other requests. ``/api/generate`` answers NDJSON, one JSON
object per line::

    {"type": "prefix", "run": ..., "tokens": [step, ...]}     the warm-up, scored
    {"type": "token", "text": ..., "id": ..., "prob": ..., "top": [[text, p], ...],
     "entropy": ...}                                          one line per new token
    {"type": "end", "tokens": n, "seconds": s}                or {"type": "error", ...}

Lines are flushed as soon as the first token exists, then in groups of whatever was sampled
within ``FLUSH_SECONDS``, so a fast model is not slowed by one network write per token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from seqlm.errors import SeqlmError
from seqlm.serve import engine
from seqlm.serve.engine import LN2, finite
from seqlm.serve.analysis import gradient_by_lag, rank_units
from seqlm.serve.limits import Busy, Gate, Limits
from seqlm.serve.runs import ServedRun, pick_run
from seqlm.serve.schemas import FieldError, GenerateRequest, TextRequest, check_text

FLUSH_SECONDS = 0.02


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


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its generator however the answer ends.

    When a client goes away in the middle, the server's ``send`` fails and Starlette leaves
    the generator suspended at a ``yield``; its ``finally`` (which gives the gate's slot
    back) would wait for the garbage collector. Closing it here runs it at once.
    """

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def ndjson_stream(gate: Gate, run: ServedRun, req: GenerateRequest, request: Request):
    """The lines of one ``/api/generate`` answer (see the module docstring). The gate's slot
    is taken when the stream starts and given back when it ends, fails or the client leaves;
    a turn that never comes (the queue timed out) ends the stream with an error line."""
    t0, count = time.perf_counter(), 0
    try:
        await gate.enter()
    except Busy as exc:
        yield _line({"type": "error", "error": str(exc)})
        return
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
    finally:
        gate.leave()


def model_routes(runs: dict[str, ServedRun], limits: Limits, gate: Gate) -> APIRouter:
    """The routes that run a model, each behind ``gate``."""
    router = APIRouter(prefix="/api")

    async def in_worker(fn, *args):
        """Run ``fn(*args)`` in a thread while holding a slot of the gate."""
        await gate.enter()
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        finally:
            gate.leave()

    @router.post("/generate")
    async def generate(req: GenerateRequest, request: Request):
        """Stream a continuation of ``prefix`` as NDJSON (see the module docstring)."""
        run = pick_run(runs, req.run)
        req.check(limits)
        gate.check()  # a full queue is a 429 now; the stream takes its turn when it starts
        return ClosingStream(ndjson_stream(gate, run, req, request),
                             media_type="application/x-ndjson")

    @router.post("/score")
    async def score(req: TextRequest) -> dict:
        """Per-token log-probability and surprisal of ``text``, perplexity, bits/token, the
        bigram baseline's per-token log-probability where the run's corpus is readable."""
        run = pick_run(runs, req.run)
        check_text("text", req.text, limits)
        return await in_worker(_score, run, req.text)

    @router.post("/states")
    async def states(req: TextRequest) -> dict:
        """Hidden state after every token, per layer, and the units worth a look."""
        run = pick_run(runs, req.run)
        check_text("text", req.text, limits)
        return await in_worker(_states, run, req.text, limits.max_state_tokens)

    @router.post("/gradients")
    async def gradients(req: TextRequest) -> dict:
        """‖∂l_T/∂h_{T−k}‖ against the lag k on the text's last tokens."""
        run = pick_run(runs, req.run)
        check_text("text", req.text, limits)
        ids = [int(i) for i in run.tokenizer.encode(req.text)][-limits.max_gradient_steps - 1:]
        try:
            return {"run": run.name, **await in_worker(gradient_by_lag, run.model, ids)}
        except SeqlmError as exc:
            raise FieldError("text", str(exc)) from None

    return router


def _score(run: ServedRun, text: str) -> dict:
    try:
        result, rows = engine.score_rows(run.lm, text)
    except SeqlmError as exc:
        raise FieldError("text", str(exc)) from None
    bigram = run.bigram()
    out = {"run": run.name, "tokens": rows, "perplexity": finite(result.perplexity),
           "bits_per_token": finite(result.bits_per_token),
           "unknown": int(result.unknown.sum())}
    if isinstance(bigram, str):
        out["baseline"] = {"unavailable": bigram}
        return out
    base = bigram.logprobs(result.ids)  # the first token has no bigram context: NaN
    for row, lp in zip(rows, base):
        row["bigram_logprob"] = finite(float(lp))
    if len(base) > 1:
        nll = -float(np.mean(base[1:]))
        out["baseline"] = {"name": f"add-{bigram.k:g} bigram", "bits_per_token": nll / LN2,
                           "perplexity": finite(math.exp(min(nll, 700)))}
    else:
        out["baseline"] = {"unavailable": "the bigram baseline needs two tokens"}
    return out


def _states(run: ServedRun, text: str, max_tokens: int) -> dict:
    ids = run.tokenizer.encode(text)
    if len(ids) > max_tokens:
        raise FieldError("text", f"text has {len(ids):,} tokens; hidden states are served for "
                         f"at most {max_tokens:,} (seqlm serve --max-state-tokens)")
    try:
        h, texts = engine.states(run.lm, text)
    except SeqlmError as exc:
        raise FieldError("text", str(exc)) from None
    return {"run": run.name, "tokens": texts, "layers": int(h.shape[0]),
            "hidden_size": int(h.shape[2]), "states": np.round(h, 4).tolist(),
            "ranking": rank_units(h, texts)}
