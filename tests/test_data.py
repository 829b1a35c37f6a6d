import numpy as np
import pytest

from seqlm.data import Corpus, build_corpus, split_text
from seqlm.errors import CorpusError


def test_split_text_contiguous_and_whole_words():
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 20
    parts = split_text(text, (0.9, 0.05, 0.05))
    assert "".join(parts) == text
    assert all(p == "" or p[-1] == " " for p in parts[:-1])
    assert abs(len(parts[0]) / len(text) - 0.9) < 0.02


def test_build_corpus_vocab_from_train_only_and_oov():
    text = "aaaa bbbb aaaa bbbb " * 20 + "zzzz"
    corpus = build_corpus(text, tokenizer="char", split=(0.9, 0.05, 0.05))
    assert "z" not in corpus.tokenizer.vocab
    assert corpus.oov_rate["test"] > 0 and corpus.oov_rate["train"] == 0
    short = build_corpus(text, tokenizer="char", max_tokens=10)
    assert len(short.splits["train"]) == 10


def test_prepared_corpus_is_memory_mapped(tmp_path):
    corpus = build_corpus("hello world, " * 100, tokenizer="word")
    corpus.save(tmp_path / "prep")
    again = Corpus.load(tmp_path / "prep")
    assert isinstance(again.splits["train"], np.memmap)
    assert np.array_equal(again.splits["train"], corpus.splits["train"])
    assert again.tokenizer.vocab == corpus.tokenizer.vocab
    with pytest.raises(CorpusError, match="seqlm prepare"):
        Corpus.load(tmp_path)
