"""Experiments on gradient flow: recurrent weights at several spectral radii, gated cells,
the cost of tau-truncation, and the figure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F

from seqlm.diagnostics.cores import mean_derivative, seeded_core
from seqlm.diagnostics.flow import DEFAULT_STEPS, Core, gradient_flow, readout_loss
from seqlm.errors import ConfigError
from seqlm.models.truncation import Truncation, unroll


def set_spectral_radius_(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """Rescale a square matrix in place so that its largest |eigenvalue| is ``radius``."""
    with torch.no_grad():
        current = torch.linalg.eigvals(weight).abs().max().real
        weight.mul_(radius / current.item())
    return weight


SWEEP_NONLINEARITIES = {"identity": "linear", "tanh": "tanh", "relu": "relu"}


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
    """:func:`gradient_flow` for RNNs whose W_hh has a chosen spectral radius, and GRU/LSTM.

    Curves, all one-layer float64 cores seeded from ``seed``, on the same N(0, 1) inputs:

    * ``rnn-linear-rho0.5`` ...: φ = identity (:class:`~seqlm.diagnostics.cores.LinearRNN`),
      random W_hh rescaled to each radius ρ in ``radii``. J_t = W_hh, so ‖∏J‖ ~ ρ^k: it
      falls for ρ < 1 and grows for ρ > 1, at log ρ per lag.
    * ``rnn-tanh-rho0.5`` ... and ``rnn-relu-rho0.5`` ...: the same radii behind tanh and
      ReLU, which multiply each factor by diag(φ'(a_t)) and so damp the product.
    * ``rnn-relu-1.5I`` and ``rnn-tanh-1.5I`` for each radius ρ > 1: W_hh = ρ I. A ReLU unit
      that is active grows and stays active (φ' = 1), so the product grows as ρ^k; tanh
      saturates (h → ±0.86 for ρ = 1.5, φ' ≈ 0.26) and the same W_hh vanishes.
    * ``gru`` and ``lstm`` at torch's initialisation.

    Each curve also carries :func:`growth_summary`'s fields, with ``rho`` and ``mean_dphi``
    (:func:`~seqlm.diagnostics.cores.mean_derivative`) for the RNNs (None for GRU/LSTM).

    ``inputs`` (B, T, I), e.g. one-hot characters of a corpus, replaces the N(0, 1) inputs
    (and sets ``batch_size``, ``num_steps`` and ``input_size``).

    Raises:
        ConfigError: a size is not positive or a radius is not positive.
    """
    gen = torch.Generator().manual_seed(seed)
    inputs = _sweep_inputs(inputs, num_steps, batch_size, input_size, hidden_size, radii, gen)
    curves = {}
    for nonlinearity, label in SWEEP_NONLINEARITIES.items():
        for radius in radii:
            curves[f"rnn-{label}-rho{radius:g}"] = _rnn_curve(
                inputs, hidden_size, nonlinearity, radius, eye=False, generator=gen)
    for radius in (r for r in radii if r > 1):
        for nonlinearity in ("relu", "tanh"):
            curves[f"rnn-{nonlinearity}-{radius:g}I"] = _rnn_curve(
                inputs, hidden_size, nonlinearity, radius, eye=True, generator=gen)
    for cell in ("gru", "lstm"):
        core = seeded_core(cell, inputs.shape[-1], hidden_size, "", gen)
        curve = gradient_flow(core, inputs)
        curves[cell] = {**curve, **growth_summary(curve), "rho": None, "nonlinearity": None,
                        "mean_dphi": None}
    return curves


def _sweep_inputs(inputs, num_steps, batch_size, input_size, hidden_size, radii,
                  generator: torch.Generator) -> torch.Tensor:
    """The sweep's (B, T, I) float64 inputs (N(0, 1) unless given), its arguments checked."""
    if inputs is not None:
        batch_size, num_steps, input_size = inputs.shape
    sizes = {"num_steps": num_steps, "batch_size": batch_size, "input_size": input_size,
             "hidden_size": hidden_size}
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not radii or any(not r > 0 for r in radii):
        raise ConfigError(f"radii must be positive spectral radii, got {list(radii)!r}")
    if inputs is None:
        inputs = torch.randn(batch_size, num_steps, input_size, generator=generator,
                             dtype=torch.float64)
    return inputs.double()


def _rnn_curve(inputs: torch.Tensor, hidden_size: int, nonlinearity: str, radius: float, *,
               eye: bool, generator: torch.Generator) -> dict[str, Any]:
    """The flow of a seeded one-layer RNN whose W_hh is rescaled to ``radius`` (or is
    ``radius`` I), with its growth summary, rho, nonlinearity and mean phi'."""
    core = seeded_core("rnn", inputs.shape[-1], hidden_size, nonlinearity, generator)
    with torch.no_grad():
        if eye:
            core.weight_hh_l0.copy_(radius * torch.eye(hidden_size, dtype=torch.float64))
        else:
            set_spectral_radius_(core.weight_hh_l0, radius)
    curve = gradient_flow(core, inputs)
    return {**curve, **growth_summary(curve), "rho": radius, "nonlinearity": nonlinearity,
            "mean_dphi": mean_derivative(core, inputs, nonlinearity)}


def growth_summary(curve: Mapping[str, Any]) -> dict[str, float | None]:
    """How much a :func:`gradient_flow` curve grows over its lags, and how fast at the end.

    Returns:
        ``{"growth": grad_norm[T-1] / grad_norm[0], "slope": s}``, with ``s`` the measured
        d log‖J_T ⋯ J_{T-k+1}‖ / dk between lags k = T//2 and T-1 (the Jacobian norms; the
        gradient norms when there are none), to compare with log ρ; None where a value is 0.
    """
    grad = curve["grad_norm"]
    values = curve.get("jacobian_norm") or grad
    last, first = len(values) - 1, min(len(values) // 2, max(len(values) - 2, 0))
    slope = None
    if last > first and values[first] > 0 and values[last] > 0:
        slope = (math.log(values[last]) - math.log(values[first])) / (last - first)
    growth = grad[-1] / grad[0] if grad[0] > 0 else None
    return {"growth": growth, "slope": slope}


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
    (curves without one are left out there). Non-positive values are not drawn. The sweep's
    linear RNNs are dashed, its W_hh = rho I curves dash-dotted, GRU and LSTM dotted.

    Args:
        curves: name -> a :func:`gradient_flow` result, or a plain sequence of gradient norms.
        path: Where to write the PNG.

    Returns:
        ``path``.

    Raises:
        ConfigError: ``curves`` is empty, or ``path`` cannot be written.
    """
    from seqlm.plots import new_figure, save_figure

    if not curves:
        raise ConfigError("plot_gradient_flow needs at least one curve, got none")
    fig = new_figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name, curve in curves.items():
        data = curve if isinstance(curve, Mapping) else {"grad_norm": list(curve)}
        for ax, key in ((left, "grad_norm"), (right, "jacobian_norm")):
            values = data.get(key)
            if values:
                shown = [v if v > 0 else float("nan") for v in values]
                ax.plot(data.get("lag", range(len(values))), shown, label=name,
                        linestyle=_line_style(name))
    left.set_title("gradient of the last loss, ||dl_T / dh_{T-k}||")
    right.set_title("Jacobian product, spectral norm")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("lag k (steps back from T)")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize="x-small", ncol=2)
    save_figure(fig, path)
    return path


def _line_style(name: str) -> str:
    """Dashed for the linear RNNs, dash-dot for W_hh = rho I, dotted for gated cells."""
    if "-linear-" in name:
        return "--"
    if name.endswith("I"):
        return "-."
    return ":" if name in ("gru", "lstm") else "-"
