"""User-facing errors.

Every failure a user can cause (a bad path, a bad flag value, a corrupt checkpoint) is raised
as a :class:`SeqlmError`. The command line turns it into one line on stderr and exit status 2;
library callers can catch it like any other exception. Messages name the problem, the value
received and what to do next.
"""


class SeqlmError(Exception):
    """Base class of the errors a user can fix; the message says how."""


class ConfigError(SeqlmError, ValueError):
    """A configuration field or command-line flag has a value seqlm cannot use."""


class CorpusError(SeqlmError):
    """A corpus cannot be read, decoded, found, downloaded or is too short."""


class CheckpointError(SeqlmError):
    """A checkpoint or run directory is missing, incomplete, corrupt or inconsistent."""


class ExportError(SeqlmError):
    """A model cannot be exported, or an exported directory is missing, incomplete or stale."""
