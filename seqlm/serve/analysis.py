"""The playground's views that are computed, not just read: which hidden units are worth a
look, how the gradient fades through time on a text, and how the two sampling strategies cut
the chapter's example corpus.
"""

from __future__ import annotations

import numpy as np
import torch

from seqlm.batches import SAMPLERS, check_fits, random_plan, sequential_plan
from seqlm.diagnostics import language_model_flow
from seqlm.errors import ConfigError

FEATURES = ("inside quotes", "inside brackets", "position in line", "after a space")
QUOTES = "\"“”"
OPEN, CLOSE = "([{", ")]}"
RANKED = 12  # units listed per ranking
JACOBIAN_MAX_STATE = 64  # above this state size the Jacobian norms take seconds: skipped


def text_features(pieces: list[str]) -> dict[str, np.ndarray]:
    """Simple per-token features of a text, each (N,) float: whether the token starts inside
    double quotes or brackets, how many characters into its line it starts, and whether the
    character before it is whitespace."""
    quoted, depth, column, prev = False, 0, 0, "\n"
    rows = []
    for piece in pieces:
        rows.append((quoted, depth > 0, column, prev.isspace()))
        for ch in piece:
            if ch in QUOTES:
                quoted = not quoted if ch == '"' else ch == "“"
            elif ch in OPEN:
                depth += 1
            elif ch in CLOSE:
                depth = max(depth - 1, 0)
            column = 0 if ch == "\n" else column + 1
            prev = ch
    table = np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))
    return {name: table[:, i] for i, name in enumerate(FEATURES)}


def rank_units(h: np.ndarray, pieces: list[str]) -> dict:
    """Units ranked by variance over the text and by |correlation| with each feature.

    Args:
        h: (L, N, H) hidden states.
        pieces: the N token texts.

    Returns:
        ``{"variance": [[layer, unit, var], ...], "correlation": {feature: [[layer, unit,
        r], ...] or [] when the feature is constant on this text}}``, best first.
    """
    layers, _, hidden = h.shape
    flat = h.transpose(0, 2, 1).reshape(layers * hidden, -1).astype(np.float64)  # (L·H, N)
    var = flat.var(axis=1)

    def top(values: np.ndarray) -> list[list]:
        order = np.argsort(-np.abs(values), kind="stable")[:RANKED]
        return [[int(i // hidden), int(i % hidden), float(values[i])] for i in order]

    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred ** 2).sum(axis=1))
    out = {"variance": top(var), "correlation": {}}
    for name, feature in text_features(pieces).items():
        f = feature - feature.mean()
        if not f.any():
            out["correlation"][name] = []
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = centred @ f / (norms * np.sqrt((f ** 2).sum()))
        out["correlation"][name] = top(np.nan_to_num(r))
    return out


def gradient_by_lag(model, ids: list[int]) -> dict:
    """‖∂l_T/∂h_{T−k}‖ for k = 0 … T−1 on one text, with l_T the model's loss on the text's
    last token (:func:`seqlm.diagnostics.language_model_flow`, what ``seqlm bptt`` measures),
    and the Jacobian products' spectral norms when the state is small enough to be quick.

    Args:
        model: the :class:`~seqlm.models.RNNLM`, in eval mode (it is not modified).
        ids: the text's token ids (≥ 2); the first N−1 are read, the last is the target.

    Raises:
        ConfigError: fewer than 2 tokens.
    """
    if len(ids) < 2:
        raise ConfigError(f"text has {len(ids)} token(s); the gradient needs at least 2")
    c = model.config
    state_size = c.num_layers * c.hidden_size * (2 if c.cell == "lstm" else 1)
    batch = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    flow = language_model_flow(model, batch, jacobian=state_size <= JACOBIAN_MAX_STATE)
    curve = flow["curves"]["model"]
    return {key: curve[key] for key in ("lag", "grad_norm", "jacobian_norm", "num_steps",
                                        "state_size", "growth", "slope")}


def sampling_plans(n_tokens: int, batch_size: int, num_steps: int, seed: int) -> dict:
    """One epoch of each strategy on the corpus 0 … n_tokens−1, as window starts.

    Returns:
        ``{strategy: {"starts": [[s, ...] per minibatch], "contiguous": bool}}``; minibatch
        ``k`` row ``b`` is ``X = tokens[s : s + num_steps]`` and ``Y`` one to the right.

    Raises:
        CorpusError: the corpus cannot fill one minibatch (the message gives the numbers).
    """
    check_fits(np.arange(n_tokens), batch_size, num_steps)
    plans = {"random": random_plan, "sequential": sequential_plan}
    out = {}
    for name, plan in plans.items():
        gen = torch.Generator().manual_seed(seed)
        starts = plan(n_tokens, batch_size, num_steps, gen)
        out[name] = {"starts": starts.tolist(), "contiguous": SAMPLERS[name].contiguous}
    return out
