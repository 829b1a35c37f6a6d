"""The ``seqlm`` command line: a thin shell that turns flags into configs and prints.

Every user-facing failure is one line on stderr and exit status 2; interrupted training
exits 130 (Ctrl-C) or 143 (SIGTERM) after saving ``checkpoints/last``.
"""

from __future__ import annotations

import sys
import warnings

from seqlm.cli.flags import Parser, as_flags
from seqlm.errors import EXIT_INTERRUPTED, EXIT_USAGE, SeqlmError


def build_parser() -> Parser:
    from seqlm.cli import analysis, bench, commands, export, serve, training

    parser = Parser(prog="seqlm", description="Recurrent-neural-network language models: "
                    "prepare text, train, evaluate, generate, and look inside BPTT.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                metavar="COMMAND")
    training.register(sub)
    bench.register(sub)
    commands.register(sub)
    analysis.register(sub)
    export.register(sub)
    serve.register(sub)
    return parser


def _version() -> str:
    from seqlm.version import __version__

    return f"seqlm {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        try:
            return int(args.handler(args) or 0)
        except SeqlmError as exc:
            print(f"seqlm {args.command}: error: {as_flags(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            print(f"seqlm {args.command}: error: this command needs torch, which is not "
                  "installed; without torch, seqlm generate and seqlm serve read ONNX exports "
                  "(written by seqlm export where torch is)", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"seqlm {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `seqlm generate ... | head`
            sys.stderr.close()
            return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"seqlm: warning: {as_flags(text)}", file=sys.stderr)
