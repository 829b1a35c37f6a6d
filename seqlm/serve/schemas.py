"""The JSON bodies the playground's API accepts, and how a bad one is answered.

Types are checked by pydantic; the values of the sampling knobs by the library's own rules
(:func:`seqlm.decoding.check_sampling`), one knob at a time so that the 422 answer names the
field. Unknown fields are refused, so a misspelt knob is never silently ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from seqlm.errors import ConfigError
from seqlm.decoding import check_sampling
from seqlm.serve.limits import Limits


class FieldError(Exception):
    """A request field has a value the server cannot use: answered 422, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str | None = None  # a name from GET /api/runs; None: the first run served


class GenerateRequest(_Body):
    """``POST /api/generate``: continue ``prefix`` token by token."""

    prefix: str = ""
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    greedy: bool = False  # the book's argmax decoding (temperature 0)

    def check(self, limits: Limits) -> None:
        """Raises:
            FieldError: a knob breaks the library's rules or a limit, naming it.
        """
        check_text("prefix", self.prefix, limits, allow_empty=True)
        if self.max_new_tokens < 1 or self.max_new_tokens > limits.max_new_tokens:
            raise FieldError("max_new_tokens", f"max_new_tokens={self.max_new_tokens} must be "
                             f"between 1 and {limits.max_new_tokens} (the server's limit)")
        knobs = {"temperature": 0.0 if self.greedy else self.temperature,
                 "top_k": self.top_k, "top_p": self.top_p}
        for name, value in knobs.items():
            try:
                check_sampling(**{name: value})
            except ConfigError as exc:
                raise FieldError(name, str(exc)) from None

    @property
    def effective_temperature(self) -> float:
        return 0.0 if self.greedy else self.temperature


class TextRequest(_Body):
    """``POST /api/score``, ``/api/states`` and ``/api/gradients``: a text to look at."""

    text: str


def check_text(name: str, text: str, limits: Limits, *, allow_empty: bool = False) -> None:
    """Raises:
        FieldError: the text is longer than ``limits.max_text`` or (unless allowed) empty.
    """
    if len(text) > limits.max_text:
        raise FieldError(name, f"{name} has {len(text):,} characters; the server's limit is "
                         f"{limits.max_text:,} (seqlm serve --max-text)")
    if not allow_empty and not text:
        raise FieldError(name, f"{name} is empty; give some text")
