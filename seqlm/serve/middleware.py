"""What every request passes before a route sees it: the Host check and the body limit.

A plain ASGI middleware (no buffering of answers, so streams stay streams). The body is read
here, up to the limit and no further, whether the client declared a ``Content-Length`` or
sent chunks: a declared size over the limit is answered 413 before a byte is read, and a
chunked body is answered 413 as soon as what arrived passes the limit, so the server never
holds more than ``max_body`` bytes of one request. A body within the limit is handed to the
application as it was received.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def safe_text(message: str) -> str:
    """``message`` encodable as UTF-8: a lone surrogate a client sent (and an error message
    quotes) becomes its backslash escape, such as ``\\udc80``."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


async def send_error(send: Send, status: int, message: str, field: str | None = None,
                     headers: dict[str, str] | None = None) -> None:
    """Answer ``{"error": message, "field": field}`` with ``status``."""
    body = json.dumps({"error": safe_text(message), "field": field},
                      ensure_ascii=False).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Refuses a foreign Host header (400) and a body over ``max_body`` bytes (413).

    Args:
        app: the ASGI application behind it.
        max_body: the most bytes of a request body the server reads.
        allowed_hosts: Host names (without the port) to accept; None accepts any. A
            loopback server accepts only loopback names, so that a web page elsewhere cannot
            reach it through DNS rebinding.
    """

    def __init__(self, app, *, max_body: int, allowed_hosts: list[str] | None = None) -> None:
        self.app, self.max_body = app, max_body
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.allowed is not None and _host_name(headers.get("host", "")) not in self.allowed:
            await send_error(send, 400, "the Host header names another machine; this "
                             "playground answers only its loopback names (127.0.0.1, "
                             "localhost, [::1])", "host")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await send_error(send, 413, self._too_large(int(declared)), "body")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before it finished
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await send_error(send, 413, self._too_large(len(body), sent=True), "body")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self, size: int, *, sent: bool = False) -> str:
        has = f"more than {self.max_body:,} bytes arrived" if sent else f"it has {size:,} bytes"
        return (f"the request body is too large ({has}); the server reads at most "
                f"{self.max_body:,} (seqlm serve --max-text)")


def _host_name(host: str) -> str:
    """The name of a Host header, without the port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then waits on the client (for the
    disconnect a streaming answer watches for)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed
