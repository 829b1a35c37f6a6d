"""Gradient flow through time: per-lag gradient norms and Jacobian-product norms.

See the package docstring of :mod:`seqlm.diagnostics` for the chain rule measured here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F

from seqlm.errors import ConfigError

Core = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
NUM_CLASSES = 16  # width of the fixed random readout used when no loss is given
DEFAULT_STEPS = 200


# ----------------------------------------------------------------------------- state plumbing


def _parts(state: Any) -> tuple[torch.Tensor, ...]:
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def _like(state: Any, parts: Sequence[torch.Tensor]) -> Any:
    return parts[0] if isinstance(state, torch.Tensor) else type(state)(parts)


def _flatten(parts: Sequence[torch.Tensor], copies: int) -> torch.Tensor:
    """Tensors (L, copies*B, H) -> (copies, B, D): one flat state per copy and sequence."""
    flat = []
    for p in parts:
        layers, rows, hidden = p.shape
        flat.append(p.reshape(layers, copies, rows // copies, hidden).permute(1, 2, 0, 3))
    return torch.cat([f.reshape(f.shape[0], f.shape[1], -1) for f in flat], dim=-1)


def _unflatten(flat: torch.Tensor, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of :func:`_flatten` onto tensors shaped like ``parts``."""
    copies, batch, _ = flat.shape
    out, start = [], 0
    for p in parts:
        layers, _, hidden = p.shape
        chunk = flat[..., start : start + layers * hidden].reshape(copies, batch, layers, hidden)
        out.append(chunk.permute(2, 0, 1, 3).reshape(layers, copies * batch, hidden))
        start += layers * hidden
    return out


def _step_vjp(core: Core, x_t: torch.Tensor, state: Any, probes: torch.Tensor) -> torch.Tensor:
    """Row vectors times J = dh_j/dh_{j-1}: probes (R, B, D) -> (R, B, D).

    The R probes ride as R copies of the batch, so one forward and one backward of the core
    apply the Jacobian to all of them.
    """
    copies = probes.shape[0]
    leaves = [p.detach().repeat(1, copies, 1).requires_grad_() for p in _parts(state)]
    x_rep = x_t.repeat(copies, *([1] * (x_t.dim() - 1)))
    _, new_state = core(x_rep, _like(state, leaves))
    outs = _parts(new_state)
    grads = torch.autograd.grad(
        outs, leaves, _unflatten(probes, outs), allow_unused=True, materialize_grads=True
    )
    return _flatten(grads, copies)


def _run_states(core: Core, inputs: torch.Tensor, h0: Any) -> list[Any]:
    """States h_0 ... h_T (h_0 = zeros when ``h0`` is None), without a graph."""
    states, state = [], h0
    with torch.no_grad():
        for j in range(inputs.shape[1]):
            _, state = core(inputs[:, j : j + 1], state)
            states.append(state)
    if h0 is None:
        h0 = _like(states[0], [torch.zeros_like(p) for p in _parts(states[0])])
    return [h0] + states


