"""Properties under arbitrary input (hypothesis).

* Tokenizers: any Unicode text encodes and decodes without error; byte-level BPE gives the
  text back exactly; word and char tokens come back as themselves or ``<unk>``.
* The bounded-memory pipeline equals the whole-text one, for any cut of the text into pieces:
  reading (encodings, BOMs, ``\\r\\n``, undecodable bytes and their messages), cleaning,
  splitting, chunking, and ``prepare_corpus`` against ``build_corpus``.
* Minibatches: for any length, batch size and num_steps, an epoch of either strategy uses all
  but fewer than ``(B + 1)·T`` tokens, whatever the array's dtype or whether it is
  memory-mapped; an epoch replays from the generator state saved at its start, from any
  minibatch; evaluation predicts every token once, in order.

(tests/test_tokenize.py and tests/test_data.py hold the first properties of the char/word
tokenizers and of the two strategies; these go further.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from seqlm.config import DataConfig
from seqlm.batches import SAMPLERS as BATCHERS, eval_batches, random_batches, sequential_batches
from seqlm.data import load_corpus, split_pieces, split_text
from seqlm.errors import CorpusError
from seqlm.prepare import prepare_corpus
from seqlm.text import clean, clean_pieces, read_corpus, read_pieces
from seqlm.tokenize import _chunks, fit_tokenizer, rechunk
from seqlm.vocab import UNK

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Characters that stress the edges: whitespace the splits cut at (\x1c and \u2003 are
# whitespace too), \r for newline folding, a BOM, final sigma, a combining mark, astral.
EDGY = st.sampled_from(list("ab Z\n\r\t.,'(\x1c\u2003\ufeffΣσé\u0301€😀"))
edgy_text = st.text(alphabet=EDGY, max_size=60)
any_text = st.text(max_size=80)
TRAIN_TEXT = ("the time traveller for so it will be convenient to speak of him was "
              "expounding a recondite matter to us, his grey eyes shone and twinkled.\n") * 20


def pieces_of(draw_cuts, text: str) -> list[str]:
    cuts = sorted(draw_cuts)
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


@st.composite
def text_in_pieces(draw, text=edgy_text):
    value = draw(text)
    cuts = draw(st.lists(st.integers(0, len(value)), max_size=6))
    return value, pieces_of(cuts, value)


# -- tokenizers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("tokenizers")
    return fit_tokenizer("bpe", TRAIN_TEXT, vocab_size=300)


@settings(max_examples=80, deadline=None)
@given(text=any_text)
def test_byte_level_bpe_gives_any_text_back_exactly(bpe, text):
    ids = bpe.encode(text)
    assert ids.dtype == bpe.dtype and (len(ids) == 0 or int(ids.max()) < len(bpe.vocab))
    assert bpe.decode(ids) == text


@settings(max_examples=80, deadline=None)
@given(train=any_text, text=any_text, keep_newlines=st.booleans())
def test_word_tokens_come_back_as_themselves_or_unk(train, text, keep_newlines):
    tok = fit_tokenizer("word", train or "x", keep_newlines=keep_newlines)
    ids = tok.encode(text)
    tokens = tok.tokens(text)
    assert tok.vocab.decode(ids) == [t if t in tok.vocab else UNK for t in tokens]
    if all(t in tok.vocab for t in tokens):  # the decoded text splits into the same tokens
        assert tok.tokens(tok.decode(ids)) == tokens


@settings(max_examples=60, deadline=None)
@given(train=any_text, text=any_text, max_vocab=st.none() | st.integers(1, 6))
def test_char_tokens_under_a_capped_vocabulary_are_themselves_or_unk(train, text, max_vocab):
    assume(train)
    tok = fit_tokenizer("char", train, max_size=max_vocab)
    assert tok.decode(tok.encode(text)) == "".join(c if c in tok.vocab else UNK for c in text)


# -- the bounded-memory pipeline equals the whole-text one ---------------------------------------
@settings(max_examples=60, deadline=None)
@given(data=text_in_pieces(), size=st.integers(1, 9))
def test_rechunk_cuts_where_whole_text_chunking_cuts(data, size):
    text, pieces = data
    assert list(rechunk(pieces, size)) == list(_chunks(text, size))


@settings(max_examples=100, deadline=None)
@given(data=text_in_pieces(), mode=st.sampled_from(["none", "lower", "letters", "gutenberg"]))
def test_cleaning_pieces_equals_cleaning_the_text(data, mode):
    text, pieces = data
    assert "".join(clean_pieces(pieces, mode)) == clean(text, mode)


gutenberg_lines = st.lists(st.sampled_from([
    "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n", "*** END OF THIS PROJECT GUTENBERG EBOOK\n",
    "*END*THE SMALL PRINT! V.1\n", "End of Project Gutenberg's X\n", "prose\n", "\n", "tail"]),
    max_size=12).map("".join)


@settings(max_examples=100, deadline=None)
@given(data=text_in_pieces(gutenberg_lines))
def test_gutenberg_cleaning_in_pieces_equals_cleaning_the_text(data):
    text, pieces = data
    assert "".join(clean_pieces(pieces, "gutenberg")) == clean(text, "gutenberg")


fractions = st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(
    lambda t: t[0] > 0).map(lambda t: tuple(x / sum(t) for x in t))


@settings(max_examples=100, deadline=None)
@given(data=text_in_pieces(), split=fractions)
def test_splitting_pieces_equals_splitting_the_text(data, split):
    text, pieces = data
    parts = ["", "", ""]
    for part, piece in split_pieces(pieces, len(text), split):
        parts[part] += piece
    assert parts == split_text(text, split)


@settings(FAST, max_examples=100)
@given(text=edgy_text, encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252",
                                                  "utf-16", "utf-16-be"]),
       damage=st.none() | st.tuples(st.integers(0, 200), st.sampled_from([0x80, 0xC3, 0xFF])),
       block=st.integers(1, 8))
def test_reading_in_blocks_equals_reading_whole(tmp_path, text, encoding, damage, block):
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    if damage and data:
        at = damage[0] % len(data)
        data = data[:at] + bytes([damage[1]]) + data[at + 1:]
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)

    def outcome(read):
        try:
            return read()
        except CorpusError as exc:
            return f"error: {exc}"

    whole = outcome(lambda: read_corpus(str(path), encoding=encoding))
    blocks = outcome(lambda: "".join(read_pieces(str(path), encoding=encoding, block=block)))
    assert blocks == whole
    if whole.startswith("error") and " at offset " in whole:  # the offset names the bad byte
        byte, offset = whole.split("byte 0x")[1].split(" at offset ")
        assert data[int(offset.split(";")[0])] == int(byte, 16)


@settings(FAST, max_examples=40)
@given(text=edgy_text, mode=st.sampled_from(["none", "lower", "letters"]),
       kind=st.sampled_from(["char", "word"]), split=fractions,
       max_tokens=st.none() | st.integers(1, 30), block=st.integers(1, 16))
def test_prepare_in_bounded_memory_equals_build_corpus(tmp_path, text, mode, kind, split,
                                                       max_tokens, block):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    cfg = DataConfig(corpus=str(path), clean=mode, tokenizer=kind,
                     split=",".join(repr(f) for f in split), max_tokens=max_tokens)
    out = tmp_path / "prepared"
    shutil.rmtree(out, ignore_errors=True)

    def outcome(make):
        try:
            return make()
        except CorpusError as exc:
            return f"error: {exc}"

    whole = outcome(lambda: load_corpus(cfg))
    streamed = outcome(lambda: prepare_corpus(cfg, out, block=block))
    if isinstance(whole, str) or isinstance(streamed, str):
        assert streamed == whole
        return
    assert streamed.tokenizer.vocab == whole.tokenizer.vocab
    assert streamed.tokenizer.vocab.token_freqs == whole.tokenizer.vocab.token_freqs
    for name, ids in whole.splits.items():
        assert streamed.splits[name].dtype == ids.dtype
        assert np.array_equal(streamed.splits[name], ids), name
    assert streamed.oov_rate == whole.oov_rate


# -- minibatches --------------------------------------------------------------------------------
shapes = st.tuples(st.integers(2, 300), st.integers(1, 7), st.integers(1, 10), st.integers(0, 99))
SAMPLERS = st.sampled_from([random_batches, sequential_batches])


def _as(kind: str, tokens: np.ndarray, tmp_path: Path) -> np.ndarray:
    if kind == "memmap":
        np.save(tmp_path / "tokens.npy", tokens.astype(np.uint16))
        return np.load(tmp_path / "tokens.npy", mmap_mode="r", allow_pickle=False)
    return tokens.astype(kind)


@settings(FAST, max_examples=80)
@given(shape=shapes, sampler=SAMPLERS, kind=st.sampled_from(["uint8", "uint16", "memmap"]))
def test_an_epoch_uses_all_but_fewer_than_b_plus_1_times_t_tokens(tmp_path, shape, sampler,
                                                                   kind):
    n, B, T, seed = shape
    assume(n >= B * T + T)
    tokens = np.arange(n) % 251  # fits uint8; equal values at distinct places are fine
    epoch = list(sampler(tokens, B, T, generator=torch.Generator().manual_seed(seed)))
    again = list(sampler(_as(kind, tokens, tmp_path), B, T,
                         generator=torch.Generator().manual_seed(seed)))
    assert len(epoch) == len(again)
    for (x, y), (x2, y2) in zip(epoch, again):  # any dtype, memory-mapped or not: the same
        assert x2.dtype == y2.dtype == torch.int64 and torch.equal(x, x2) and torch.equal(y, y2)
    positions = np.arange(n)
    used = list(sampler(positions, B, T, generator=torch.Generator().manual_seed(seed)))
    covered = np.unique(np.concatenate([x.flatten().numpy() for x, _ in used]))
    assert len(covered) == len(used) * B * T  # no token twice as an input
    assert n - len(covered) <= (B + 1) * T - 1


@settings(max_examples=60, deadline=None)
@given(shape=shapes, sampler=st.sampled_from(list(BATCHERS.values())), epochs=st.integers(1, 3),
       data=st.data())
def test_an_epoch_replays_from_its_saved_generator_state(shape, sampler, epochs, data):
    n, B, T, seed = shape
    assume(n >= B * T + T)
    tokens = np.arange(n)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):  # the trainer's pattern: save the state at each epoch start
        saved = generator.get_state()
        epoch = list(sampler(tokens, B, T, generator=generator))
    start = data.draw(st.integers(0, len(epoch)))
    replay = torch.Generator()
    replay.set_state(saved)
    tail = list(sampler(tokens, B, T, generator=replay, start=start))
    assert len(tail) == len(epoch) - start
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(epoch[start:], tail))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 400), B=st.integers(1, 9), T=st.integers(1, 12))
def test_evaluation_predicts_every_token_once_in_order(n, B, T):
    tokens = np.arange(n)
    batches = list(eval_batches(tokens, B, T))
    if n < 2:
        assert batches == []
        return
    X = torch.cat([x for x, _ in batches], dim=1)
    Y = torch.cat([y for _, y in batches], dim=1)
    assert torch.equal(Y, X + 1)  # each target is the token after its input
    rows = X.shape[0]
    assert rows >= 1 and rows <= B and all(x.shape[1] <= T for x, _ in batches)
    row_len = X.shape[1]
    assert torch.equal(X[:, 0], torch.arange(rows) * row_len)  # rows are contiguous pieces
    assert torch.equal(Y.flatten(), torch.arange(1, rows * row_len + 1))  # each once, in order
    assert n - 1 - rows * row_len < rows  # what is left out is shorter than one per row


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ")[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.slow  # walks every minibatch of a 2 MiB mapped split, reading /proc
@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sampler", [random_batches, sequential_batches])
def test_reading_a_memory_mapped_split_keeps_no_pages_mapped(tmp_path, sampler):
    path = tmp_path / "train.npy"
    np.save(path, np.arange(1 << 21, dtype=np.uint8) % 97)  # 2 MiB, 512 pages
    tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    most = 0
    for i, _ in enumerate(sampler(tokens, 32, 64, generator=torch.Generator().manual_seed(0))):
        if i % 50 == 0:
            most = max(most, _mapped_kib(path))
    assert i > 500 and most <= 64  # without releasing, most of the file ends up mapped
    for i, _ in enumerate(eval_batches(tokens, 32, 64)):
        if i % 50 == 0:
            most = max(most, _mapped_kib(path))
    assert most <= 64
