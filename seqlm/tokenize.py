"""Tokenizers: text → tokens → indices, vectorised, and back.

Three kinds, one interface (:class:`Tokenizer`):

* ``char``: Unicode code points (Chinese or any other script works as is). Encoding maps code
  points through a lookup table with numpy, a few MB at a time.
* ``word``: words and punctuation marks as separate tokens (``\\w+`` runs and single other
  characters); newlines dropped, or kept as a ``"\\n"`` token with ``keep_newlines=True``.
* ``bpe``: byte-level subwords trained with Hugging Face ``tokenizers`` (the ``bpe`` extra);
  decoding gives the exact text back.

Token arrays are numpy, of the smallest unsigned dtype that holds every index.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from seqlm.errors import ConfigError
from seqlm.vocab import UNK, Vocab

TOKENIZERS = ("char", "word", "bpe")
_CHUNK_CHARS = 1 << 22  # 4 Mi characters per encoding step bounds the temporary memory
_NO_SPACE_BEFORE = set(".,;:!?)]}%'\"")
_NO_SPACE_AFTER = set("([{$\"'")


def index_dtype(size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds indices ``0 .. size-1``."""
    return np.min_scalar_type(max(size - 1, 0))


def _chunks(text: str, size: int = _CHUNK_CHARS) -> Iterator[str]:
    """Cuts ``text`` into pieces of about ``size`` characters, each ending after whitespace
    where there is any, so no word is split between two pieces."""
    start = 0
    while start < len(text):
        end = _chunk_end(text, start, size)
        yield text[start:end]
        start = end


def _chunk_end(text: str, start: int, size: int) -> int:
    end = min(start + size, len(text))
    if end < len(text):
        cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
        end = cut + 1 if cut > start else end
    return end


def rechunk(pieces: Iterable[str], size: int = _CHUNK_CHARS) -> Iterator[str]:
    """The chunks ``_chunks("".join(pieces), size)`` gives, from a text that arrives in
    pieces, holding only the current piece and the unfinished chunk before it."""
    held, start = "", 0
    for piece in pieces:
        held, start = held[start:] + piece, 0
        while len(held) - start > size:  # more text follows the window: its cut is final
            end = _chunk_end(held, start, size)
            yield held[start:end]
            start = end
    yield from _chunks(held[start:], size)


def _pieces(text: str | Iterable[str], size: int = _CHUNK_CHARS) -> Iterator[str]:
    return _chunks(text, size) if isinstance(text, str) else rechunk(text, size)


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Tokenizer:
    """Base class. Subclasses set ``kind`` and implement the token split and its inverse.

    Attributes:
        vocab: the :class:`~seqlm.vocab.Vocab` the indices refer to.
        options: the keyword options the tokenizer was built with (saved with it).
    """

    kind = ""

    def __init__(self, vocab: Vocab, **options) -> None:
        self.vocab = vocab
        self.options = options

    @property
    def dtype(self) -> np.dtype:
        return index_dtype(len(self.vocab))

    def tokens(self, text: str) -> list[str]:
        raise TypeError(f"{type(self).__name__} does not split text")

    def encode(self, text: str) -> np.ndarray:
        """Indices of the tokens of ``text`` (unknown tokens → 0), shape ``(n,)``."""
        parts = list(self.encode_pieces([text]))
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def encode_pieces(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        """:meth:`encode` of the text the pieces make up, a few MB of indices at a time:
        concatenated, the arrays equal ``encode("".join(pieces))``."""
        for chunk in rechunk(pieces):
            yield self._encode_chunk(chunk)

    def _encode_chunk(self, chunk: str) -> np.ndarray:
        ids = list(map(self._lookup.__getitem__, self.tokens(chunk)))
        return np.array(ids, dtype=self.dtype)

    @property
    def _lookup(self) -> dict:
        table = getattr(self, "_lookup_table", None)
        if table is None:
            table = self._lookup_table = _UnkDict(self.vocab.token_to_idx)
        return table

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab.decode(ids))

    def state(self) -> dict:
        """Everything needed to rebuild this tokenizer, as JSON-serialisable data."""
        return {"kind": self.kind, "options": dict(self.options), "vocab": self.vocab.to_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={len(self.vocab)}, {self.options})"


