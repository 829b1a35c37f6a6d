"""seqlm.load and LanguageModel: the same model the CLI loads, generating and scoring as the
library's own functions do."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import seqlm
from conftest import TINY_TEXT
from seqlm.checkpoint import save_checkpoint
from seqlm.cli import main
from seqlm.errors import CheckpointError, ConfigError
from seqlm.config import ModelConfig
from seqlm.decoding import MAX_SEED, OOVWarning
from seqlm.generate import generate
from seqlm.models import RNNLM
from seqlm.tokenize import CharTokenizer, WordTokenizer
from seqlm.evaluation import evaluate

TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding"
REPO = Path(__file__).resolve().parents[1]


def _save(directory: Path, *, cell="gru", reserved=(), tokenizer=None, **fields) -> Path:
    torch.manual_seed(0)
    tok = tokenizer or CharTokenizer.fit(TEXT, reserved_tokens=reserved)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), cell=cell, hidden_size=24, **fields))
    save_checkpoint(directory, model, tok)
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with a best and a last checkpoint (different weights)."""
    run = tmp_path_factory.mktemp("api") / "myrun"
    _save(run / "checkpoints" / "last", num_layers=2)
    torch.manual_seed(1)
    _save(run / "checkpoints" / "best", num_layers=2)
    (run / "config.json").write_text("{}")
    return run


@pytest.fixture(scope="module")
def lm(run_dir):
    return seqlm.load(run_dir)


def test_load_prefers_best_and_says_so(run_dir, tmp_path):
    lm = seqlm.load(run_dir)
    assert (lm.checkpoint, lm.name, lm.path) == ("best", "myrun", run_dir / "checkpoints" / "best")
    assert isinstance(lm.model, RNNLM) and not lm.model.training
    assert lm.vocab_size == len(lm.tokenizer.vocab) == lm.config["model"]["vocab_size"]
    only_last = tmp_path / "other"
    _save(only_last / "checkpoints" / "last")
    assert seqlm.load(only_last).checkpoint == "last"
    direct = seqlm.load(run_dir / "checkpoints" / "last")
    assert (direct.checkpoint, direct.name) == ("last", "myrun")
    plain = _save(tmp_path / "ckpt")
    assert (seqlm.load(plain).checkpoint, seqlm.load(plain).name) == ("checkpoint", "ckpt")
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        seqlm.load(tmp_path / "nothing")


