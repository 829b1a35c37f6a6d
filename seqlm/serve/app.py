"""The playground's web application: one page at ``/``, its API under ``/api``, the API's
description at ``/docs``.

Every answer is JSON (the page and the static files aside), errors included:
``{"error": message, "field": name or null}`` with 404 for an unknown run, 422 for a bad
field (named), 413 for a body larger than the text limit allows, 429 when the model's queue
is full, 500 for a failure of the server's own (which then goes on serving).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from seqlm.version import __version__
from seqlm.errors import SeqlmError
from seqlm.serve.analysis import sampling_plans
from seqlm.serve.limits import Busy, Gate, Limits
from seqlm.serve.routes import model_routes
from seqlm.serve.runs import ServedRun, UnknownRun, pick_run, run_history
from seqlm.serve.schemas import FieldError

STATIC = Path(__file__).parent / "static"
MAX_SAMPLING_TOKENS = 200  # the strategies tab draws every token of its example corpus
log = logging.getLogger("seqlm.serve")


def create_app(runs: dict[str, ServedRun], *, limits: Limits | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The ASGI application serving ``runs``.

    Args:
        runs: name → loaded run (see :func:`seqlm.serve.runs.load_runs`).
        limits: request limits (default :class:`Limits`).
        allowed_hosts: Host header values to accept (guards a loopback server against DNS
            rebinding); None accepts any.
    """
    limits = limits or Limits()
    app = FastAPI(title="seqlm playground", version=__version__, docs_url=None,
                  redoc_url=None, description="Look inside a trained seqlm language model.")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.runs, app.state.limits, app.state.gate = runs, limits, Gate(limits)
    _errors(app)
    max_body = 8 * limits.max_text + 4096  # UTF-8 text with JSON escapes, and the knobs

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > max_body:
            return error(413, f"the request body has {int(size):,} bytes; the server reads at "
                         f"most {max_body:,} (seqlm serve --max-text)")
        return await call_next(request)

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
    router = APIRouter(prefix="/api")

    @router.get("/runs")
    def list_runs() -> dict:
        """The runs being served (the first is the default of every request)."""
        return {"runs": [r.describe() for r in runs.values()], "limits": vars(limits),
                "queue": gate.report()}

    @router.get("/runs/{name:path}/metrics")
    def metrics(name: str) -> dict:
        """The run's training records (metrics.jsonl) and samples, as on disk now."""
        return run_history(pick_run(runs, name))

    @router.get("/sampling")
    def sampling(n_tokens: int = Query(35), batch_size: int = Query(2),
                 num_steps: int = Query(5), seed: int = Query(0)) -> dict:
        """One epoch of random sampling and of sequential partitioning on 0..n_tokens-1."""
        for field, value in (("n_tokens", n_tokens), ("batch_size", batch_size),
                             ("num_steps", num_steps)):
            if value < 1:
                raise FieldError(field, f"{field}={value} must be a positive integer")
        if n_tokens > MAX_SAMPLING_TOKENS:
            raise FieldError("n_tokens", f"n_tokens={n_tokens} is above the page's "
                             f"{MAX_SAMPLING_TOKENS}")
        try:
            plans = sampling_plans(n_tokens, batch_size, num_steps, seed)
        except SeqlmError as exc:
            raise FieldError("n_tokens", str(exc)) from None
        return {"n_tokens": n_tokens, "batch_size": batch_size, "num_steps": num_steps,
                "seed": seed, "strategies": plans}

    return router


def error(status: int, message: str, field: str | None = None, **headers) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status,
                        headers=headers or None)


def _errors(app: FastAPI) -> None:
    """Every failure as a JSON answer; the server keeps serving."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        return error(422, f"{field}: {first['msg']}" if field else first["msg"], field)

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
    async def user_error(request: Request, exc: SeqlmError):
        return error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error(500, f"the server failed on this request ({type(exc).__name__}: {exc}); "
                     "it goes on serving")
