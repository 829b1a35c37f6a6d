"""How much one playground request may ask for, and the gate that bounds the model work.

Every request that runs the model (generate, score, states, gradients) passes the
:class:`Gate`: at most ``max_concurrent`` run at once, up to ``max_queued`` more wait their
turn (for at most ``queue_timeout`` seconds), and any beyond that are answered at once with
429 Too Many Requests. Nothing is ever dropped silently and the server never runs out of
threads because of a burst.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields

from seqlm.config import opt
from seqlm.errors import field_error


@dataclass
class Limits:
    """The playground's limits (``seqlm serve`` takes each as a flag).

    Raises:
        ConfigError: from ``__post_init__``, naming the field and the value.
    """

    max_text: int = opt(5_000, "characters of a prefix or of a text to score")
    max_new_tokens: int = opt(2_000, "tokens one generate request may ask for")
    max_state_tokens: int = opt(1_000, "tokens whose hidden states one request may ask for")
    max_gradient_steps: int = opt(200, "time steps (the text's last ones) of a "
                                  "gradient-through-time request")
    max_concurrent: int = opt(4, "requests running the model at once; more wait in the queue")
    max_queued: int = opt(64, "requests waiting for the model; more are answered 429")
    queue_timeout: float = opt(60.0, "seconds a queued request waits before it is answered 429")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if f.name == "queue_timeout":
                if not number or not value > 0:
                    raise field_error(f.name, value, "a number of seconds > 0")
                continue
            low = 0 if f.name == "max_queued" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise field_error(f.name, value, f"an integer >= {low}")


class Busy(Exception):
    """The gate is full (or the wait timed out): answer 429 with this message."""


class Gate:
    """At most ``limits.max_concurrent`` holders; ``max_queued`` waiters; the rest refused.

    Use ``await gate.enter()`` then ``gate.leave()`` exactly once (in a ``finally``).
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running = 0
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    async def enter(self) -> None:
        """Take a slot, waiting in the queue if needed.

        Raises:
            Busy: the queue is full, or the wait exceeded ``queue_timeout``.
        """
        lim = self.limits
        if self._slots is None:
            self._slots = asyncio.Semaphore(lim.max_concurrent)
        self.check()
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), lim.queue_timeout)
        except asyncio.TimeoutError:
            raise Busy(f"waited {lim.queue_timeout:g} s for the model without a turn; retry "
                       "shortly") from None
        finally:
            self.waiting -= 1
        self.running += 1

    def check(self) -> None:
        """Raises:
            Busy: every slot is taken and the queue is full.
        """
        lim = self.limits
        if self.running >= lim.max_concurrent and self.waiting >= lim.max_queued:
            raise Busy(f"{self.running} requests are running and {self.waiting} waiting (the "
                       f"limits are {lim.max_concurrent} and {lim.max_queued}); retry shortly")

    def leave(self) -> None:
        self.running -= 1
        self._slots.release()

    def report(self) -> dict:
        return {"running": self.running, "waiting": self.waiting,
                "max_concurrent": self.limits.max_concurrent,
                "max_queued": self.limits.max_queued}
