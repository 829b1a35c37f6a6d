"""Checkpoints: round trips, atomic saves, corrupt files, and no unpickling ever."""

import errno
import json
import os
import struct

import pytest
import torch

from seqlm import atomic
from seqlm.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from seqlm.errors import CheckpointError, ConfigError
from seqlm.config import ModelConfig
from seqlm.models import RNNLM
from seqlm.tokenize import CharTokenizer

TEXT = "the time traveller (for so it will be convenient to speak of him)"


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.fit(TEXT)


def _model(tokenizer, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"vocab_size": len(tokenizer.vocab), "hidden_size": 12, "num_layers": 2, **kwargs}
    return RNNLM(ModelConfig(**kwargs)).eval()


def _logits(model, seed=0):
    tokens = torch.randint(0, model.config.vocab_size, (2, 9),
                           generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(tokens)[0]


def _rewrite_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("kwargs", [
    {"cell": "rnn"},
    {"cell": "gru", "impl": "fused"},
    {"cell": "lstm", "embedding_dim": 12, "tie_weights": True},
])
def test_round_trip_gives_identical_logits_and_extras(tmp_path, tokenizer, kwargs):
    model = _model(tokenizer, **kwargs)
    extra = {"data": {"corpus": "timemachine"}, "train": {"lr": 1.0}}
    moments = {"exp_avg.core.weight_hh_l0": torch.randn(3, 4)}
    path = save_checkpoint(tmp_path / "ck", model, tokenizer, extra_config=extra,
                           trainer_tensors=moments, trainer_state={"step": 42})
    loaded = load_checkpoint(path)
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert loaded.model.config == model.config and not loaded.model.training
    assert loaded.tokenizer.vocab == tokenizer.vocab and loaded.tokenizer.kind == "char"
    assert loaded.config["data"] == extra["data"] and loaded.config["format_version"] == 1
    assert loaded.trainer_state == {"step": 42}
    assert torch.equal(loaded.trainer_tensors["exp_avg.core.weight_hh_l0"],
                       moments["exp_avg.core.weight_hh_l0"])
    if model.config.tie_weights:
        assert loaded.model.decoder.weight is loaded.model.embedding.weight


@pytest.mark.parametrize("saved,loaded", [("scratch", "fused"), ("fused", "scratch")])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_checkpoint_loads_into_the_twin_core(tmp_path, tokenizer, cell, saved, loaded):
    model = _model(tokenizer, cell=cell, impl=saved).double()
    path = save_checkpoint(tmp_path / "ck", model, tokenizer)
    _rewrite_json(path / "config.json", lambda c: c["model"].update(impl=loaded))
    twin = load_checkpoint(path).model
    assert twin.config.impl == loaded and next(twin.parameters()).dtype == torch.float64
    torch.testing.assert_close(_logits(twin), _logits(model), atol=1e-12, rtol=0)


def test_load_on_the_auto_device(tmp_path, tokenizer):
    model = _model(tokenizer, cell="gru")
    save_checkpoint(tmp_path / "ck", model, tokenizer)
    loaded = load_checkpoint(tmp_path / "ck", device="auto")
    assert torch.equal(_logits(loaded.model.cpu()), _logits(model))
    assert loaded.tokenizer.vocab == tokenizer.vocab


def test_bpe_model_goes_to_its_own_file(tmp_path):
    pytest.importorskip("tokenizers")
    from seqlm.tokenize import BPETokenizer

    tok = BPETokenizer.fit(TEXT * 20, vocab_size=300)
    path = save_checkpoint(tmp_path / "ck", _model(tok), tok)
    assert "bpe_model" not in json.loads((path / "vocab.json").read_text())
    assert json.loads((path / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    loaded = load_checkpoint(path).tokenizer
    assert loaded.decode(loaded.encode("naïve ✓ time")) == "naïve ✓ time"


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_debris(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ck", _model(tokenizer, seed=1), tokenizer)
    second = _model(tokenizer, seed=2)
    save_checkpoint(tmp_path / "ck", second, tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert torch.equal(_logits(load_checkpoint(tmp_path / "ck").model), _logits(second))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, tokenizer, monkeypatch):
    first = _model(tokenizer, seed=1)
    save_checkpoint(tmp_path / "ck", first, tokenizer)
    real_write, calls = atomic.write_durably, []

    def write_then_fill_the_disk(path, data):
        calls.append(path.name)
        if len(calls) == 2:
            real_write(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(atomic, "write_durably", write_then_fill_the_disk)
    with pytest.raises(CheckpointError, match="previous checkpoint there is intact"):
        save_checkpoint(tmp_path / "ck", _model(tokenizer, seed=2), tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert torch.equal(_logits(load_checkpoint(tmp_path / "ck").model), _logits(first))


def test_failed_swap_restores_the_previous_checkpoint(tmp_path, tokenizer, monkeypatch):
    first = _model(tokenizer, seed=1)
    save_checkpoint(tmp_path / "ck", first, tokenizer)
    real_replace = os.replace

    def refuse_new_into_place(src, dst):
        if ".tmp-" in str(src):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_new_into_place)
    with pytest.raises(CheckpointError, match="intact"):
        save_checkpoint(tmp_path / "ck", _model(tokenizer, seed=2), tokenizer)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert torch.equal(_logits(load_checkpoint(tmp_path / "ck").model), _logits(first))


def test_interrupted_swap_is_recovered_from_the_old_sibling(tmp_path, tokenizer):
    model = _model(tokenizer)
    save_checkpoint(tmp_path / "ck", model, tokenizer)
    os.rename(tmp_path / "ck", tmp_path / ".ck.old")  # a crash between the two renames
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.path == tmp_path / ".ck.old"
    assert torch.equal(_logits(loaded.model), _logits(model))
    save_checkpoint(tmp_path / "ck", model, tokenizer)  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_unserialisable_extra_config_writes_nothing(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="config.json"):
        save_checkpoint(tmp_path / "ck", _model(tokenizer), tokenizer,
                        extra_config={"train": {"device": torch.device("cpu")}})
    with pytest.raises(ConfigError, match="format_version"):
        save_checkpoint(tmp_path / "ck", _model(tokenizer), tokenizer,
                        extra_config={"format_version": 2})
    assert list(tmp_path.iterdir()) == []


def test_resolve_checkpoint_in_a_run_directory(tmp_path, tokenizer):
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last", _model(tokenizer), tokenizer)
    assert resolve_checkpoint(run) == run / "checkpoints" / "last"
    save_checkpoint(run / "checkpoints" / "best", _model(tokenizer), tokenizer)
    assert resolve_checkpoint(run) == run / "checkpoints" / "best"
    assert resolve_checkpoint(run / "checkpoints" / "last") == run / "checkpoints" / "last"
    assert load_checkpoint(run).path == run / "checkpoints" / "best"
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path / "nowhere")


def _truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) - 100])


def _huge_header(path):
    (path / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")


def _garbled_header(path):
    body = b"{not json at all"
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)


def _wrong_shape(path):
    _rewrite_json(path / "config.json", lambda c: c["model"].update(hidden_size=13))


def _wrong_version(path):
    _rewrite_json(path / "config.json", lambda c: c.update(format_version=99))


def _bad_field(path):
    _rewrite_json(path / "config.json", lambda c: c["model"].update(cell="transformer"))


def _vocab_disagrees(path):
    _rewrite_json(path / "vocab.json", lambda v: v["vocab"]["idx_to_token"].append("zz"))


@pytest.mark.parametrize("damage,file,match", [
    (_truncate, "model.safetensors", "truncated"),
    (_huge_header, "model.safetensors", "header claims"),
    (_garbled_header, "model.safetensors", "not valid safetensors"),
    (lambda p: (p / "model.safetensors").unlink(), "model.safetensors", "missing"),
    (lambda p: (p / "vocab.json").unlink(), "vocab.json", "missing"),
    (lambda p: (p / "config.json").write_text("{"), "config.json", "JSON"),
    (_wrong_shape, "model.safetensors", r"core.weight_hh_l0 \(36, 12\)"),
    (_wrong_version, "config.json", "format_version 99"),
    (_bad_field, "config.json", "cell"),
    (_vocab_disagrees, "vocab.json", "vocab_size"),
])
def test_damaged_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path, tokenizer,
                                                                     damage, file, match):
    path = save_checkpoint(tmp_path / "ck", _model(tokenizer, cell="gru"), tokenizer)
    damage(path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert file in str(info.value)


def _pickle_that_creates(marker):
    """Protocol-0 pickle bytes whose unpickling calls open(marker, 'w')."""
    return f"cbuiltins\nopen\n(S'{marker}'\nS'w'\ntR.".encode()


def test_planted_pickles_are_never_executed(tmp_path, tokenizer):
    path = save_checkpoint(tmp_path / "ck", _model(tokenizer), tokenizer)
    markers = []
    for name in ("model.pt", "optimizer.pt", "state.pkl", "pytorch_model.bin"):
        markers.append(tmp_path / f"pwned-{name}")
        (path / name).write_bytes(_pickle_that_creates(markers[-1]))
    load_checkpoint(path)
    markers.append(tmp_path / "pwned-weights")
    (path / "model.safetensors").write_bytes(_pickle_that_creates(markers[-1]))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)
    assert not any(m.exists() for m in markers)