def _renormalize(vectors: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Divide (R, B, D) by per-sequence norms (B,), leaving all-zero sequences as they are."""
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return vectors / safe.to(vectors.dtype).view(1, -1, 1)


# ----------------------------------------------------------------------------- losses


def readout_loss(targets: torch.Tensor, out_features: int, *, num_classes: int | None = None,
                 seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cross-entropy of a fixed random linear readout, the loss used when none is given.

    ``W_r ~ N(0, 1/out_features)``, ``num_classes`` (default max(targets) + 1) rows, drawn
    from a generator seeded with ``seed``, so repeated calls measure the same loss.

    Returns:
        ``loss(o (*targets.shape, out_features)) -> (*targets.shape)`` per-element losses.
    """
    gen = torch.Generator().manual_seed(seed)
    classes = num_classes or int(targets.max().item()) + 1
    weight = torch.randn(classes, out_features, generator=gen) / out_features**0.5

    def loss(o: torch.Tensor) -> torch.Tensor:
        logits = o.reshape(-1, out_features) @ weight.to(o).t()
        flat = F.cross_entropy(logits, targets.reshape(-1).to(o.device), reduction="none")
        return flat.reshape(targets.shape)

    return loss


def _last_step_grads(core, inputs, state, loss_fn):
    """dl_T/do_T (B, ...) and dl_T/dh_{T-1} (1, B, D), through the last step only."""
    leaves = [p.detach().clone().requires_grad_() for p in _parts(state)]
    with torch.enable_grad():
        out, _ = core(inputs[:, -1:], _like(state, leaves))
        o = out[:, -1]
        if loss_fn is None:  # one random class out of NUM_CLASSES per sequence, seeded
            gen = torch.Generator().manual_seed(0)
            target = torch.randint(NUM_CLASSES, (o.shape[0],), generator=gen)
            loss_fn = readout_loss(target, o[0].numel(), num_classes=NUM_CLASSES)
        losses = loss_fn(o)
        if tuple(losses.shape) != (o.shape[0],):
            raise ConfigError(
                f"loss_fn must return per-sequence losses of shape ({o.shape[0]},), got "
                f"{tuple(losses.shape)}; use reduction='none'"
            )
        g_o, *g_state = torch.autograd.grad(
            losses.sum(), [o, *leaves], allow_unused=True, materialize_grads=True
        )
    return g_o, _flatten(g_state, 1)


# ----------------------------------------------------------------------------- public API


def gradient_flow(
    core: Core,
    inputs: torch.Tensor,
    *,
    h0: Any = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    jacobian: bool = True,
) -> dict[str, Any]:
    """How the gradient of the last step's loss decays (or grows) with the lag k.

    For k = 0 ... T-1, each averaged over the batch (T = 200 is the command's default):

    * ``grad_norm[k]`` = ||dl_T/dh_{T-k}||_2, the loss summed over the batch so that each
      sequence's gradient is its own; for k = 0 the gradient with respect to the last output
      o_T (for torch's cores, the top layer's h_T).
    * ``jacobian_norm[k]`` = ||J_T J_{T-1} ... J_{T-k+1}||_2, the **spectral** norm of the
      product of state Jacobians (1 for k = 0).

    The core is stepped one time step at a time; the products are built right to left by
    vector-Jacobian products of D + 1 probes, renormalised every step so that they neither
    overflow nor underflow. Cost: T forward+backward passes at batch (D+1)*B and a B x D x D
    SVD per step (``jacobian=False``: batch B, no SVD). A module core runs in eval mode (no
    dropout) and is put back afterwards.

    Args:
        core: A recurrent core with torch's interface, or an embedding+core callable.
        inputs: ``(B, T, ...)`` batch-first inputs: features ``(B, T, I)``, or tokens
            ``(B, T)`` for an embedding+core callable. Typically T = 200.
        h0: Initial state in the core's layout; ``None`` means zeros.
        loss_fn: ``loss_fn(o_T) -> (B,)`` per-sequence losses of the last output
            ``o_T (B, ...)``; default :func:`readout_loss` (fixed random readout + CE).
        jacobian: Whether to compute ``jacobian_norm``.

    Returns:
        ``{"lag": [0..T-1], "grad_norm": [...], "jacobian_norm": [...] or None,
        "norm": "spectral", "num_steps": T, "batch_size": B, "state_size": D}``.

    Raises:
        ConfigError: ``inputs`` has no time steps, or ``loss_fn`` returns the wrong shape.
    """
    if inputs.dim() < 2 or inputs.shape[1] == 0:
        raise ConfigError(f"inputs must be (B, T, ...) with T >= 1, got {tuple(inputs.shape)}")
    was_training = getattr(core, "training", None)
    if was_training:
        core.eval()
    try:
        return _gradient_flow(core, inputs, h0, loss_fn, jacobian)
    finally:
        if was_training:
            core.train()


def _gradient_flow(core, inputs, h0, loss_fn, jacobian):
    batch, num_steps = inputs.shape[:2]
    states = _run_states(core, inputs, h0)
    g_o, delta = _last_step_grads(core, inputs, states[-2], loss_fn)
    dim = delta.shape[-1]
    grad_norm = [g_o.reshape(batch, -1).norm(dim=1).double().mean().item()]
    jac_norm = [1.0] if jacobian else None
    probes, loss_scale = delta, torch.ones(batch, dtype=torch.float64, device=delta.device)
    jac_scale = torch.ones_like(loss_scale)
    if jacobian:  # identity probes start J_T ... on the next step; J_T itself comes first
        eye = torch.eye(dim, dtype=delta.dtype, device=delta.device).unsqueeze(1)
        ident = _step_vjp(core, inputs[:, -1:], states[-2], eye.expand(dim, batch, dim).clone())
        probes = torch.cat([delta, ident])
    for k in range(1, num_steps):
        if k > 1:  # apply J_j, j = T-k+1: input x_j (index T-k), previous state h_{T-k}
            j = num_steps - k
            probes = _step_vjp(core, inputs[:, j : j + 1], states[j], probes)
        n = probes[0].norm(dim=-1).double()
        loss_scale = loss_scale * n
        grad_norm.append(loss_scale.mean().item())
        probes = torch.cat([_renormalize(probes[:1], n), probes[1:]])
        if jacobian:
            s = torch.linalg.matrix_norm(probes[1:].transpose(0, 1), ord=2).double()
            jac_scale = jac_scale * s
            jac_norm.append(jac_scale.mean().item())
            probes = torch.cat([probes[:1], _renormalize(probes[1:], s)])
    return {"lag": list(range(num_steps)), "grad_norm": grad_norm, "jacobian_norm": jac_norm,
            "norm": "spectral", "num_steps": num_steps, "batch_size": batch, "state_size": dim}


