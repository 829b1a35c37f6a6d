"""Recurrent language models: scratch and fused recurrent cores and the RNNLM around them.

Shape legend, used in every docstring of this package and the modules that call it:

====  ==========================================================================
B     batch size (sequences processed side by side)
T     time steps per sequence (``num_steps``)
L     stacked recurrent layers (``num_layers``)
H     hidden units per layer (``hidden_size``)
V     vocabulary size (``vocab_size``); one-hot inputs and logits are V wide
E     embedding size (``embedding_dim``) when the input is a learned embedding
I     input features of a core: V for one-hot input, E for embeddings, H above layer 0
====  ==========================================================================

Public tensors are batch-first — tokens (B, T), logits (B, T, V) — and recurrent state keeps
torch's layout (L, B, H), a pair ``(h, c)`` of them for LSTM. Scratch cores run time-major
(T, B, ·) inside.

The modules: :mod:`~seqlm.models.scratch` (the chapter's cells), :mod:`~seqlm.models.minrnn`
(minGRU and minLSTM, trained by a parallel scan), :mod:`~seqlm.models.gates` (torch's gate
layout), :mod:`~seqlm.models.lm` (:class:`RNNLM`), and the fast paths beside the
clear versions: :mod:`~seqlm.models.bptt` / :mod:`~seqlm.models.gru_bptt` (hand-written
backward passes), :mod:`~seqlm.models.truncation`, :mod:`~seqlm.models.fast` (oneDNN products)
and :mod:`~seqlm.models.stepper` (one-token generation). The model's configuration is
:class:`seqlm.config.ModelConfig`.
"""

from seqlm.models.lm import LossOf, RNNLM, detach_state
from seqlm.models.scratch import ScratchGRU, ScratchLSTM, ScratchRNN, init_d2l_, make_core

__all__ = [
    "LossOf",
    "RNNLM",
    "ScratchGRU",
    "ScratchLSTM",
    "ScratchRNN",
    "detach_state",
    "init_d2l_",
    "make_core",
]
