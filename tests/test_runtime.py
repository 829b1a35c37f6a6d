"""seqlm.runtime: an exported model generates and scores as the torch model does, in a
process that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import seqlm  # noqa: E402
import seqlm.results  # noqa: E402
import seqlm.runtime  # noqa: E402
from seqlm.checkpoint import save_checkpoint  # noqa: E402
from seqlm.cli import main  # noqa: E402
from seqlm.config import ModelConfig  # noqa: E402
from seqlm.decoding import draw, next_token_probs  # noqa: E402
from seqlm.errors import ConfigError, ExportError  # noqa: E402
from seqlm.export import export_onnx  # noqa: E402
from seqlm.generate import generate  # noqa: E402
from seqlm.models import RNNLM  # noqa: E402
from seqlm.tokenize import CharTokenizer, WordTokenizer  # noqa: E402

TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding"
REPO = Path(__file__).resolve().parents[1]


def _pair(directory: Path, tokenizer=None, **fields):
    """(torch LanguageModel, OnnxLanguageModel) of one random-weight model."""
    torch.manual_seed(0)
    tok = tokenizer or CharTokenizer.fit(TEXT)
    fields.setdefault("hidden_size", 24)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), **fields))
    with torch.no_grad():  # sharper than the initial weights: a greedy path that moves
        model.reference().mul_(8)
    save_checkpoint(directory / "ckpt", model, tok)
    export_onnx(directory / "ckpt", directory / "onnx", check=False)
    return seqlm.load(directory / "ckpt"), seqlm.runtime.load(directory / "onnx")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("rt"), cell="lstm", num_layers=2, embedding_dim=16)


def test_greedy_generation_and_streaming_equal_the_torch_model(pair):
    lm, rt = pair
    for prefix, stop in (("the t", None), ("", None), ("time ", "e")):
        knobs = {"max_new_tokens": 40, "temperature": 0, "stop": stop}
        want = lm.generate(prefix, **knobs)
        assert rt.generate(prefix, **knobs) == want
        steps = list(rt.stream(prefix, top=3, **knobs))
        assert prefix + "".join(s.text for s in steps) == want
        ref = list(lm.stream(prefix, top=3, **knobs))
        assert [s.id for s in steps] == [s.id for s in ref]
        np.testing.assert_allclose([s.prob for s in steps], [s.prob for s in ref], rtol=1e-4)
        np.testing.assert_allclose([s.entropy for s in steps], [s.entropy for s in ref],
                                   rtol=1e-4)
    with pytest.raises(ConfigError, match="top_k"):
        rt.generate("the", top_k=0)
    for seed in (-1, 2**63, True):  # the library's error, not numpy's bare ValueError
        with pytest.raises(ConfigError, match="`seed`"):
            rt.generate("the", seed=seed)
        with pytest.raises(ConfigError, match="`seed`"):
            next(rt.stream("the", seed=seed))


def test_states_equal_the_torch_model(pair):
    lm, rt = pair
    np.testing.assert_allclose(rt.states(TEXT), lm.states(TEXT), atol=1e-5)
    np.testing.assert_allclose(rt.states(TEXT, cell=True), lm.states(TEXT, cell=True),
                               atol=1e-5)
    assert rt.states("the").shape == (2, 3, 24)


def test_load_finds_a_run_s_export_and_says_how_to_make_one(tmp_path):
    run = tmp_path / "run"
    _pair(tmp_path)
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "ckpt").rename(run / "checkpoints" / "best")
    with pytest.raises(ExportError, match=r"seqlm export .*run \(it writes .*run/onnx\)"):
        seqlm.runtime.load(run)
    (tmp_path / "onnx").rename(run / "onnx")
    assert seqlm.runtime.load(run).path == run / "onnx"


def test_an_adaptive_softmax_model_exports_and_scores_as_in_torch(tmp_path):
    text = " ".join(f"w{(i * 7919) % 600}" for i in range(4000))
    lm, rt = _pair(tmp_path, WordTokenizer.fit(text), cell="gru", embedding_dim=8)
    assert lm.model.config.output == "adaptive"
    sample = " ".join(text.split()[:60])
    want, got = lm.score(sample), rt.score(sample)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    knobs = {"max_new_tokens": 12, "temperature": 0}
    assert rt.generate("w1 w2", **knobs) == lm.generate("w1 w2", **knobs)


def test_score_equals_the_torch_model(pair):
    lm, rt = pair
    want, got = lm.score(TEXT, top=2), rt.score(TEXT, top=2)
    assert got.tokens == want.tokens and got.ids.tolist() == want.ids.tolist()
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
    assert got.evaluation == want.evaluation == "static" and got.static_logprobs is None
    with pytest.raises(TypeError, match="cache"):  # the runtime scores statically only
        rt.score(TEXT, cache=True)
    assert rt.perplexity(TEXT) == pytest.approx(lm.perplexity(TEXT), rel=1e-5)
    monkey = seqlm.results.SCORE_CHUNK
    try:
        seqlm.results.SCORE_CHUNK = 5  # chunks carry the state
        np.testing.assert_allclose(rt.score(TEXT).logprobs, want.logprobs, atol=1e-5)
    finally:
        seqlm.results.SCORE_CHUNK = monkey


def test_sampling_draws_from_the_model_probabilities_and_a_seed_repeats(pair):
    lm, rt = pair
    knobs = dict(max_new_tokens=30, temperature=1.3, top_p=0.9)
    first = rt.generate("the", seed=5, **knobs)
    assert first == rt.generate("the", seed=5, **knobs) != rt.generate("the", seed=6, **knobs)
    steps = list(rt.stream("the", seed=5, top=0, **knobs))
    assert "the" + "".join(s.text for s in steps) == first
    ids = [*lm.tokenizer.encode("the").tolist(), *(s.id for s in steps)]
    with torch.no_grad():  # torch's probability of each pick, the prefix read from zero
        logits, _ = lm.model(torch.tensor([ids[:-1]]))
    probs = torch.softmax(logits[0, 2:].double(), -1)[range(30), ids[3:]].numpy()
    np.testing.assert_allclose(probs, [s.prob for s in steps], rtol=1e-4)
    assert first == lm.generate("the", seed=5, **knobs)  # one seed, the same draws
    assert [s.id for s in lm.stream("the", seed=5, top=0, **knobs)] == [s.id for s in steps]
    rows = rt.generate_many("the", num_samples=3, seed=1, **knobs)
    assert len(rows) == 3 and len(set(rows)) > 1
    assert rows == generate(lm.model, lm.tokenizer, "the", num_samples=3, seed=1, **knobs)
    assert rt.generate("the", temperature=2.0, top_k=1, seed=3) == rt.generate("the", temperature=0)


def test_draw_follows_the_distribution():
    probs = next_token_probs(np.log([[0.5, 0.3, 0.15, 0.05]]), temperature=1.0, top_k=3)
    np.testing.assert_allclose(probs[0], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])
    ids = draw(np.repeat(probs, 20000, axis=0), np.random.default_rng(0).random(20000))
    counts = np.bincount(ids, minlength=4) / 20000
    np.testing.assert_allclose(counts, probs[0], atol=0.015)
    assert counts[3] == 0


def test_word_model_with_bos(tmp_path):
    tok = WordTokenizer.fit(TEXT, reserved_tokens=("<bos>",))
    lm, rt = _pair(tmp_path, tokenizer=tok, cell="gru")
    assert (rt.generate("", max_new_tokens=12, temperature=0)
            == lm.generate("", max_new_tokens=12, temperature=0))
    np.testing.assert_allclose(rt.score("the zebra was").logprobs,
                               lm.score("the zebra was").logprobs, atol=1e-5)
    assert rt.score("the zebra was").unknown.tolist() == [False, True, False]


def test_cli_onnx_backend_equals_torch(tmp_path, capsys):
    lm, _ = _pair(tmp_path, cell="rnn", num_layers=2)
    run = tmp_path / "run"  # a run directory with its export in RUN/onnx
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "ckpt").rename(run / "checkpoints" / "best")
    (tmp_path / "onnx").rename(run / "onnx")
    outputs = []
    for args in ([str(run)], [str(run), "--backend", "onnx"], [str(run / "onnx")],
                 [str(run / "onnx"), "--backend", "onnx"]):
        assert main(["generate", *args, "--prefix", "the ", "--temperature", "0",
                     "--max-new-tokens", "25", "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    greedy = lm.generate("the ", max_new_tokens=25, temperature=0)
    assert all(out["samples"] == [greedy] for out in outputs)
    assert [out["checkpoint"] for out in outputs[1:]] == [str(run / "onnx")] * 3
    sampled = []
    for args in ([str(run)], [str(run / "onnx")]):
        assert main(["generate", *args, "--prefix", "the ", "--max-new-tokens", "30",
                     "--seed", "4", "--temperature", "1"]) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1] and sampled[0].startswith("the ")


def test_cli_onnx_edges_are_one_line_errors(tmp_path, capsys):
    _pair(tmp_path)
    for args, words in (([str(tmp_path / "ckpt"), "--backend", "onnx"], "seqlm export"),
                        ([str(tmp_path / "onnx"), "--backend", "torch"], "--backend onnx"),
                        ([str(tmp_path / "onnx"), "--seed", "-1"], "--seed must be")):
        assert main(["generate", *args, "--max-new-tokens", "3"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_not_an_export_is_one_line(tmp_path):
    with pytest.raises(ExportError, match="seqlm export"):
        seqlm.runtime.load(tmp_path)


@pytest.mark.slow  # a fresh interpreter
def test_a_fresh_interpreter_generates_without_torch(pair, tmp_path):
    _, rt = pair
    code = (
        "import sys, seqlm.runtime\n"
        f"lm = seqlm.runtime.load({str(rt.path)!r})\n"
        "print(lm.generate('the t', max_new_tokens=20, temperature=0))\n"
        "print(lm.generate('the t', max_new_tokens=20, temperature=0.9, seed=2))\n"
        "print(round(lm.perplexity('the time'), 4))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    greedy, sampled, ppl = out.stdout.splitlines()
    assert greedy == rt.generate("the t", max_new_tokens=20, temperature=0)
    assert sampled == rt.generate("the t", max_new_tokens=20, temperature=0.9, seed=2)
    assert float(ppl) == pytest.approx(rt.perplexity("the time"), abs=1e-4)


def test_bpe_model_carries_its_tokenizer_file(tmp_path):
    pytest.importorskip("tokenizers")
    from seqlm.tokenize import BPETokenizer

    lm, rt = _pair(tmp_path, tokenizer=BPETokenizer.fit(TEXT * 4, vocab_size=300), cell="gru")
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()
    assert rt.tokenizer.kind == "bpe"
    assert (rt.generate("the time", max_new_tokens=15, temperature=0)
            == lm.generate("the time", max_new_tokens=15, temperature=0))
    np.testing.assert_allclose(rt.score(TEXT).logprobs, lm.score(TEXT).logprobs, atol=1e-5)
    assert rt.score(TEXT).tokens == lm.score(TEXT).tokens


@pytest.mark.slow  # a fresh interpreter
def test_the_onnx_backend_never_imports_torch(tmp_path):
    """seqlm generate (also as ``python -m seqlm``) and seqlm serve's app on an export, in a
    process that must not load torch: the command line, the runtime and the playground's
    routes on onnxruntime."""
    lm, _ = _pair(tmp_path, cell="lstm")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "ckpt").rename(run / "checkpoints" / "best")
    (tmp_path / "onnx").rename(run / "onnx")
    code = f"""
