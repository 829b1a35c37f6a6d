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
"""

from seqlm.models.lm import RNNLM, ModelConfig, detach_state, resolve_device
from seqlm.models.scratch import ScratchGRU, ScratchLSTM, ScratchRNN, init_d2l_, make_core

__all__ = [
    "ModelConfig",
    "RNNLM",
    "ScratchGRU",
    "ScratchLSTM",
    "ScratchRNN",
    "detach_state",
    "init_d2l_",
    "make_core",
    "resolve_device",
]
