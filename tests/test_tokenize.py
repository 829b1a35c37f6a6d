import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from seqlm.errors import ConfigError
from seqlm.tokenize import (BPETokenizer, CharTokenizer, WordTokenizer, fit_tokenizer,
                            index_dtype, tokenizer_from_state)


def test_char_counts_order_and_unknown():
    tok = CharTokenizer.fit("hello world")
    assert tok.vocab.idx_to_token[:4] == ["<unk>", "l", "o", "h"]
    ids = tok.encode("hello?")
    assert ids.dtype == np.uint8
    assert ids.tolist()[-1] == 0
    assert tok.decode(ids) == "hello<unk>"


def test_char_handles_chinese_and_astral_code_points():
    text = "深度学习 🙂 深度"
    tok = CharTokenizer.fit(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab.idx_to_token[1] in ("深", "度")


def test_chunked_encoding_matches_plain_lookup(monkeypatch):
    import seqlm.tokenize as t

    monkeypatch.setattr(t, "_CHUNK_CHARS", 7)
    text = "a quick brown fox jumps over the lazy dog " * 5
    tok = CharTokenizer.fit(text)
    assert tok.encode(text).tolist() == tok.vocab.encode(list(text))
    words = WordTokenizer.fit(text)
    assert words.encode(text).tolist() == words.vocab.encode(text.split())


def test_word_tokens_punctuation_and_newlines():
    tok = WordTokenizer.fit("Hello, world.\nBye!", keep_newlines=True)
    assert tok.tokens("Hello, world.\nBye!") == ["Hello", ",", "world", ".", "\n", "Bye", "!"]
    assert tok.decode(tok.encode("Hello, world.\nBye!")) == "Hello, world.\nBye!"
    plain = WordTokenizer.fit("a b\nc")
    assert "\n" not in plain.vocab


def test_index_dtype_is_smallest():
    assert index_dtype(256) == np.uint8
    assert index_dtype(257) == np.uint16
    assert index_dtype(70000) == np.uint32


def test_bpe_round_trip_and_state():
    pytest.importorskip("tokenizers")
    text = "the quick brown fox jumps over the lazy dog.\n" * 50 + "naïve café 深度\n"
    tok = BPETokenizer.fit(text, vocab_size=320)
    assert tok.vocab.idx_to_token[0] == "<unk>"
    sample = "the lazy café fox 深度!\n"
    assert tok.decode(tok.encode(sample)) == sample
    again = tokenizer_from_state(tok.state())
    assert again.encode(sample).tolist() == tok.encode(sample).tolist()
    with pytest.raises(ConfigError):
        BPETokenizer.fit(text, vocab_size=100)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="char, word, bpe"):
        fit_tokenizer("sentencepiece", "abc")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_unicode_never_crashes(text):
    for kind in ("char", "word"):
        if kind == "char" and not text:
            continue
        tok = fit_tokenizer(kind, text or "x")
        ids = tok.encode(text)
        tok.decode(ids)
        if kind == "char":
            assert tok.decode(ids) == text  # every char of the text is in its own vocabulary


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=100), st.text(max_size=60))
def test_decode_encode_is_identity_or_unk(train, other):
    tok = CharTokenizer.fit(train)
    expected = "".join(c if c in tok.vocab else "<unk>" for c in other)
    assert tok.decode(tok.encode(other)) == expected