import sys
from seqlm.cli import main
for args in ([{str(run / "onnx")!r}], [{str(run)!r}, "--backend", "onnx"]):
    assert main(["generate", *args, "--prefix", "the t", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
import runpy
sys.argv = ["seqlm", "generate", {str(run / "onnx")!r}, "--prefix", "the t",
            "--max-new-tokens", "12", "--temperature", "0"]
try:
    runpy.run_module("seqlm", run_name="__main__", alter_sys=True)  # python -m seqlm
except SystemExit as exc:
    assert exc.code == 0, exc.code
from fastapi.testclient import TestClient
from seqlm.serve import create_app, load_runs
runs = load_runs([{str(run)!r}], backend="onnx")
with TestClient(create_app(runs)) as c:
    lines = c.post("/api/generate", json={{"prefix": "the", "max_new_tokens": 5}}).text
    assert lines.count('"type":"token"') + lines.count('"type": "token"') == 5, lines
    assert c.post("/api/score", json={{"text": "the time"}}).status_code == 200
    states = c.post("/api/states", json={{"text": "the time"}}).json()
    assert len(states["cells"][0]) == 8, states
    gradients = c.post("/api/gradients", json={{"text": "the time"}})
    assert gradients.status_code == 422 and gradients.json()["field"] == "run"
    assert c.get("/api/runs").json()["runs"][0]["backend"] == "onnx"
torch = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert not torch, torch[:5]
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    greedy = lm.generate("the t", max_new_tokens=12, temperature=0)
    assert out.stdout.splitlines() == [greedy, greedy, greedy]
