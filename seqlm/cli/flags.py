"""Command-line flags generated from the config dataclasses, the parser that reports a bad
flag in one line, and the one mapping from the library's setting names to flags."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from seqlm.errors import EXIT_USAGE
from seqlm.settings import field_types, optional_fields


_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")  # a setting named in a library message


def flag(name: str) -> str:
    """The flag of a setting: ``num_steps`` -> ``--num-steps``."""
    return "--" + name.replace("_", "-")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr with exit status 2; it records
    every long flag any seqlm parser defines, for :func:`as_flags`."""

    flags: set[str] = set()

    def add_argument(self, *names, **kwargs):
        Parser.flags.update(n for n in names if n.startswith("--"))
        return super().add_argument(*names, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_argument(*names, **kw):
            Parser.flags.update(n for n in names if n.startswith("--"))
            return add(*names, **kw)

        group.add_argument = add_argument
        return group

    def error(self, message: str):  # noqa: D401 - argparse API
        # "seqlm" for the top-level parser (which also reports a subcommand's unknown flags)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see --help\n")


def as_flags(message: str) -> str:
    """A library message as the command line says it: each setting named in backticks becomes
    the flag a user types (```lr``` -> ``--lr``); names that are no flag lose the backticks."""
    def name(match: re.Match) -> str:
        option = flag(match.group(1))
        return option if option in Parser.flags else match.group(1)

    return _SETTING.sub(name, message)


def _converter(kind: type, optional: bool):
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert if kind in (int, float) else (lambda t: None if optional and
                                                 t.lower() == "none" else t)


def add_config_flags(parser: argparse.ArgumentParser, cls, *, title: str,
                     skip: tuple[str, ...] = ()) -> None:
    """Adds ``--field-name`` for every field of ``cls``; values absent from the command line
    stay absent from the namespace, so presets and config files can fill them."""
    group = parser.add_argument_group(title)
    types, optional = field_types(cls), optional_fields(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if types[f.name] is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
            continue
        kw["type"] = _converter(types[f.name], f.name in optional)
        if f.metadata.get("choices"):
            kw["choices"] = list(f.metadata["choices"])
        group.add_argument(flag(f.name), **kw)


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` that the command line set."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def warn(message: str) -> None:
    print(f"seqlm: warning: {message}", file=sys.stderr)