def test_generate_equals_the_library_and_the_cli(lm, run_dir, capsys):
    expected = generate(lm.model, lm.tokenizer, "the t", max_new_tokens=30, temperature=0)[0]
    assert lm.generate("the t", max_new_tokens=30, temperature=0) == expected
    assert main(["generate", str(run_dir), "--prefix", "the t", "--max-new-tokens", "30",
                 "--temperature", "0", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == [expected]
    sampled = lm.generate("the t", max_new_tokens=30, temperature=1.0, seed=3)
    assert sampled == generate(lm.model, lm.tokenizer, "the t", max_new_tokens=30,
                               temperature=1.0, seed=3)[0]
    stop = expected[8]  # a character the greedy continuation reaches
    assert (lm.generate("the t", max_new_tokens=30, temperature=0, stop=stop)
            == expected[:expected.index(stop, 5)])
    with pytest.raises(ConfigError, match="top_p"):
        lm.generate("the", top_p=2.0)


def test_stream_adds_up_to_generate_with_plain_softmax_probabilities(lm):
    for knobs in ({"temperature": 0}, {"temperature": 0.7, "top_k": 5, "seed": 11},
                  {"temperature": 0, "stop": "ti"}, {"seed": 3}):
        steps = list(lm.stream("the t", max_new_tokens=25, top=4, **knobs))
        text = lm.generate("the t", max_new_tokens=25, **knobs)
        assert "the t" + "".join(s.text for s in steps) == text
        assert len(steps) <= 25
    steps = list(lm.stream("the t", max_new_tokens=6, temperature=0, top=3))
    ids = lm.tokenizer.encode("the t").tolist()
    for step in steps:  # each step against a fresh forward over everything before it
        with torch.no_grad():
            logits, _ = lm.model(torch.tensor([ids]))
        probs = torch.softmax(logits[0, -1].double(), -1).numpy()
        assert step.id == probs.argmax()  # greedy
        assert step.prob == pytest.approx(probs[step.id], rel=1e-5)
        assert [p for _, p in step.top] == pytest.approx(np.sort(probs)[::-1][:3], rel=1e-5)
        assert step.top[0][0] == lm.tokenizer.decode([step.id])
        assert step.entropy == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-5)
        ids.append(step.id)
    with pytest.raises(ConfigError, match="top"):
        next(lm.stream("the", top=-1))


def test_score_equals_the_evaluation_loss_on_the_same_ids(lm):
    score = lm.score(TEXT)
    ids = lm.tokenizer.encode(TEXT)
    assert score.ids.dtype == np.int64 and score.ids.tolist() == ids.tolist()
    assert score.logprobs.dtype == np.float64 and score.logprobs.shape == (len(ids),)
    assert score.tokens == list(TEXT) and not score.unknown.any()
    meter = evaluate(lm.model, ids, batch_size=1, num_steps=17)  # zero state, no <bos> here
    assert -score.logprobs[1:].mean() == pytest.approx(meter.report()["loss"], rel=1e-5)
    first = torch.log_softmax(lm.model.decoder.bias.detach().double(), -1)[ids[0]]  # zero state
    assert score.logprobs[0] == pytest.approx(float(first), rel=1e-6)
    assert score.perplexity == pytest.approx(math.exp(score.nll))
    assert score.bits_per_token == pytest.approx(score.nll / math.log(2))
    assert lm.perplexity(TEXT) == pytest.approx(score.perplexity)


def test_score_chunks_carry_the_state_and_list_alternatives(lm, monkeypatch):
    whole = lm.score(TEXT, top=3)
    monkeypatch.setattr(seqlm.results, "SCORE_CHUNK", 7)
    chunked = lm.score(TEXT, top=3)
    np.testing.assert_allclose(chunked.logprobs, whole.logprobs, rtol=1e-6)
    assert chunked.top_ids.shape == (len(TEXT), 3)
    np.testing.assert_array_equal(chunked.top_ids, whole.top_ids)
    assert (whole.top_logprobs[:, 0] >= whole.logprobs - 1e-12).all()
    assert lm.score("t").logprobs.shape == (1,)
    with pytest.raises(ConfigError, match="no tokens"):
        lm.score("")


def test_bos_starts_the_score_and_unknown_tokens_are_flagged(tmp_path):
    lm = seqlm.load(_save(tmp_path / "bos", reserved=("<bos>",)))
    bos = lm.tokenizer.vocab.token_to_idx["<bos>"]
    score = lm.score("tiQe")
    assert score.unknown.tolist() == [False, False, True, False] and score.tokens[2] == "Q"
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([[bos, *score.ids[:-1].tolist()]]))
    expected = torch.log_softmax(logits[0].double(), -1)[range(4), score.ids].numpy()
    np.testing.assert_allclose(score.logprobs, expected, rtol=1e-6)


def test_uniform_model_has_perplexity_v(tmp_path):
    directory = _save(tmp_path / "uniform", cell="rnn")
    lm = seqlm.load(directory)
    with torch.no_grad():
        lm.model.decoder.weight.zero_()
        lm.model.decoder.bias.zero_()
    assert lm.perplexity(TEXT) == pytest.approx(lm.vocab_size, rel=1e-9)
    assert lm.score(TEXT).bits_per_token == pytest.approx(math.log2(lm.vocab_size))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_states_are_every_layer_after_every_token(tmp_path, cell):
    lm = seqlm.load(_save(tmp_path / cell, cell=cell, num_layers=2, impl="fused"))
    ids = lm.tokenizer.encode("the time")
    h = lm.states("the time")
    assert h.shape == (2, len(ids), 24)
    with torch.no_grad():
        state = None
        for n, token in enumerate(ids):
            _, state = lm.model(torch.tensor([[int(token)]]), state)
            ref = state if cell == "rnn" else state[0]
            np.testing.assert_allclose(h[:, n], ref[:, 0].numpy(), atol=1e-5)
    if cell == "lstm":
        np.testing.assert_allclose(lm.states("the time", cell=True)[:, -1], state[1][:, 0],
                                   atol=1e-5)
    else:
        with pytest.raises(ConfigError, match="LSTM"):
            lm.states("the", cell=True)


