"""``--clean``: what is done to a corpus's text before it is cut into tokens.

:func:`clean` takes a whole text; :func:`clean_pieces` the same text in pieces (a big corpus
is read a block at a time) and gives the same result. Both are re-exported by
:mod:`seqlm.text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from seqlm.errors import choice_error

CLEANING = ("none", "lower", "letters", "gutenberg")
_HELD_CHARS = 1 << 22  # clean_pieces("lower") holds at most this much text back
_HEADER_CHARS = 1 << 17  # "gutenberg": a START marker is looked for in this much of the start
# Project Gutenberg's marker lines, current ("*** START OF THE PROJECT GUTENBERG EBOOK ...")
# and older ("*END*THE SMALL PRINT! ...", "End of the Project Gutenberg EBook of ...").
_PG_START = re.compile(r"\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG"
                       r"|\*END\*THE SMALL PRINT)", re.IGNORECASE)
_PG_END = re.compile(r"\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG"
                     r"|END OF (THE )?PROJECT GUTENBERG'?S? E-?(BOOK|TEXT))", re.IGNORECASE)


def clean(text: str, mode: str = "none") -> str:
    """Applies ``--clean``.

    * ``none``: the text as read.
    * ``lower``: lowercase.
    * ``letters``: the chapter's preprocessing of The Time Machine: every run of characters
      other than A–Z/a–z (newlines included, so words of adjacent lines stay apart) becomes
      one space, then lowercase.
    * ``gutenberg``: only the books of Project Gutenberg files: the lines between each
      ``*** START OF ...`` marker and the next ``*** END OF ...`` marker (older files' markers
      too), markers dropped. Text with no START marker in its first 128 Ki characters is kept
      from its start; after an END marker everything is dropped up to the next START marker,
      so in a directory a file without markers that follows a Gutenberg file is dropped too.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode == "none":
        return text
    if mode == "lower":
        return text.lower()
    if mode == "letters":
        return re.sub(r"[^A-Za-z]+", " ", text).lower()
    if mode == "gutenberg":
        return "".join(_gutenberg([text]))
    raise choice_error("clean", mode, CLEANING)


def _gutenberg(pieces) -> Iterator[str]:
    """``clean(..., "gutenberg")`` a line at a time, one output piece per input piece: before
    the first START marker lines are held back (dropped when one comes, given back when none
    came in :data:`_HEADER_CHARS`); between START and END they pass; after END they are
    dropped until the next START."""
    state, held, held_chars, partial = "head", [], 0, ""

    def keep(lines: list[str]) -> str:
        nonlocal state, held, held_chars
        out = []
        for line in lines:
            if state == "head":
                if _PG_START.match(line):
                    state, held = "in", []
                elif _PG_END.match(line):  # END with no START: all before it is the book
                    out += held
                    state, held = "out", []
                else:
                    held.append(line)
                    held_chars += len(line)
                    if held_chars > _HEADER_CHARS:
                        out += held
                        state, held = "in", []
            elif state == "in":
                if _PG_END.match(line):
                    state = "out"
                elif not _PG_START.match(line):
                    out.append(line)
            elif _PG_START.match(line):
                state = "in"
        return "".join(out)

    for piece in pieces:
        *lines, partial = (partial + piece).split("\n")
        out = keep([line + "\n" for line in lines])
        if out:
            yield out
    out = keep([partial] if partial else []) + "".join(held)
    if out:
        yield out


def clean_pieces(pieces, mode: str = "none") -> Iterator[str]:
    """:func:`clean` for a text given in pieces (``pieces`` an iterable of str): joined, the
    output equals ``clean("".join(pieces), mode)``.

    ``letters`` merges a run of non-letters cut by a piece boundary into its one space;
    ``lower`` lowercases up to the last space or newline of what it has (Greek final sigma
    depends on the letters around it, and a space ends that context), holding back at most
    4 Mi characters of a text without spaces.

    Raises:
        ConfigError: an unknown mode.
    """
    clean("", mode)  # raises for an unknown mode before any piece is read
    if mode == "none":
        yield from pieces
    elif mode == "gutenberg":
        yield from _gutenberg(pieces)
    elif mode == "lower":
        held = ""
        for piece in pieces:
            text = held + piece
            cut = max(text.rfind(" "), text.rfind("\n")) + 1
            if not cut and len(text) < _HELD_CHARS:
                held = text
                continue
            cut = cut or len(text)
            held = text[cut:]
            yield text[:cut].lower()
        if held:
            yield held.lower()
    else:
        after_space = False
        for piece in pieces:
            out = clean(piece, mode)
            if after_space and out.startswith(" "):
                out = out[1:]
            if out:
                after_space = out.endswith(" ")
                yield out
