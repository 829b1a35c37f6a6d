"""The playground's views that need torch: how the gradient fades through time on a text,
and how the two sampling strategies cut the chapter's example corpus (with training's own
torch generator). Imported only by the routes that draw them, so that a server of ONNX
exports never loads torch.
"""

from __future__ import annotations

import numpy as np
import torch

from seqlm.batches import SAMPLERS, check_fits, random_plan, sequential_plan
from seqlm.diagnostics import language_model_flow
from seqlm.errors import ConfigError

JACOBIAN_MAX_STATE = 64  # above this state size the Jacobian norms take seconds: skipped


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
