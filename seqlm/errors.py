"""User-facing errors, and the exit codes the command line turns them into.

Every failure a user can cause (a bad path, a bad setting, a corrupt checkpoint) is raised as a
:class:`SeqlmError`. Library callers catch it like any other exception; the command line
prints it as one line on stderr and exits with :data:`EXIT_USAGE`. Messages name the problem,
the value received and what to do next.

A message names a setting in backticks, by its config field or keyword name: ``\\`lr\\` must be
a positive number, got -1.0``. The command line prints each such name as the flag a user types
(``--lr``), so the library states every rule once, in the names its callers use.
"""

import signal

EXIT_USAGE = 2  # a SeqlmError, or a bad flag (argparse's own status for usage errors)
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C, after saving checkpoints/last
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: SIGTERM, likewise
EXIT_ON_SIGNAL = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}


class SeqlmError(Exception):
    """Base class of the errors a user can fix; the message says how."""


class ConfigError(SeqlmError, ValueError):
    """A configuration field, keyword or command-line flag has a value seqlm cannot use."""


class CorpusError(SeqlmError):
    """A corpus cannot be read, decoded, found, downloaded or is too short."""


class CheckpointError(SeqlmError):
    """A checkpoint or run directory is missing, incomplete, corrupt or inconsistent."""


class ExportError(SeqlmError):
    """A model cannot be exported, or an exported directory is missing, incomplete or stale."""


def field_error(name: str, value: object, rule: str) -> ConfigError:
    """``\\`name\\` must be RULE, got VALUE``: the one wording of a value outside its range."""
    return ConfigError(f"`{name}` must be {rule}, got {value!r}")


def choice_error(name: str, value: object, choices: tuple) -> ConfigError:
    """``unknown \\`name\\` VALUE; choose one of A, B``: a value outside a fixed set."""
    return ConfigError(f"unknown `{name}` {value!r}; choose one of "
                       f"{', '.join(map(str, choices))}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raises :func:`choice_error` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise choice_error(name, value, choices)


def check_positive_int(name: str, value: object) -> None:
    """Raises :func:`field_error` unless ``value`` is an int >= 1 (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise field_error(name, value, "a positive integer")


def check_range(name: str, value: object, rule: str, *, below: float,
                 closed: bool = False) -> None:
    """Raises :func:`field_error` (with ``rule``) unless ``value`` is a number in
    [0, below), or [0, below] when ``closed`` (bools are not numbers here)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (0 <= value <= below if closed else 0 <= value < below):
        raise field_error(name, value, rule)


class TrainingDiverged(SeqlmError):
    """Training diverged and the divergence guard could not (or was told not to) recover; the
    saved checkpoints are the last good ones."""