def test_word_model_tokens_and_oov_prefix(tmp_path):
    tok = WordTokenizer.fit(TEXT)
    lm = seqlm.load(_save(tmp_path / "word", tokenizer=tok))
    score = lm.score("the zebra was")
    assert score.tokens == ["the", "zebra", "was"] and score.unknown.tolist() == [0, 1, 0]
    with pytest.warns(UserWarning, match="zebra"):
        assert lm.generate("the zebra", max_new_tokens=3).startswith("the <unk>")


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**70, 1.5, True, "3"])
def test_a_bad_seed_is_the_library_s_error_not_numpy_s(lm, seed):
    with pytest.raises(ConfigError, match="`seed` must be an integer from 0 to 2\\*\\*63 - 1"):
        lm.generate("the", max_new_tokens=2, seed=seed)
    with pytest.raises(ConfigError, match="`seed`"):
        next(lm.stream("the", max_new_tokens=2, seed=seed))


def test_the_largest_seed_and_numpy_integers_are_seeds(lm):
    text = lm.generate("the", max_new_tokens=8, seed=MAX_SEED)
    assert text == lm.generate("the", max_new_tokens=8, seed=np.int64(MAX_SEED))


def test_scoring_tokens_outside_the_vocabulary_warns(lm):
    with pytest.warns(OOVWarning, match="text tokens outside the vocabulary.*'一'"):
        assert lm.perplexity("一二三") > 1
    with pytest.warns(OOVWarning, match="'Q'"):
        assert lm.score("the Qime").unknown.sum() == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.score("the time")  # every token known: silent


@pytest.mark.slow  # a fresh interpreter
def test_import_seqlm_is_light():
    code = ("import sys, seqlm; assert 'load' in dir(seqlm) and 'torch' not in sys.modules; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "ok", out.stderr


def test_stream_leaves_grad_mode_alone_between_steps(lm):
    for _ in lm.stream("the", max_new_tokens=3):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def _readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python: train and use a model\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    block = _readme_python_blocks()[0]
    assert len(block.strip().splitlines()) == 3
    _save(tmp_path / "runs" / "timemachine" / "checkpoints" / "best")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    text, ppl = capsys.readouterr().out.rsplit(" ", 1)
    assert text.startswith("time traveller") and float(ppl) > 1


@pytest.mark.slow
def test_readme_training_example_runs(tmp_path, monkeypatch, capsys):
    block = _readme_python_blocks()[1]
    assert 'seqlm.train("my_book.txt", time_budget=60)' in block
    (tmp_path / "my_book.txt").write_text("It was " + TINY_TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    small = ('max_steps=6, eval_every=3, hidden_size=16, embedding_dim=8, batch_size=4, '
             'num_steps=8, split="0.8,0.2,0", adapt="", progress=False')
    exec(compile(block.replace("time_budget=60", small), "README.md", "exec"), {})
    text, ppl = capsys.readouterr().out.rsplit(" ", 1)
    assert text.startswith("It was") and 1 < float(ppl) < 100
    assert (tmp_path / "runs").is_dir()


@pytest.mark.slow  # a fresh interpreter
def test_readme_runtime_example_runs_without_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    block = _readme_python_blocks()[2]
    run = tmp_path / "runs" / "timemachine"
    _save(run / "checkpoints" / "best")
    assert main(["export", str(run), "--no-check", "--json"]) == 0
    code = block + "import sys\nassert 'torch' not in sys.modules\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("time traveller")
