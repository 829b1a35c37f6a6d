"""Gradient-flow diagnostics for backpropagation through time (the ``seqlm bptt`` command).

With h_t the full recurrent state (every layer; h and c for an LSTM) and l_T the loss on the
last step's output, the chapter's chain rule gives

    dl_T/dh_{T-k} = dl_T/dh_T  J_T J_{T-1} ... J_{T-k+1},    J_j = dh_j/dh_{j-1},

so the product of k Jacobians decides whether the signal from k steps back vanishes or
explodes. :func:`gradient_flow` measures both factors, :func:`sweep` compares them across
recurrent weights and cells, :func:`truncation_error` measures what ``tau:K`` truncation
costs, and :func:`plot_gradient_flow` draws the curves. Everything returns plain data.

A *core* is anything with torch's recurrent interface ``core(input, hx) -> (output, h_n)``,
batch-first: ``torch.nn.RNN/GRU/LSTM(batch_first=True)``, the scratch cores, or a callable
that embeds tokens and runs a core. Shapes: B batch, T time steps, I input features, D the
size of the flattened state of one sequence (L*H, or 2*L*H for an LSTM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F

from seqlm.errors import ConfigError
from seqlm.models.truncation import Truncation, unroll

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


def _seeded_core(cell: str, input_size: int, hidden_size: int, nonlinearity: str,
                 generator: torch.Generator) -> torch.nn.Module:
    """A float64 torch core with torch's init distribution U(-1/sqrt(H), 1/sqrt(H)), seeded."""
    kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    core = module(input_size, hidden_size, batch_first=True, **kwargs).double()
    bound = hidden_size**-0.5
    with torch.no_grad():
        for param in core.parameters():
            param.uniform_(-bound, bound, generator=generator)
    return core


