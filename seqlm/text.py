"""Corpora: read text from files, directories, stdin or a registered name, and clean it.

``--corpus`` takes a path to a UTF-8 text file, a directory (its ``*.txt`` files in sorted
order), ``-`` for stdin, or a registered name (:data:`CORPORA`). ``builtin`` and
``python-source`` come with Python itself (:data:`OFFLINE`); the other named corpora are looked up in each directory of ``SEQLM_DATA`` (``<name>.txt`` with the right
sha1), then in the cache (``SEQLM_CACHE``, default the user's cache directory), and only then
downloaded once, verified by sha1 and written atomically.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seqlm.cleaning import CLEANING, clean, clean_pieces  # noqa: F401 (seqlm.text API)
from seqlm.errors import CorpusError

_BLOCK_BYTES = 1 << 24  # read_pieces: 16 MiB of a file at a time
_BINARY_PROBE = 1 << 16  # NUL bytes in a file's first 64 KiB mark it as binary


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus seqlm can fetch by name: where from, and the sha1 that proves it is the one."""

    name: str
    url: str
    sha1: str
    description: str


CORPORA: dict[str, NamedCorpus | None] = {
    "builtin": None,  # CPython's own documentation topics (pydoc_data), always available
    "python-source": None,  # the standard library's own .py files, always available
    "timemachine": NamedCorpus(
        "timemachine",
        "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "090b5e7e70c295757f55df93cb0a180b9691891a",
        "H. G. Wells, The Time Machine (d2l's copy, 178,979 bytes)",
    ),
    "tinyshakespeare": NamedCorpus(
        "tinyshakespeare",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "04486597058d11dcc2c556b1d0433891eb639d2e",
        "Tiny Shakespeare (char-rnn's input.txt, 1,115,394 bytes)",
    ),
}


def read_corpus(spec: str = "builtin", *, encoding: str = "utf-8") -> str:
    """Reads the text a ``--corpus`` value names, with newlines normalised to ``\\n``.

    Raises:
        CorpusError: a missing path, a directory without ``.txt`` files, an undecodable or
            binary file, an empty corpus, an unknown name, or a failed download.
    """
    if spec == "-":
        data = sys.stdin.buffer.read()
        text = decode_bytes(data, "<stdin>", encoding)
    elif spec in OFFLINE:
        text = OFFLINE[spec]()
    elif spec in CORPORA:
        text = read_file(fetch(spec), "utf-8")
    else:
        text = "\n".join(read_file(f, encoding) for f in corpus_files(spec))
    if not text.strip():
        raise _empty(spec)
    return text


def _empty(spec: str) -> CorpusError:
    return CorpusError(f"{spec}: the corpus is empty; give a file with some text")


def corpus_files(spec: str) -> list[Path]:
    """The files a path ``--corpus`` names: the file itself, or a directory's ``*.txt``.

    Raises:
        CorpusError: no such path, or a directory without ``.txt`` files.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CorpusError(f"{path}: directory has no .txt files; put the text in *.txt "
                              "files or pass one file")
        return files
    if path.exists():
        return [path]
    raise CorpusError(f"{spec}: no such file or directory, and not a known corpus name "
                      f"({', '.join(CORPORA)})")


def read_pieces(spec: str = "builtin", *, encoding: str = "utf-8",
                block: int = _BLOCK_BYTES) -> Iterator[str]:
    """The text :func:`read_corpus` returns, in pieces: files are read ``block`` bytes at a
    time, so memory stays bounded however large they are (stdin and named corpora come in
    one piece). Joined, the pieces equal ``read_corpus(spec, encoding=encoding)``.

    Raises:
        CorpusError: as :func:`read_corpus`; an empty corpus is reported after its pieces.
    """
    if spec == "-" or spec in CORPORA:
        yield read_corpus(spec, encoding=encoding)
        return
    seen_text = False
    for i, path in enumerate(corpus_files(spec)):
        if i:
            yield "\n"
        for piece in _decode_blocks(path, encoding, block):
            seen_text = seen_text or (bool(piece) and not piece.isspace())
            yield piece
    if not seen_text:
        raise _empty(spec)


def _decode_blocks(path: Path, encoding: str, block: int) -> Iterator[str]:
    """:func:`read_file` a block at a time: the same checks, the same text, in pieces.
    UTF-16 and UTF-32 files are read whole: their block decoders insist on a BOM that
    decoding a whole file does not need."""
    try:
        b"".decode(encoding)  # refuses names that are not text encodings, as read_file does
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError:
        raise _unknown_encoding(encoding) from None
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        yield read_file(path, encoding)
        return
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror}); check the path and "
                          "permissions") from None
    offset, at_start, held = 0, True, ""
    with handle:
        data = handle.read(max(block, _BINARY_PROBE))
        _check_not_binary(data, str(path), encoding)
        while True:
            final = not data
            offset += len(data)
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                raise _undecodable(str(path), encoding, exc, offset) from None
            if at_start:  # a BOM, however many, only at the very start
                text = text.lstrip("\ufeff")
                at_start = not text
            text, held = held + text, ""
            if text.endswith("\r") and not final:  # it may be half of a \r\n
                text, held = text[:-1], "\r"
            if text:
                yield text.replace("\r\n", "\n").replace("\r", "\n")
            if final:
                return
            data = handle.read(block)


def read_file(path: Path, encoding: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror}); check the path and "
                          "permissions") from None
    return decode_bytes(data, str(path), encoding)


def decode_bytes(data: bytes, name: str, encoding: str) -> str:
    """Decodes ``data``, normalising ``\\r\\n`` and ``\\r`` to ``\\n`` and dropping a BOM.

    Raises:
        CorpusError: binary data, or a byte sequence invalid in ``encoding`` (with its offset).
    """
    _check_not_binary(data, name, encoding)
    try:
        text = data.decode(encoding)
    except LookupError:
        raise _unknown_encoding(encoding) from None
    except UnicodeDecodeError as exc:
        raise _undecodable(name, encoding, exc, len(data)) from None
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _unknown_encoding(encoding: str) -> CorpusError:
    return CorpusError(f"`encoding` {encoding}: unknown encoding; try utf-8 or latin-1")


def _check_not_binary(data: bytes, name: str, encoding: str) -> None:
    if b"\x00" in data[:_BINARY_PROBE] and not encoding.lower().startswith("utf-16"):
        raise CorpusError(f"{name}: looks like a binary file (it has NUL bytes); give a text file")


def _undecodable(name: str, encoding: str, exc: UnicodeDecodeError, end: int) -> CorpusError:
    """The error for ``exc``, raised decoding bytes that end at file offset ``end``: the
    bytes a codec was looking at are always the last ones it was given (utf-8-sig leaves
    out the BOM), so the bad byte sits at ``end - len(exc.object) + exc.start``."""
    at = end - len(exc.object) + exc.start
    return CorpusError(f"{name}: not valid {encoding}: byte 0x{exc.object[exc.start]:02x} at "
                       f"offset {at}; pass `encoding` with the file's encoding (e.g. "
                       "`encoding` latin-1)")


def _builtin_text() -> str:
    """The English documentation topics shipped with every CPython (about 460 K characters)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


