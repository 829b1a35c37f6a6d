"""Which hidden units are worth a look: each unit scored over a text by its variance and by
its correlation with simple features of each token's place in the text (numpy only).

The features read English and Chinese punctuation alike: straight and curly double quotes,
「」 and 『』 are quotes; (), [], {}, （）, 【】, 《》 and 〔〕 are brackets; a sentence ends
at . ! ? 。！？ or a line break. A feature that means nothing on the text at hand is left
out rather than ranked: "after a space" on a text without spaces (Chinese), "position in
line" on a text of one line (it would only count tokens), and any feature that is constant.
"""

from __future__ import annotations

import unicodedata

import numpy as np

OPEN_QUOTES, CLOSE_QUOTES = "“「『", "”」』"
TOGGLE_QUOTES = '"'  # the same mark opens and closes
OPEN_BRACKETS, CLOSE_BRACKETS = "([{（【《〔［｛", ")]}）】》〕］｝"
SENTENCE_ENDS = ".!?。！？\n"
RANKED = 12  # units listed per ranking


def text_features(pieces: list[str]) -> dict[str, np.ndarray]:
    """Per-token features of a text, each (N,) float64, for the token starting at that place:
    inside quotes, inside brackets (nesting counted), characters into its sentence, characters
    into its line, whether the character before it is whitespace, and whether the token is
    punctuation. Features that mean nothing on this text are left out (module docstring)."""
    quoted, depth, line, sentence, prev = 0, 0, 0, 0, "\n"
    rows = []
    for piece in pieces:
        rows.append((quoted > 0, depth > 0, sentence, line, prev.isspace(),
                     bool(piece.strip()) and all(_punctuation(ch) for ch in piece.strip())))
        for ch in piece:
            if ch in TOGGLE_QUOTES:
                quoted = 0 if quoted else 1
            elif ch in OPEN_QUOTES:
                quoted += 1
            elif ch in CLOSE_QUOTES:
                quoted = max(quoted - 1, 0)
            elif ch in OPEN_BRACKETS:
                depth += 1
            elif ch in CLOSE_BRACKETS:
                depth = max(depth - 1, 0)
            line = 0 if ch == "\n" else line + 1
            sentence = 0 if ch in SENTENCE_ENDS else sentence + (not ch.isspace() or sentence > 0)
            prev = ch
    names = ("inside quotes", "inside brackets", "position in sentence", "position in line",
             "after a space", "punctuation")
    table = np.array(rows, dtype=np.float64).reshape(-1, len(names))
    text = "".join(pieces)
    meaningless = {"after a space": not any(ch.isspace() and ch != "\n" for ch in text),
                   "position in line": "\n" not in text.rstrip("\n")}
    return {name: table[:, i] for i, name in enumerate(names)
            if not meaningless.get(name) and np.ptp(table[:, i]) > 0}


def _punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def rank_units(h: np.ndarray, pieces: list[str]) -> dict:
    """Every unit scored by its variance over the text and its correlation with each
    feature of :func:`text_features`, and the best of each ranking.

    Args:
        h: (L, N, H) hidden (or cell) states.
        pieces: the N token texts.

    Returns:
        ``{"variance": [[layer, unit, var], ...], "correlation": {feature: [[layer, unit,
        r], ...]}, "scores": {"variance" or feature: L × H values}}``: the lists hold the
        :data:`RANKED` best units, largest (absolute) first; ``scores`` every unit's value,
        by which the page sorts the heatmap's rows.
    """
    layers, _, hidden = h.shape
    flat = h.transpose(0, 2, 1).reshape(layers * hidden, -1).astype(np.float64)  # (L·H, N)
    var = flat.var(axis=1)

    def top(values: np.ndarray) -> list[list]:
        order = np.argsort(-np.abs(values), kind="stable")[:RANKED]
        return [[int(i // hidden), int(i % hidden), float(values[i])] for i in order]

    def per_layer(values: np.ndarray) -> list[list[float]]:
        return np.round(values.reshape(layers, hidden), 5).tolist()

    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred ** 2).sum(axis=1))
    out = {"variance": top(var), "correlation": {}, "scores": {"variance": per_layer(var)}}
    for name, feature in text_features(pieces).items():
        f = feature - feature.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.nan_to_num(centred @ f / (norms * np.sqrt((f ** 2).sum())))
        out["correlation"][name] = top(r)
        out["scores"][name] = per_layer(r)
    return out
