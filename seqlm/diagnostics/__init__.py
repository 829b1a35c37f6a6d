"""Gradient-flow diagnostics for backpropagation through time (the ``seqlm bptt`` command).

With h_t the full recurrent state (every layer; h and c for an LSTM) and l_T the loss on the
last step's output, the chapter's chain rule gives

    dl_T/dh_{T-k} = dl_T/dh_T  J_T J_{T-1} ... J_{T-k+1},    J_j = dh_j/dh_{j-1},

so the product of k Jacobians decides whether the signal from k steps back vanishes or
explodes. :func:`gradient_flow` measures both factors, :func:`sweep` compares them across
recurrent weights, nonlinearities (the identity included, where the product is W_hh^k) and
cells, :func:`truncation_error` measures what ``tau:K`` truncation costs,
:func:`language_model_flow` measures a language model on its own text, and
:func:`plot_gradient_flow` draws the curves. Everything returns plain data.

A *core* is anything with torch's recurrent interface ``core(input, hx) -> (output, h_n)``,
batch-first: ``torch.nn.RNN/GRU/LSTM(batch_first=True)``, the scratch cores, or a callable
that embeds tokens and runs a core. Shapes: B batch, T time steps, I input features, D the
size of the flattened state of one sequence (L*H, or 2*L*H for an LSTM).
"""


from seqlm.diagnostics.cores import LinearRNN, mean_derivative
from seqlm.diagnostics.experiments import (growth_summary, plot_gradient_flow,
                                           set_spectral_radius_, sweep, truncation_error)
from seqlm.diagnostics.flow import DEFAULT_STEPS, gradient_flow, readout_loss
from seqlm.diagnostics.lm_flow import language_model_flow

__all__ = ["DEFAULT_STEPS", "LinearRNN", "gradient_flow", "growth_summary",
           "language_model_flow", "mean_derivative", "plot_gradient_flow", "readout_loss",
           "set_spectral_radius_", "sweep", "truncation_error"]
