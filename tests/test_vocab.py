import pytest
from hypothesis import given, strategies as st

from seqlm.errors import ConfigError
from seqlm.vocab import UNK, Vocab


def test_order_unk_reserved_then_frequency_ties_by_first_occurrence():
    vocab = Vocab.from_tokens("bbaacd", reserved_tokens=["<pad>", "<bos>"])
    # b and a both occur twice: b came first; c and d once: c came first.
    assert vocab.idx_to_token == [UNK, "<pad>", "<bos>", "b", "a", "c", "d"]
    assert vocab["a"] == 4 and vocab["zzz"] == 0 and vocab.unk == 0


def test_min_freq_and_max_size():
    tokens = list("aaabbc")
    assert Vocab.from_tokens(tokens, min_freq=2).idx_to_token == [UNK, "a", "b"]
    assert Vocab.from_tokens(tokens, max_size=2).idx_to_token == [UNK, "a"]
    with pytest.raises(ConfigError):
        Vocab.from_tokens(tokens, min_freq=0)
    with pytest.raises(ConfigError):
        Vocab.from_tokens(tokens, max_size=1, reserved_tokens=["<pad>"])


def test_encode_decode_and_getitem_list():
    vocab = Vocab.from_tokens("hello")
    assert vocab.decode(vocab.encode("hello")) == list("hello")
    assert vocab[["h", "?"]] == [vocab["h"], 0]
    assert len(vocab) == 5  # <unk> h e l o


@given(st.lists(st.text(min_size=1, max_size=3), max_size=50), st.integers(1, 3))
def test_json_round_trip_exact(tokens, min_freq):
    vocab = Vocab.from_tokens(tokens, min_freq=min_freq, reserved_tokens=["<eos>"])
    again = Vocab.from_dict(vocab.to_dict())
    assert again == vocab
    assert again.token_freqs == vocab.token_freqs
    assert again.reserved_tokens == vocab.reserved_tokens


def test_save_load(tmp_path):
    vocab = Vocab.from_tokens(["世界", "a", "世界"])
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab


def test_from_dict_rejects_foreign_data():
    with pytest.raises(ConfigError):
        Vocab.from_dict({"idx_to_token": ["a", "<unk>"]})
    with pytest.raises(ConfigError):
        Vocab.from_dict({"nothing": 1})
