"""The recurrent core's settings: the cells and their implementations, BPTT truncation's text
form (:class:`Truncation`; :mod:`seqlm.models.truncation` says what each policy does), and
:func:`check_core`, the one check of a core's settings, which
:class:`~seqlm.config.ModelConfig` and every core built outside one (the scratch cores,
:func:`seqlm.models.make_core`) run.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqlm.errors import ConfigError, check_choice, field_error

CELLS = ("rnn", "gru", "lstm", "mingru", "minlstm")
MIN_CELLS = ("mingru", "minlstm")  # Feng et al. (2024): gates from x_t only, a parallel scan
IMPLS = ("scratch", "fused")
NONLINEARITIES = ("tanh", "relu")
INITS = ("torch", "d2l")
BPTT_ENGINES = ("autograd", "manual")
MANUAL_ENGINE_CELLS = ("rnn", "gru")  # cells with a hand-written backward pass
WINDOWED = ("window", "full")  # truncations that every core and engine runs


def check_core(cell: str, impl: str, *, nonlinearity: str = "tanh", dropout: float = 0.0,
               init: str = "torch", bptt_engine: str = "autograd",
               truncation: Truncation | str | None = None) -> Truncation | None:
    """The one check of a recurrent core's settings, for :class:`ModelConfig` and every core
    built outside one (:func:`seqlm.models.make_core`, the scratch cores).

    Returns:
        The parsed truncation, or None for 'window'/'full' (inside one forward call both
        back-propagate through every step; they differ only between batches).

    Raises:
        ConfigError: an unknown choice, a dropout outside [0, 1), a nonlinearity other than
            tanh for gru/lstm, a truncation a fused core or the GRU's manual engine cannot
            run, or the manual engine for a core that has none.
    """
    check_choice("cell", cell, CELLS)
    check_choice("impl", impl, IMPLS)
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    check_choice("init", init, INITS)
    check_choice("bptt_engine", bptt_engine, BPTT_ENGINES)
    _require(isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0, "dropout", dropout,
           "a probability in [0, 1)")
    if cell != "rnn" and nonlinearity != "tanh":
        raise ConfigError(f"`nonlinearity` {nonlinearity!r} applies only to cell 'rnn', not "
                          f"{cell!r}; use `nonlinearity` 'tanh'")
    policy = as_truncation(truncation)
    windowed = policy.kind in WINDOWED
    if cell in MIN_CELLS:
        _check_min_core(cell, impl, init, str(policy))
    if impl == "fused" and not windowed:
        raise ConfigError(f"`truncation` {str(policy)!r} needs impl 'scratch'; fused cores "
                          "support only 'window' and 'full'")
    if bptt_engine == "manual":
        if cell not in (*MANUAL_ENGINE_CELLS, *MIN_CELLS) or impl != "scratch":
            raise ConfigError(f"`bptt_engine` 'manual' needs cell 'rnn', 'gru', 'mingru' or "
                              f"'minlstm' and impl 'scratch', got cell {cell!r} impl "
                              f"{impl!r}; use `bptt_engine` 'autograd'")
        if cell == "gru" and not windowed:
            raise ConfigError(f"`bptt_engine` 'manual' for cell 'gru' runs truncation 'window' "
                              f"or 'full' only, got {str(policy)!r}; use `bptt_engine` "
                              "'autograd'")
    return None if windowed else policy


def _check_min_core(cell: str, impl: str, init: str, truncation: str) -> None:
    """The settings a mingru/minlstm core cannot run: it has one core, scans whole windows."""
    for ok, name, value, fix in ((impl == "scratch", "impl", impl, "'scratch' or 'auto'"),
                                 (truncation in WINDOWED, "truncation", truncation, "'window'"),
                                 (init == "torch", "init", init, "'torch'")):
        if not ok:
            raise ConfigError(f"`{name}` {value!r} does not apply to cell {cell!r}; use "
                              f"`{name}` {fix}")


def _require(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise field_error(name, value, rule)


# -- BPTT truncation, a model setting: its text form and the value it parses to ----------------
TRUNCATION_KINDS = ("window", "full", "tau", "random")
ACCEPTED_FORMS = "'window', 'full', 'tau:K' (K an integer >= 1) or 'random:P' (0 < P <= 1)"


@dataclass(frozen=True)
class Truncation:
    """A BPTT truncation policy (:mod:`seqlm.models.truncation` describes each kind).

    Attributes:
        kind: One of ``'window'``, ``'full'``, ``'tau'``, ``'random'``.
        k: Number of steps each loss term reaches back, for ``'tau'`` only.
        p: Probability that the backward signal continues through a step, for ``'random'`` only.

    Raises:
        ConfigError: ``kind`` is unknown, or ``k``/``p`` is missing, out of range or given for a
            kind that does not use it.
    """

    kind: str = "window"
    k: int | None = None
    p: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TRUNCATION_KINDS:
            raise ConfigError(f"truncation kind {self.kind!r} is unknown; use {ACCEPTED_FORMS}")
        if self.kind == "tau":
            k_ok = isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1
            if not k_ok:
                raise ConfigError(f"truncation 'tau' needs an integer k >= 1, got k={self.k!r}")
        elif self.k is not None:
            raise ConfigError(f"truncation {self.kind!r} takes no k, got k={self.k!r}; drop it")
        if self.kind == "random":
            p_ok = isinstance(self.p, (int, float)) and not isinstance(self.p, bool)
            if not (p_ok and 0.0 < self.p <= 1.0):
                raise ConfigError(f"truncation 'random' needs 0 < p <= 1, got p={self.p!r}")
        elif self.p is not None:
            raise ConfigError(f"truncation {self.kind!r} takes no p, got p={self.p!r}; drop it")

    @classmethod
    def parse(cls, text: str) -> "Truncation":
        """Read ``'window'``, ``'full'``, ``'tau:K'`` or ``'random:P'``.

        Raises:
            ConfigError: ``text`` is none of the accepted forms.
        """
        bad = ConfigError(f"truncation {text!r} is not understood; use {ACCEPTED_FORMS}")
        if not isinstance(text, str):
            raise bad
        kind, sep, arg = text.strip().partition(":")
        if kind in ("window", "full") and not sep:
            return cls(kind)
        if kind == "tau" and arg.isascii() and arg.isdigit() and int(arg) >= 1:
            return cls("tau", k=int(arg))
        if kind == "random" and arg:
            try:
                p = float(arg)
            except ValueError:
                raise bad from None
            if 0.0 < p <= 1.0:
                return cls("random", p=p)
        raise bad

    def __str__(self) -> str:
        if self.kind == "tau":
            return f"tau:{self.k}"
        if self.kind == "random":
            return f"random:{float(self.p)!r}"
        return self.kind


def as_truncation(truncation: Truncation | str | None) -> Truncation:
    """Accept a :class:`Truncation`, its text form, or ``None`` (``window``).

    Raises:
        ConfigError: the text is not an accepted form.
    """
    if truncation is None:
        return Truncation()
    if isinstance(truncation, Truncation):
        return truncation
    return Truncation.parse(truncation)