PYTHON_SOURCE_CHARS = 4_000_000  # python-source: whole files while the total stays within this
PYTHON_SOURCE_FILE_BYTES = 200_000  # python-source: larger files are left out
# Directories python-source leaves out: installed packages, the test suites (their data files
# include deliberately broken and non-UTF-8 code) and the generated codec tables.
PYTHON_SOURCE_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                                "__pycache__", "encodings"})


def python_source_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files that make up ``python-source``, in the sorted
    order of their paths under ``root`` (default: the running Python's stdlib directory from
    :mod:`sysconfig`), without :data:`PYTHON_SOURCE_SKIP` directories and files over
    :data:`PYTHON_SOURCE_FILE_BYTES` (pydoc_data/topics.py is the builtin corpus as a Python
    string; _pydecimal.py repeats decimal)."""
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    found = [p for p in root.rglob("*.py")
             if not PYTHON_SOURCE_SKIP & set(p.relative_to(root).parts[:-1])
             and p.is_file() and p.stat().st_size <= PYTHON_SOURCE_FILE_BYTES]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _python_source_text(root: Path | None = None,
                        max_chars: int = PYTHON_SOURCE_CHARS) -> str:
    """``python-source``: the char-rnn classic of training on code. Whole files (each after a
    ``# <path>`` line) in :func:`python_source_files` order, while the total stays within
    ``max_chars`` (about 4 MB of the 10 MB CPython 3.11 has); a file that is not UTF-8 is
    left out. The text is the running Python's: another version gives another corpus."""
    pieces, total = [], 0
    base = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    for path in python_source_files(base):
        try:
            text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        except (OSError, UnicodeDecodeError):
            continue
        piece = f"# {path.relative_to(base).as_posix()}\n{text.strip()}\n\n"
        if total + len(piece) > max_chars:
            break
        pieces.append(piece)
        total += len(piece)
    return "".join(pieces)


OFFLINE = {"builtin": _builtin_text, "python-source": _python_source_text}


def cache_dir() -> Path:
    """``SEQLM_CACHE``, else the platform's per-user cache directory + ``seqlm``."""
    if os.environ.get("SEQLM_CACHE"):
        return Path(os.environ["SEQLM_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "seqlm"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, *, timeout: float = 30.0) -> Path:
    """The local path of the named corpus, downloading it once if no verified copy exists.

    Raises:
        CorpusError: offline with no copy (the message gives the URL and where to put the
            file), a checksum mismatch (nothing is cached), or an unwritable cache.
    """
    entry = CORPORA[name]
    for folder in filter(None, os.environ.get("SEQLM_DATA", "").split(os.pathsep)):
        candidate = Path(folder).expanduser() / f"{name}.txt"
        if candidate.is_file() and sha1_of(candidate) == entry.sha1:
            return candidate
    target = cache_dir() / f"{name}.txt"
    if target.is_file() and sha1_of(target) == entry.sha1:
        return target
    download(entry.url, target, entry.sha1, timeout=timeout)
    return target


def download(url: str, target: Path, sha1: str, *, timeout: float = 30.0) -> None:
    """Downloads ``url`` to ``target`` through a temporary file renamed into place only when
    its sha1 matches, so a failed or wrong download never leaves a file behind."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise CorpusError(f"cache directory {target.parent} is not writable ({exc.strerror}); "
                          "set SEQLM_CACHE to a writable directory") from None
    try:
        digest = hashlib.sha1()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 16), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha1:
            raise CorpusError(f"{url}: checksum mismatch (sha1 {digest.hexdigest()}, expected "
                              f"{sha1}); nothing was cached. Get the right file and put it in a "
                              "SEQLM_DATA directory")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CorpusError(f"cannot download {url} ({reason}); save that file as {target.name} "
                          f"in {target.parent} or in a directory listed in SEQLM_DATA") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


