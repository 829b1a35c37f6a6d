"""The playground's web application: one page at ``/``, its API under ``/api``, the API's
description at ``/docs``.

Every answer is JSON (the page, the static files and the generation stream aside), errors
included: ``{"error": message, "field": name or null}`` with 400 for a Host header naming
another machine, 404 for an unknown run or path, 413 for a body larger than the text limit
allows, 422 for a bad field (named), 429 when the model's queue is full, 501 for the sampling
view where torch is not installed. A failure of the server's own would be a 500 after which
it goes on serving; no request should cause one (``tests/test_serve_fuzz.py`` looks for one).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from seqlm.decoding import MAX_SEED
from seqlm.version import __version__
from seqlm.errors import SeqlmError
from seqlm.serve.limits import Busy, Gate, Limits
from seqlm.serve.middleware import RequestGuard, safe_text
from seqlm.serve.routes import ERRORS, ErrorBody, model_routes
from seqlm.serve.card import run_card
from seqlm.serve.runs import ServedRun, UnknownRun, pick_run, run_history
from seqlm.serve.schemas import FieldError, plain_message

STATIC = Path(__file__).parent / "static"
MAX_SAMPLING_TOKENS = 200  # the strategies tab draws every token of its example corpus
NO_TORCH = {501: {"model": ErrorBody, "description": "torch is not installed here"}}
log = logging.getLogger("seqlm.serve")


def create_app(runs: dict[str, ServedRun], *, limits: Limits | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The ASGI application serving ``runs``.

    Args:
        runs: name → loaded run (see :func:`seqlm.serve.runs.load_runs`).
        limits: request limits (default :class:`Limits`).
        allowed_hosts: Host names to accept (guards a loopback server against DNS
            rebinding); None accepts any.
    """
    limits = limits or Limits()
    app = FastAPI(title="seqlm playground", version=__version__, docs_url=None,
                  redoc_url=None, description="Look inside a trained seqlm language model.")
    max_body = 8 * limits.max_text + 4096  # UTF-8 text with JSON escapes, and the knobs
    app.add_middleware(RequestGuard, max_body=max_body, allowed_hosts=allowed_hosts)
    app.state.runs, app.state.limits, app.state.gate = runs, limits, Gate(limits)
    _errors(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(page_routes())
    app.include_router(info_routes(runs, limits, app.state.gate))
    app.include_router(model_routes(runs, limits, app.state.gate))
    return app


def page_routes() -> APIRouter:
    """The page and the API's description, both files of this package."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/docs")
    def docs():
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    return router


def info_routes(runs: dict[str, ServedRun], limits: Limits, gate: Gate) -> APIRouter:
    """The routes that read files or compute without a model: runs, metrics, sampling."""
    router = APIRouter(prefix="/api", responses=ERRORS)

    @router.get("/runs")
    def list_runs() -> dict:
        """The runs being served (the first is the default of every request)."""
        return {"runs": [r.describe() for r in runs.values()], "limits": vars(limits),
                "queue": gate.report()}

    @router.get("/runs/{name:path}/card")
    def card(name: str) -> dict:
        """What the run is: its corpus, tokenizer, budget and time trained, best validation
        perplexity against the unigram and bigram baselines, the recipe's choices, texts of
        its validation split, and how to use it from Python and the command line."""
        return run_card(pick_run(runs, name))

    @router.get("/runs/{name:path}/metrics")
    def metrics(name: str) -> dict:
        """The run's training records (metrics.jsonl) and samples, as on disk now."""
        return run_history(pick_run(runs, name))

    @router.get("/sampling", responses=NO_TORCH)
    def sampling(n_tokens: int = Query(35, ge=1, le=MAX_SAMPLING_TOKENS),
                 batch_size: int = Query(2, ge=1, le=MAX_SAMPLING_TOKENS),
                 num_steps: int = Query(5, ge=1, le=MAX_SAMPLING_TOKENS),
                 seed: int = Query(0, ge=0, le=MAX_SEED)) -> dict:
        """One epoch of random sampling and of sequential partitioning on 0..n_tokens-1."""
        try:
            from seqlm.serve.analysis import sampling_plans
        except ModuleNotFoundError as exc:  # a torch-free install serving exports
            if exc.name != "torch":
                raise
            return error(501, "the sampling view draws with training's own torch generator, "
                         "and torch is not installed here")

        try:
            plans = sampling_plans(n_tokens, batch_size, num_steps, seed)
        except SeqlmError as exc:
            raise FieldError("n_tokens", str(exc)) from None
        return {"n_tokens": n_tokens, "batch_size": batch_size, "num_steps": num_steps,
                "seed": seed, "strategies": plans}

    return router


def error(status: int, message: str, field: str | None = None, **headers) -> JSONResponse:
    return JSONResponse(ErrorBody(error=safe_text(message), field=field).model_dump(),
                        status_code=status, headers=headers or None)


def _errors(app: FastAPI) -> None:
    """Every failure as a JSON answer; the server keeps serving."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        field, message = plain_message(problems[0]) if problems else ("body", "invalid body")
        return error(422, message, field)

    @app.exception_handler(FieldError)
    async def bad_field(request: Request, exc: FieldError):
        return error(422, str(exc), exc.field)

    @app.exception_handler(UnknownRun)
    async def unknown(request: Request, exc: UnknownRun):
        return error(404, str(exc), "run")

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return error(429, str(exc), None, **{"Retry-After": "1"})

    @app.exception_handler(SeqlmError)
    async def user_error(request: Request, exc: SeqlmError):  # a rule no route named
        return error(422, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8 JSON)
            return error(422, "the body is not JSON text (UTF-8); send one JSON object",
                         "body")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error(500, f"the server failed on this request ({type(exc).__name__}: {exc}); "
                     "it goes on serving")
