"""The pick's knobs (seqlm.decoding.make_pick, what every backend draws with) and the warm-up
generation loop."""

import math

import numpy as np
import pytest
import torch

from seqlm.config import ModelConfig
from seqlm.decoding import check_sampling, make_pick, seeded_uniform
from seqlm.errors import ConfigError
from seqlm.generate import OOVWarning, generate
from seqlm.models import RNNLM
from seqlm.tokenize import CharTokenizer, WordTokenizer

TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding"


def _pick(logits, seed=0, temperature=1.0, top_k=None, top_p=None):
    pick = make_pick(temperature=temperature, top_k=top_k, top_p=top_p,
                     uniform=seeded_uniform(seed))
    return pick(np.asarray(logits, dtype=np.float32))


def _draws(logits, n=4000, seed=0, **knobs):
    return _pick(np.repeat(np.asarray(logits), n, axis=0), seed, **knobs)


# -- the pick ----------------------------------------------------------------------------------
def test_temperature_zero_is_argmax_and_tiny_temperature_agrees():
    logits = np.random.default_rng(1).normal(size=(64, 30))
    np.testing.assert_array_equal(_pick(logits, temperature=0), logits.argmax(-1))
    np.testing.assert_array_equal(_pick(logits, 2, temperature=1e-4), logits.argmax(-1))
    np.testing.assert_array_equal(_pick(logits, 3, top_k=1), logits.argmax(-1))


def test_temperature_one_follows_the_softmax():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]])
    counts = np.bincount(_draws(logits, n=20000), minlength=4) / 20000
    np.testing.assert_allclose(counts, np.exp(logits[0]) / np.exp(logits[0]).sum(), atol=0.015)


def test_top_k_never_leaves_the_k_best():
    logits = np.random.default_rng(4).normal(size=(1, 50)) * 0.1  # nearly flat: all tempting
    best = set(np.argsort(-logits[0])[:5].tolist())
    drawn = set(_draws(logits, top_k=5, temperature=2.0).tolist())
    assert drawn == best


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log([[0.05, 0.5, 0.15, 0.3]])
    assert set(_draws(logits, top_p=0.75).tolist()) == {1, 3}  # 0.5 + 0.3 reaches 0.75
    assert set(_draws(logits, top_p=0.81).tolist()) == {1, 3, 2}
    assert set(_draws(logits, top_p=0.4).tolist()) == {1}  # the best token always stays
    assert set(_draws(logits, top_p=1.0).tolist()) == {0, 1, 2, 3}


