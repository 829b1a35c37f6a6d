"""The named presets (``--preset``): flat ``setting -> value`` maps that
:func:`seqlm.settings.resolve` routes to the config class owning each name, and the book's
printed perplexities its presets are compared with.

A preset is a named set of settings; the recipe (:mod:`seqlm.recipe`) is the rules that choose
some of them from what a run measures (the names in a preset's ``adapt``).
"""

from __future__ import annotations

from seqlm.errors import choice_error

PRESETS: dict[str, dict] = {
    # The book's three experiments (d2l-zh 2.0 §8.5/8.6): The Time Machine, letters only,
    # char tokens, the first 10,000 tokens, batch 32 × 35 steps, SGD lr 1, clip 1, 500 epochs.
    # No patience and no divergence guard: the book's fixed epochs, and its blow-ups stay
    # visible (the clipping exercise shows one).
    "d2l-scratch": {
        "corpus": "timemachine", "clean": "letters", "tokenizer": "char", "max_tokens": 10000,
        "sampler": "sequential", "batch_size": 32, "num_steps": 35,
        "cell": "rnn", "impl": "scratch", "hidden_size": 512, "embedding_dim": None,
        "init": "d2l", "optimizer": "sgd", "lr": 1.0, "clip": 1.0, "schedule": "constant",
        "epochs": 500, "eval_every": 0, "sample_prefix": "time traveller", "sample_tokens": 50,
        "sample_temperature": 0.0, "log_every": 8, "early_stopping": None, "guard_retries": 0,
    },
}
# Presets for a CPU budget, chosen with benchmarks/quality.py (docs/quality.md has the table of
# what was tried). Many small steps win at these budgets: a GRU (faster per token than the
# LSTM and better at equal time) on the fastest core for the device (impl and bptt_engine
# 'auto': the hand-written BPTT on the CPU, cuDNN on a GPU), 64 rows x 32 steps, Adam at a high
# peak lr with a cosine that ends with the time budget. cpu-quality's longer budget anneals
# deeper, to 1 % of the peak (at 9 minutes it won on five matrix rows of seven), and decays
# the weights (AdamW, 0.3: at 9 minutes 0.01-0.2 nats on the four rows measured; a tie at 95 s).
PRESETS["cpu-fast"] = {
    "cell": "gru", "impl": "auto", "bptt_engine": "auto", "hidden_size": 384, "num_layers": 1, "embedding_dim": 64,
    "dropout": 0.0, "tie_weights": False, "sampler": "sequential", "batch_size": 64,
    "num_steps": 32, "truncation": "window", "optimizer": "adam", "lr": 5e-3,
    "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 50, "min_lr_ratio": 0.1,
    "clip": 1.0, "time_budget": 95.0, "eval_every": 250,
    "adapt": "dropout,embedding_dim,eval_every,num_layers,threads",  # seqlm.recipe chooses these
}
PRESETS["cpu-quality"] = {**PRESETS["cpu-fast"], "hidden_size": 512, "dropout": 0.2,
                          "optimizer": "adamw", "weight_decay": 0.3, "min_lr_ratio": 0.01,
                          "time_budget": 540.0, "eval_every": 500}
PRESETS["d2l-scratch-random"] = {**PRESETS["d2l-scratch"], "sampler": "random"}
PRESETS["d2l-concise"] = {**PRESETS["d2l-scratch"], "impl": "fused", "hidden_size": 256,
                          "init": "torch"}
BOOK_PERPLEXITY = {"d2l-scratch": 1.0, "d2l-scratch-random": 1.5, "d2l-concise": 1.3}
# The preset of `seqlm train` and `seqlm.train` when none is named.
DEFAULT_PRESET = "cpu-fast"



def preset(name: str) -> dict:
    """A copy of the named preset's settings.

    Raises:
        ConfigError: no preset has that name.
    """
    if name not in PRESETS:
        raise choice_error("preset", name, tuple(PRESETS))
    return dict(PRESETS[name])
