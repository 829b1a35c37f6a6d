"""The vocabulary: a deterministic mapping between tokens and indices.

Order (as in the chapter's ``Vocab``, made deterministic): index 0 is ``<unk>``, then the
reserved tokens in the order given (e.g. ``<pad>``, ``<bos>``, ``<eos>``), then the remaining
tokens by descending frequency, ties broken by first occurrence in the text. Tokens rarer than
``min_freq`` are left out and map to ``<unk>``; ``max_size`` caps the total size.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from seqlm.errors import ConfigError

UNK = "<unk>"


class Vocab:
    """Tokens ↔ indices.

    Args:
        token_freqs: ``(token, count)`` pairs **in order of first occurrence** (a ``Counter``
            built by counting the text in order keeps that order).
        min_freq: tokens seen fewer times are not given an index.
        max_size: the largest vocabulary, ``<unk>`` and reserved tokens included.
        reserved_tokens: tokens that get the indices right after ``<unk>``.

    Raises:
        ConfigError: ``min_freq`` < 1, or ``max_size`` too small to hold the reserved tokens.
    """

    unk = 0

    def __init__(
        self,
        token_freqs: Iterable[tuple[str, int]] = (),
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        reserved_tokens: Sequence[str] = (),
    ) -> None:
        if min_freq < 1:
            raise ConfigError(f"min_freq must be at least 1, got {min_freq}")
        specials = [UNK] + [t for t in dict.fromkeys(reserved_tokens) if t != UNK]
        if max_size is not None and max_size < len(specials):
            raise ConfigError(
                f"max_size={max_size} cannot hold <unk> and the {len(specials) - 1} reserved "
                "tokens; raise max_size"
            )
        # sorted() is stable, so equal counts keep their first-occurrence order.
        ranked = sorted(token_freqs, key=lambda pair: -pair[1])
        self.token_freqs: list[tuple[str, int]] = ranked
        idx_to_token = list(specials)
        seen = set(specials)
        for token, count in ranked:
            if count < min_freq or (max_size is not None and len(idx_to_token) >= max_size):
                break
            if token not in seen:
                idx_to_token.append(token)
                seen.add(token)
        self.reserved_tokens = tuple(specials[1:])
        self.idx_to_token: list[str] = idx_to_token
        self.token_to_idx: dict[str, int] = {t: i for i, t in enumerate(idx_to_token)}

    @classmethod
    def from_tokens(cls, tokens: Iterable[str], **kwargs) -> Vocab:
        """Counts ``tokens`` in order and builds the vocabulary (keyword args as ``__init__``)."""
        return cls(Counter(tokens).items(), **kwargs)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    def __getitem__(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return self.encode(tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        return f"Vocab(size={len(self)}, [{head}{', ...' if len(self) > 8 else ''}])"

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Maps tokens to indices; unknown tokens become ``unk`` (0)."""
        get = self.token_to_idx.get
        return [get(t, 0) for t in tokens]

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Maps indices back to tokens.

        Raises:
            IndexError: an index outside ``[0, len(self))``.
        """
        table = self.idx_to_token
        return [table[int(i)] for i in indices]

    def to_dict(self) -> dict:
        """A JSON-serialisable form; :meth:`from_dict` restores an equal vocabulary."""
        return {
            "idx_to_token": self.idx_to_token,
            "reserved_tokens": list(self.reserved_tokens),
            "token_freqs": [[t, c] for t, c in self.token_freqs],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        try:
            table = [str(t) for t in data["idx_to_token"]]
            freqs = [(str(t), int(c)) for t, c in data.get("token_freqs", [])]
            reserved = tuple(str(t) for t in data.get("reserved_tokens", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a seqlm vocabulary: {exc!r}; re-create it") from None
        if not table or table[0] != UNK or len(set(table)) != len(table):
            raise ConfigError("not a seqlm vocabulary: index 0 must be <unk> and tokens unique")
        vocab = cls.__new__(cls)
        vocab.token_freqs = freqs
        vocab.reserved_tokens = reserved
        vocab.idx_to_token = table
        vocab.token_to_idx = {t: i for i, t in enumerate(table)}
        return vocab

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
