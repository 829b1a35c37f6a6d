"""seqlm export --format onnx: both graphs agree with the torch model on random tokens and
states, for every cell, core, input layer and decoder seqlm trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from seqlm.checkpoint import save_checkpoint  # noqa: E402
from seqlm.cli import main  # noqa: E402
from seqlm.config import ModelConfig  # noqa: E402
from seqlm.errors import ExportError  # noqa: E402
from seqlm.export import export_onnx  # noqa: E402
from seqlm.models import RNNLM  # noqa: E402
from seqlm.models.fast import ONEDNN_MIN_WEIGHT  # noqa: E402
from seqlm.runtime import onnx_session  # noqa: E402
from seqlm.runtime.format import FILES, read_config  # noqa: E402
from seqlm.tokenize import CharTokenizer, Tokenizer  # noqa: E402
from seqlm.vocab import Vocab  # noqa: E402

TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding"
VARIANTS = {
    "rnn-scratch-onehot": dict(cell="rnn"),
    "rnn-relu-2layers": dict(cell="rnn", nonlinearity="relu", num_layers=2, init="d2l"),
    "rnn-fused-embedding": dict(cell="rnn", impl="fused", embedding_dim=8),
    "gru-scratch-2layers": dict(cell="gru", num_layers=2),
    "gru-fused-embedding-tied": dict(cell="gru", impl="fused", embedding_dim=20,
                                     tie_weights=True),
    "lstm-scratch-embedding-tied": dict(cell="lstm", embedding_dim=20, tie_weights=True),
    "lstm-fused-onehot-3layers": dict(cell="lstm", impl="fused", num_layers=3),
}


def _checkpoint(directory: Path, vocab_size: int | None = None, **fields):
    torch.manual_seed(0)
    if vocab_size is None:
        tok = CharTokenizer.fit(TEXT)
    else:  # a large vocabulary: only its size matters here
        tok = Tokenizer(Vocab.from_dict({"idx_to_token": ["<unk>"] + [f"w{i}" for i in
                                                                      range(vocab_size - 1)]}))
        tok.kind = "word"
    fields.setdefault("hidden_size", 20)
    model = RNNLM(ModelConfig(vocab_size=len(tok.vocab), **fields)).eval()
    save_checkpoint(directory, model, tok)
    return model


def _assert_graphs_match(model, out: Path, batch=4, steps=7, seed=1):
    """Both graphs, at a batch and length other than the export's, against torch."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, c.vocab_size, (batch, steps), generator=g)
    names = ["h", "c"] if c.cell == "lstm" else ["h"]
    dtype = model.decoder.weight.dtype
    parts = [torch.randn(c.num_layers, batch, c.hidden_size, generator=g, dtype=dtype)
             for _ in names]
    state = tuple(parts) if c.cell == "lstm" else parts[0]
    feeds = {n: p.float().numpy() for n, p in zip(names, parts)}
    with torch.no_grad():
        for graph, ids in (("forward", tokens), ("step", tokens[:, 0])):
            logits, new = model(ids.view(batch, -1), state)
            got = onnx_session(out / FILES[graph]).run(None, {"tokens": ids.numpy(), **feeds})
            want = logits if graph == "forward" else logits[:, 0]
            assert got[0].shape == tuple(want.shape)
            assert np.abs(got[0] - want.float().numpy()).max() <= 1e-4, graph
            for have, ref in zip(got[1:], new if c.cell == "lstm" else (new,)):
                assert np.abs(have - ref.float().numpy()).max() <= 1e-4, graph


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_exports_faithfully(tmp_path, name):
    model = _checkpoint(tmp_path / "ckpt", **VARIANTS[name])
    report = export_onnx(tmp_path / "ckpt", tmp_path / "out")
    assert set(report.max_abs_diff) == {"step", "forward"}
    assert max(report.max_abs_diff.values()) <= 1e-4
    _assert_graphs_match(model, tmp_path / "out")
    config = read_config(tmp_path / "out")
    assert config["model"]["cell"] == model.config.cell
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == report.files
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_large_vocabulary_decoder_and_float64_export(tmp_path):
    vocab = ONEDNN_MIN_WEIGHT // 32 + 5  # past the oneDNN decoder threshold at H=32
    model = _checkpoint(tmp_path / "big", vocab_size=vocab, cell="gru", hidden_size=32,
                        embedding_dim=32, tie_weights=True)
    export_onnx(tmp_path / "big", tmp_path / "big-out")
    _assert_graphs_match(model, tmp_path / "big-out", batch=2, steps=3)
    double = _checkpoint(tmp_path / "f64", cell="lstm", num_layers=2)
    save_checkpoint(tmp_path / "f64", double.double(), CharTokenizer.fit(TEXT))
    export_onnx(tmp_path / "f64", tmp_path / "f64-out")
    _assert_graphs_match(double, tmp_path / "f64-out")


def test_cli_export_writes_a_self_contained_directory(tmp_path, capsys):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "last", cell="gru")
    assert main(["export", str(run), "--format", "onnx", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    out = run / "onnx"
    assert report["out"] == str(out) and max(report["max_abs_diff"].values()) <= 1e-4
    assert {"step.onnx", "forward.onnx", "vocab.json", "config.json"} <= set(report["files"])
    assert json.loads((out / "vocab.json").read_text()) == json.loads(
        (run / "checkpoints" / "last" / "vocab.json").read_text())
    assert main(["export", str(run)]) == 2  # an earlier export is not replaced silently
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--overwrite", "--no-check"]) == 0
    assert "exported" in capsys.readouterr().out


def test_export_refuses_to_replace_other_files(tmp_path, capsys):
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "mine"),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a seqlm export" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main(["export", str(tmp_path / "nothing")]) == 2


def test_a_model_torch_cannot_export_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    _checkpoint(tmp_path / "ckpt", cell="lstm")

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX is not supported\nmore")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot export this lstm model" in err
    assert "aten::foo" in err and not (tmp_path / "o").exists()
    with pytest.raises(ExportError, match="not an exported seqlm model"):
        read_config(tmp_path / "ckpt")