def set_spectral_radius_(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """Rescale a square matrix in place so that its largest |eigenvalue| is ``radius``."""
    with torch.no_grad():
        current = torch.linalg.eigvals(weight).abs().max().real
        weight.mul_(radius / current.item())
    return weight


def sweep(
    *,
    num_steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    input_size: int = 8,
    hidden_size: int = 32,
    radii: Sequence[float] = (0.5, 1.0, 1.5),
    seed: int = 0,
    inputs: torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`gradient_flow` for RNNs with W_hh at several spectral radii, and for GRU/LSTM.

    Keys ``rnn-tanh-rho0.5`` ... ``rnn-relu-rho1.5``: RNNs with ``weight_hh_l0`` rescaled to
    each spectral radius in ``radii`` (below 1 the Jacobian products vanish; above 1 they can
    grow, unless tanh saturates), then ``gru`` and ``lstm`` at torch's initialisation: all
    one-layer float64 ``torch.nn`` cores seeded from ``seed``, on the same N(0, 1) inputs.

    ``inputs`` (B, T, I), e.g. one-hot characters of a corpus, replaces the N(0, 1) inputs
    (and sets ``batch_size``, ``num_steps`` and ``input_size``).

    Raises:
        ConfigError: a size is not positive or a radius is not positive.
    """
    if inputs is not None:
        batch_size, num_steps, input_size = inputs.shape
    sizes = {"num_steps": num_steps, "batch_size": batch_size, "input_size": input_size,
             "hidden_size": hidden_size}
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not radii or any(not r > 0 for r in radii):
        raise ConfigError(f"radii must be positive spectral radii, got {list(radii)!r}")
    gen = torch.Generator().manual_seed(seed)
    if inputs is None:
        inputs = torch.randn(batch_size, num_steps, input_size, generator=gen,
                             dtype=torch.float64)
    inputs = inputs.double()
    curves = {}
    for nonlinearity in ("tanh", "relu"):
        for radius in radii:
            core = _seeded_core("rnn", input_size, hidden_size, nonlinearity, gen)
            set_spectral_radius_(core.weight_hh_l0, radius)
            curves[f"rnn-{nonlinearity}-rho{radius:g}"] = gradient_flow(core, inputs)
    for cell in ("gru", "lstm"):
        curves[cell] = gradient_flow(_seeded_core(cell, input_size, hidden_size, "", gen), inputs)
    return curves


def truncation_error(
    core: Core,
    inputs: torch.Tensor,
    targets: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    taus: Sequence[int] = (1, 2, 4, 8, 16, 32),
    *,
    h0: Any = None,
    params: Sequence[torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """How far the ``tau:K`` gradient of the weights is from the full one, as K grows.

    The loss is the chapter's L = (1/T) sum_t l(o_t, y_t) over all steps. Both gradients come
    from :func:`seqlm.models.truncation.unroll` over the core stepped one time step at a
    time, so ``tau:K`` cuts the whole stacked state; each tau costs O(T*K) core steps.

    Args:
        core: A recurrent core with torch's interface (or an embedding+core callable).
        inputs: ``(B, T, ...)`` batch-first inputs.
        targets: ``(B, T)`` class indices, scored by a fixed random linear readout of the
            outputs (classes = max target + 1, seeded like :func:`readout_loss`) with
            cross-entropy; or a callable ``loss(outputs (B, T, ...)) -> scalar``.
        taus: Truncation lengths K >= 1.
        h0: Initial state in the core's layout; ``None`` means zeros.
        params: The weights to differentiate; default the core's parameters that require grad.

    Returns:
        One ``{"tau": K, "rel_error": ||g_K - g|| / ||g||, "cosine": <g_K, g>/(||g_K|| ||g||)}``
        per K, in the order given (g the full gradient, all weights flattened together).

    Raises:
        ConfigError: a tau is not an integer >= 1, or there are no weights to differentiate.
    """
    truncations = [Truncation("tau", k=k) for k in taus]  # validates every K
    if params is None:
        params = core.parameters() if isinstance(core, torch.nn.Module) else []
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("truncation_error needs weights that require grad; pass params=")
    outputs = _unrolled_outputs(core, inputs, h0, Truncation("full"))
    loss_of = targets if callable(targets) else _mean_readout_loss(targets, outputs)

    def weight_grad(out: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss_of(out), params, allow_unused=True,
                                    materialize_grads=True)
        return torch.cat([g.reshape(-1) for g in grads]).double()

    full, rows = weight_grad(outputs), []
    for truncation in truncations:
        cut = weight_grad(_unrolled_outputs(core, inputs, h0, truncation))
        rel = (cut - full).norm() / full.norm()
        cos = F.cosine_similarity(cut, full, dim=0)
        rows.append({"tau": truncation.k, "rel_error": rel.item(), "cosine": cos.item()})
    return rows


def _mean_readout_loss(targets: torch.Tensor, outputs: torch.Tensor):
    if tuple(targets.shape) != tuple(outputs.shape[:2]):
        raise ConfigError(f"targets must be (B, T) = {tuple(outputs.shape[:2])} class indices, "
                          f"got {tuple(targets.shape)}")
    per_step = readout_loss(targets, outputs[0, 0].numel())
    return lambda out: per_step(out).mean()


def _unrolled_outputs(core: Core, inputs: torch.Tensor, h0: Any,
                      truncation: Truncation) -> torch.Tensor:
    """Outputs (B, T, ...) of ``core`` stepped through :func:`unroll` with ``truncation``."""

    def step(x_t: torch.Tensor, carried: tuple[Any, Any]) -> tuple[torch.Tensor, Any]:
        out, state = core(x_t.unsqueeze(1), carried[1])
        return out[:, 0], state

    outputs, _ = unroll(step, inputs.transpose(0, 1), (None, h0), truncation=truncation)
    return outputs.transpose(0, 1)


def plot_gradient_flow(curves: Mapping[str, Any], path: str) -> str:
    """Draw gradient-flow curves into one PNG: lag on x, log-scale y.

    Left panel: ||dl_T/dh_{T-k}||; right panel: the spectral norm of the Jacobian product
    (curves without one are left out there). Non-positive values are not drawn.

    Args:
        curves: name -> a :func:`gradient_flow` result, or a plain sequence of gradient norms.
        path: Where to write the PNG.

    Returns:
        ``path``.

    Raises:
        ConfigError: ``curves`` is empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ConfigError("plot_gradient_flow needs at least one curve, got none")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for name, curve in curves.items():
        data = curve if isinstance(curve, Mapping) else {"grad_norm": list(curve)}
        for ax, key in ((left, "grad_norm"), (right, "jacobian_norm")):
            values = data.get(key)
            if values:
                shown = [v if v > 0 else float("nan") for v in values]
                ax.plot(data.get("lag", range(len(values))), shown, label=name)
    left.set_title("gradient of the last loss, ||dl_T / dh_{T-k}||")
    right.set_title("Jacobian product, spectral norm")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("lag k (steps back from T)")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path