class _UnkDict(dict):
    """A token → index map whose missing keys give ``<unk>``'s index, for fast ``map``."""

    def __missing__(self, key: str) -> int:
        return 0


class CharTokenizer(Tokenizer):
    """One token per Unicode code point."""

    kind = "char"

    @classmethod
    def fit(cls, text: str | Iterable[str], *, min_freq=1, max_size=None,
            reserved_tokens=()) -> CharTokenizer:
        """Builds the vocabulary from ``text`` (a str, or the pieces of one; counts taken with
        numpy, chunk by chunk)."""
        counts = np.zeros(0x110000, dtype=np.int64)
        first = np.full(0x110000, np.iinfo(np.int64).max, dtype=np.int64)
        offset = 0
        for chunk in _pieces(text):
            cps = _codepoints(chunk)
            counts += np.bincount(cps, minlength=0x110000)
            seen, where = np.unique(cps, return_index=True)
            first[seen] = np.minimum(first[seen], offset + where)
            offset += len(cps)
        present = np.flatnonzero(counts)
        present = present[np.argsort(first[present], kind="stable")]
        freqs = [(chr(cp), int(counts[cp])) for cp in present]
        vocab = Vocab(freqs, min_freq=min_freq, max_size=max_size, reserved_tokens=reserved_tokens)
        return cls(vocab)

    def tokens(self, text: str) -> list[str]:
        return list(text)

    def _encode_chunk(self, chunk: str) -> np.ndarray:
        return self._table[_codepoints(chunk)]

    @property
    def _table(self) -> np.ndarray:
        table = getattr(self, "_cp_table", None)
        if table is None:
            table = np.zeros(0x110000, dtype=self.dtype)
            for token, idx in self.vocab.token_to_idx.items():
                if len(token) == 1:
                    table[ord(token)] = idx
            self._cp_table = table
        return table