def test_top_k_and_top_p_combine_per_row():
    logits = np.log([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    out = _pick(np.tile(logits, (2000, 1)), 5, top_k=3, top_p=0.6)
    assert set(out[0::2].tolist()) == {0, 1} and set(out[1::2].tolist()) == {3, 2}


def test_same_seed_reproduces_and_different_seed_differs():
    logits = np.zeros((200, 10))
    a = _pick(logits, 9)
    np.testing.assert_array_equal(a, _pick(logits, 9))
    assert not np.array_equal(a, _pick(logits, 10))
    assert a.dtype == np.int64 and a.shape == (200,)


@pytest.mark.parametrize("knobs,match", [
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
])
def test_bad_knobs_raise(knobs, match):
    with pytest.raises(ConfigError, match=match):
        check_sampling(**knobs)


# -- generate ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.fit(TEXT)


def _lm(tokenizer, cell="gru", seed=0, **kwargs):
    """A small random model that never emits <unk> (index 0), so text lengths are exact."""
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(vocab_size=len(tokenizer.vocab), cell=cell, hidden_size=16,
                              num_layers=2, **kwargs))
    with torch.no_grad():
        model.decoder.bias[0] = -100.0
    return model


def _book_predict(model, tokenizer, prefix, num_preds):
    """The book's predict_ch8: warm up one token at a time, then greedy argmax."""
    ids = [int(i) for i in tokenizer.encode(prefix)]
    outputs, state = [ids[0]], None
    with torch.no_grad():
        for y in ids[1:]:
            _, state = model(torch.tensor([[outputs[-1]]]), state)
            outputs.append(y)
        for _ in range(num_preds):
            logits, state = model(torch.tensor([[outputs[-1]]]), state)
            outputs.append(int(logits[0, -1].argmax()))
    return tokenizer.decode(outputs)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_greedy_generation_matches_the_books_token_by_token_warm_up(tokenizer, cell):
    model = _lm(tokenizer, cell).eval()
    expected = _book_predict(model, tokenizer, "time travel", 25)
    assert generate(model, tokenizer, "time travel", max_new_tokens=25, temperature=0) == [expected]
    assert expected.startswith("time travel") and len(expected) == len("time travel") + 25


def test_generation_runs_in_eval_mode_and_restores_training(tokenizer):
    model = _lm(tokenizer, dropout=0.5)
    model.train()
    first = generate(model, tokenizer, "the ", max_new_tokens=20, temperature=0)
    assert model.training
    assert generate(model, tokenizer, "the ", max_new_tokens=20, temperature=0) == first  # no dropout noise


def test_stop_string_ends_the_sample_before_it(tokenizer):
    model = _lm(tokenizer).eval()
    full = generate(model, tokenizer, "the", max_new_tokens=30, temperature=0)[0][len("the"):]
    stop = full[5:7]
    cut = full.index(stop)
    pieces = []
    out = generate(model, tokenizer, "the", max_new_tokens=30, stop=stop, temperature=0,
                   on_text=lambda i, piece: pieces.append((i, piece)))
    assert out == ["the" + full[:cut]]
    assert "".join(p for _, p in pieces) == full[:cut] and {i for i, _ in pieces} <= {0}


def test_samples_run_as_one_batch_and_stream_per_sample(tokenizer):
    model = _lm(tokenizer)
    streamed = {i: "" for i in range(4)}

    def on_text(i, piece):
        streamed[i] += piece

    outs = generate(model, tokenizer, "time ", max_new_tokens=40, temperature=1.5,
                    num_samples=4, seed=3, on_text=on_text)
    assert len(outs) == 4 and len(set(outs)) > 1
    for i, text in enumerate(outs):
        assert text.startswith("time ") and len(text) == len("time ") + 40
        assert streamed[i] == text[len("time "):]
    again = generate(model, tokenizer, "time ", max_new_tokens=40, temperature=1.5,
                     num_samples=4, seed=3)
    assert again == outs


def test_stop_in_a_batch_finishes_each_sample_independently(tokenizer):
    model = _lm(tokenizer)
    outs = generate(model, tokenizer, "the", max_new_tokens=60, temperature=2.0,
                    num_samples=6, seed=0, stop=" ")
    free = generate(model, tokenizer, "the", max_new_tokens=60, temperature=2.0,
                    num_samples=6, seed=0)
    for out, whole in zip(outs, free):
        assert " " not in out[3:]
        assert whole.startswith(out)


def test_empty_prefix_starts_from_the_zero_state(tokenizer):
    model = _lm(tokenizer).eval()
    with torch.no_grad():
        model.decoder.bias.zero_()
        model.decoder.bias[tokenizer.vocab["x"]] = 5.0
    out = generate(model, tokenizer, "", max_new_tokens=4, temperature=0)[0]
    assert len(out) == 4 and out[0] == "x"


def test_empty_prefix_starts_from_bos_when_the_vocabulary_has_it():
    tok = CharTokenizer.fit(TEXT, reserved_tokens=("<bos>",))
    model = _lm(tok).eval()
    bos = tok.vocab["<bos>"]
    with torch.no_grad():
        logits, state = model(torch.tensor([[bos]]))
        first = int(logits[0, -1].argmax())
        second = int(model(torch.tensor([[first]]), state)[0][0, -1].argmax())
    assert generate(model, tok, "", max_new_tokens=2, temperature=0) == [tok.decode([first, second])]


def test_word_tokenizer_generation_keeps_the_prefix():
    tok = WordTokenizer.fit(TEXT)
    model = _lm(tok)
    out = generate(model, tok, "the time", max_new_tokens=5, temperature=1.0, seed=1)[0]
    assert out.startswith("the time")
    assert tok.tokens(out)[:2] == ["the", "time"] and len(tok.tokens(out)) == 2 + 5


def test_bpe_streaming_pieces_add_up_to_the_result():
    pytest.importorskip("tokenizers")
    from seqlm.tokenize import BPETokenizer

    tok = BPETokenizer.fit("héllo wörld ✓ naïve café " * 40, vocab_size=300)
    model = _lm(tok)
    streamed = [""]
    out = generate(model, tok, "café", max_new_tokens=30, temperature=1.0, seed=2,
                   on_text=lambda i, piece: streamed.__setitem__(0, streamed[0] + piece))
    assert out[0].startswith("café") and streamed[0] == out[0][len("café"):]


def test_out_of_vocabulary_prefix_warns_or_raises(tokenizer):
    model = _lm(tokenizer)
    with pytest.warns(OOVWarning, match="'Z'.*'@'"):
        out = generate(model, tokenizer, "Zt@", max_new_tokens=2, temperature=0)
    assert out[0].startswith("<unk>t<unk>")
    with pytest.raises(ConfigError, match="'Z'"):
        generate(model, tokenizer, "Zt", max_new_tokens=2, strict=True)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 3, "num_samples": 0}, "num_samples"),
    ({"max_new_tokens": 3, "top_p": 2.0}, "top_p"),
    ({"max_new_tokens": 3, "seed": 1, "generator": torch.Generator()}, "seed"),
])
def test_generate_rejects_bad_arguments(tokenizer, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate(_lm(tokenizer), tokenizer, "the", **kwargs)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("knobs", [{"temperature": 0}, {"temperature": 1.3, "top_k": 5, "seed": 4},
                                   {"temperature": 0.8, "top_p": 0.9, "seed": 1}])
def test_one_cpu_stream_decodes_in_numpy_as_torch_stepping_would(tokenizer, cell, knobs,
                                                                 monkeypatch):
    """A single float32 CPU stream steps in numpy (seqlm.models.stepper); with the torch
    stepper forced instead, greedy and seeded sampling give the same text."""
    from seqlm.models.stepper import NumpyStepper

    model = _lm(tokenizer, cell=cell)
    steppers = []
    original = RNNLM.stepper

    def spy(self, *args, **kwargs):
        steppers.append(original(self, *args, **kwargs))
        return steppers[-1]

    monkeypatch.setattr(RNNLM, "stepper", spy)
    fast = generate(model, tokenizer, "the ", max_new_tokens=40, **knobs)
    assert isinstance(steppers[-1], NumpyStepper)
    monkeypatch.setattr(RNNLM, "stepper", lambda self, **k: original(self, batch_size=k.get("batch_size"), backend="torch"))
    assert generate(model, tokenizer, "the ", max_new_tokens=40, **knobs) == fast
