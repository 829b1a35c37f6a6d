"""The shapes of the API's JSON answers, so that ``/openapi.json`` states them and FastAPI
checks every answer against them (the fuzz test then checks the schema against the server).

What each field means is written once, in ``static/docs.html`` (the ``/docs`` page); these
classes only give the types.
"""

from __future__ import annotations

from pydantic import BaseModel


class TokenRow(BaseModel):
    """One token of a scored text (also the warm-up rows of a generation)."""

    text: str
    id: int
    prob: float
    logprob: float | None
    surprisal: float | None
    entropy: float | None
    unknown: bool
    top: list[tuple[str, float]]
    bigram_logprob: float | None = None
    static_logprob: float | None = None


class Baseline(BaseModel):
    name: str | None = None
    perplexity: float | None = None
    bits_per_token: float | None = None
    unavailable: str | None = None


class ScoreAnswer(BaseModel):
    run: str
    tokens: list[TokenRow]
    perplexity: float | None
    bits_per_token: float | None
    unknown: int
    baseline: Baseline
    evaluation: str = "static"
    static_perplexity: float | None = None


class Ranking(BaseModel):
    variance: list[tuple[int, int, float]]
    correlation: dict[str, list[tuple[int, int, float]]]
    scores: dict[str, list[list[float]]]


class StatesAnswer(BaseModel):
    run: str
    tokens: list[str]
    unknown: list[bool]
    layers: int
    hidden_size: int
    states: list[list[list[float]]]
    cells: list[list[list[float]]] | None
    ranking: Ranking
    cell_ranking: Ranking | None


class GradientsAnswer(BaseModel):
    run: str
    unknown: int
    lag: list[int]
    grad_norm: list[float | None]
    jacobian_norm: list[float | None] | None
    growth: float | None
    slope: float | None
    num_steps: int
    state_size: int