class WordTokenizer(Tokenizer):
    """Words (``\\w+``) and single punctuation marks; optionally newlines as tokens."""

    kind = "word"

    def __init__(self, vocab: Vocab, *, keep_newlines: bool = False) -> None:
        super().__init__(vocab, keep_newlines=keep_newlines)
        self._pattern = re.compile(r"\w+|[^\w\s]|\n" if keep_newlines else r"\w+|[^\w\s]")

    @classmethod
    def fit(cls, text: str | Iterable[str], *, min_freq=1, max_size=None, reserved_tokens=(),
            keep_newlines: bool = False) -> WordTokenizer:
        """Counts the words of ``text`` (a str, or the pieces of one) in order."""
        pattern = cls(Vocab(), keep_newlines=keep_newlines)._pattern
        counts: Counter[str] = Counter()
        for chunk in _pieces(text):
            counts.update(pattern.findall(chunk))
        vocab = Vocab(counts.items(), min_freq=min_freq, max_size=max_size,
                      reserved_tokens=reserved_tokens)
        return cls(vocab, keep_newlines=keep_newlines)

    def tokens(self, text: str) -> list[str]:
        return self._pattern.findall(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Joins words with single spaces, none before closing punctuation or around newlines."""
        out: list[str] = []
        prev = "\n"
        for token in self.vocab.decode(ids):
            glue = (prev == "\n" or token == "\n" or token in _NO_SPACE_BEFORE
                    or prev in _NO_SPACE_AFTER)
            out.append(token if glue else " " + token)
            prev = token
        return "".join(out)


class BPETokenizer(Tokenizer):
    """Byte-level BPE subwords from Hugging Face ``tokenizers``; decoding is exact."""

    kind = "bpe"

    def __init__(self, vocab: Vocab, model, **options) -> None:
        super().__init__(vocab, **options)
        self.model = model

    @classmethod
    def fit(cls, text: str | Iterable[str], *, vocab_size: int = 2000, min_freq=2,
            max_size=None, reserved_tokens=()) -> BPETokenizer:
        """Trains the merges on ``text`` (a str, or the pieces of one).

        Raises:
            ConfigError: ``tokenizers`` is not installed, or ``vocab_size`` is too small.
        """
        hf = _import_tokenizers()
        if vocab_size < 300:
            raise ConfigError(f"`bpe_vocab_size` must be at least 300 for byte-level BPE (256 "
                              f"bytes + specials), got {vocab_size}")
        model = hf.Tokenizer(hf.models.BPE(unk_token=UNK))
        model.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        model.decoder = hf.decoders.ByteLevel()
        specials = [UNK] + [t for t in reserved_tokens if t != UNK]
        trainer = hf.trainers.BpeTrainer(
            vocab_size=min(vocab_size, max_size or vocab_size), min_frequency=min_freq,
            special_tokens=specials, show_progress=False,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
        model.train_from_iterator(_pieces(text, 1 << 16), trainer)
        return cls._from_model(model, reserved_tokens, vocab_size=vocab_size)

    @classmethod
    def _from_model(cls, model, reserved_tokens, **options) -> BPETokenizer:
        table = [model.id_to_token(i) for i in range(model.get_vocab_size())]
        vocab = Vocab.from_dict({"idx_to_token": table, "reserved_tokens": list(reserved_tokens)})
        return cls(vocab, model, **options)

    def tokens(self, text: str) -> list[str]:
        return self.model.encode(text).tokens

    def _encode_chunk(self, chunk: str) -> np.ndarray:
        pieces = self.model.encode_batch(chunk.splitlines(keepends=True))
        ids = [i for piece in pieces for i in piece.ids]
        return np.array(ids, dtype=self.dtype)

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode([int(i) for i in ids], skip_special_tokens=False)

    def state(self) -> dict:
        return {**super().state(), "bpe_model": self.model.to_str()}


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("`tokenizer` bpe needs Hugging Face tokenizers: "
                          "pip install 'seqlm[bpe]'") from None
    return tokenizers


def fit_tokenizer(kind: str, text: str | Iterable[str], **options) -> Tokenizer:
    """Builds a tokenizer of ``kind`` ('char', 'word' or 'bpe') from ``text`` (a str, or
    the pieces of one: the same tokenizer either way).

    Raises:
        ConfigError: an unknown kind (the message lists the known ones).
    """
    classes = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}
    if kind not in classes:
        raise ConfigError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZERS)}")
    return classes[kind].fit(text, **options)


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuilds a tokenizer saved with :meth:`Tokenizer.state`.

    Raises:
        ConfigError: the state is not one seqlm wrote.
    """
    kind = state.get("kind")
    vocab = Vocab.from_dict(state.get("vocab", {}))
    options = state.get("options", {})
    if kind == "char":
        return CharTokenizer(vocab)
    if kind == "word":
        return WordTokenizer(vocab, keep_newlines=bool(options.get("keep_newlines", False)))
    if kind == "bpe":
        if "bpe_model" not in state:
            raise ConfigError("a bpe tokenizer needs its tokenizer.json; it is missing")
        try:
            model = _import_tokenizers().Tokenizer.from_str(state["bpe_model"])
        except Exception as exc:  # tokenizers raises bare Exception for a malformed file
            raise ConfigError(f"the saved bpe tokenizer cannot be read ({exc}); it is "
                              "corrupt") from None
        tok = BPETokenizer._from_model(model, vocab.reserved_tokens, **options)
        return tok
    raise ConfigError(f"unknown tokenizer kind {kind!r} in saved state: {json.dumps(kind)}")
