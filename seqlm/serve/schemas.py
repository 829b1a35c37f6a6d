"""The JSON bodies the playground's API accepts, and how a bad one is answered.

Types are strict (pydantic's strict mode: ``true`` is not an integer, ``"3"`` is not a
number, ``NaN`` is not a temperature); unknown fields are refused, so a misspelt knob is never
silently ignored. The schema carries the server's limits (:func:`request_models`), so
``/openapi.json`` states them; the sampling knobs are then checked by the library's own rules
(:func:`seqlm.decoding.check_sampling`), one knob at a time so that the 422 answer names the
field. :func:`plain_message` turns pydantic's errors into one sentence naming the field.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from seqlm.decoding import MAX_NEW_TOKENS, MAX_SEED, check_sampling
from seqlm.errors import ConfigError
from seqlm.serve.limits import Limits


class FieldError(Exception):
    """A request field has a value the server cannot use: answered 422, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text`` (a JSON ``"\\ud800"`` escape that
    no other half follows: not a character, so no tokenizer can read it), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    run: str | None = Field(None, description="a name from GET /api/runs; null or absent: "
                            "the first run served")

    @field_validator("*")
    @classmethod
    def _only_text(cls, value, info):
        if isinstance(value, str) and (at := lone_surrogate(value)) is not None:
            raise ValueError(f"`{info.field_name}` holds a lone surrogate (U+"
                             f"{ord(value[at]):04X} at character {at}), which is not text; "
                             "send UTF-8, or both halves of a \\ud83d\\ude00-style pair")
        return value


class GenerateRequest(_Body):
    """``POST /api/generate``: continue ``prefix`` token by token."""

    prefix: str = Field("", description="text read first (the warm-up); '' starts from <bos> "
                        "or the zero state")
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="tokens to generate")
    temperature: float = Field(1.0, ge=0, description="0 is greedy; below 1 sharpens")
    top_k: int | None = Field(None, ge=1, description="sample among the k likeliest")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed gives the "
                             "same text (as seqlm.load(RUN).generate with that seed); null "
                             "draws fresh entropy")
    greedy: bool = Field(False, description="the book's argmax decoding (temperature 0)")

    def check(self) -> None:
        """Raises:
            FieldError: a knob breaks the library's rules, naming it.
        """
        knobs = {"temperature": self.effective_temperature, "top_k": self.top_k,
                 "top_p": self.top_p}
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

    text: str = Field(min_length=1, description="the text to read")


class ScoreRequest(TextRequest):
    """``POST /api/score``: a text, read by the trained weights alone or by a model that keeps
    learning as it reads (docs/reading.md)."""

    reading: Literal["static", "cache", "dynamic", "cache+dynamic"] = Field(
        "static", description="static: the trained weights; cache, dynamic, cache+dynamic: "
        "with the neural cache and/or dynamic evaluation, at the settings chosen on the "
        "run's validation split and stored with it (seqlm evaluate RUN --cache 2000 "
        "--dynamic)")


def request_models(limits: Limits) -> tuple[type[GenerateRequest], type[TextRequest],
                                              type[ScoreRequest]]:
    """The request bodies with the server's limits in their schema."""
    text_limit = {"max_length": limits.max_text}
    generate = create_model(
        "GenerateRequest", __base__=GenerateRequest, __module__=__name__,
        prefix=(str, Field("", **text_limit, description=GenerateRequest.model_fields[
            "prefix"].description)),
        max_new_tokens=(int, Field(min(MAX_NEW_TOKENS, limits.max_new_tokens), ge=1,
                                   le=limits.max_new_tokens, description="tokens to generate "
                                   "(seqlm serve --max-new-tokens bounds it)")))
    text_field = (str, Field(min_length=1, **text_limit, description="the text to read"))
    text = create_model("TextRequest", __base__=TextRequest, __module__=__name__,
                        text=text_field)
    score = create_model("ScoreRequest", __base__=ScoreRequest, __module__=__name__,
                         text=text_field)
    return generate, text, score


def too_long(name: str, length: int, limit: int) -> str:
    return (f"`{name}` has {length:,} characters; the server's limit is {limit:,} (seqlm "
            "serve --max-text)")


_KINDS = {"int": "an integer", "float": "a number", "string": "a string", "bool":
          "true or false"}
_BOUNDS = {"greater_than_equal": ("ge", ">="), "less_than_equal": ("le", "<="),
           "greater_than": ("gt", ">"), "less_than": ("lt", "<")}


def _shown(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def plain_message(error: dict) -> tuple[str | None, str]:
    """``(field, one sentence)`` for one of pydantic's validation errors: the field named as
    the library names settings (in backticks), the rule, and the value received."""
    kind = error.get("type", "")
    where = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(where) or None
    value, ctx = error.get("input"), error.get("ctx") or {}
    if kind == "json_invalid":
        return "body", (f"the body is not valid JSON ({ctx.get('error', error.get('msg'))}); "
                        "send one JSON object")
    if field is None:
        return "body", f"the body must be one JSON object of named fields, got {_shown(value)}"
    name = f"`{field}`"
    if kind == "missing":
        return field, f"{name} is missing; it is required"
    if kind == "extra_forbidden":
        return field, f"{name} is not a field of this request (a misspelt name?)"
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if base in _KINDS:
        return field, f"{name} must be {_KINDS[base]}, got {_shown(value)}"
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        return field, f"{name} must be {sign} {ctx.get(key)}, got {_shown(value)}"
    if kind == "finite_number":
        return field, f"{name} must be a finite number, got {_shown(value)}"
    if kind == "string_too_long" and isinstance(value, str):
        return field, too_long(field, len(value), ctx.get("max_length", 0))
    if kind == "string_unicode":  # how pydantic's JSON parser meets a lone surrogate
        return field, (f"{name} is not text: it holds a lone surrogate (an escape such as "
                       "\\udc80 without its other half); send UTF-8, or both halves of a pair")
    if kind == "string_too_short":
        return field, f"{name} is empty; give some text"
    if kind == "value_error" and "error" in ctx:
        return field, str(ctx["error"])
    return field, f"{name}: {error.get('msg', 'invalid value')}"
