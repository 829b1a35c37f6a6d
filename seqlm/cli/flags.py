"""Command-line flags generated from the config dataclasses, and the parser that reports a
bad flag in one line."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from seqlm.config import field_types, flag, optional_fields


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr with exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"seqlm {self.prog.split()[-1]}: error: {message}; see --help\n")


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
