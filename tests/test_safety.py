"""Nothing is executed from a checkpoint, a run or a prepared corpus.

Loading reads safetensors, JSON and pickle-free ``.npy`` only. These tests plant a pickle
payload that would create a marker file if it were ever unpickled in every place a
checkpoint, a run directory or a prepared corpus could carry one, drive the real command line
over them, and check that the marker never appears; they fuzz the safetensors header; and they
scan seqlm's source for any way in to pickle or ``eval``. (tests/test_checkpoint.py covers
the library-level corruption cases one by one.)
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from forkrun import Runner
from hypothesis import HealthCheck, given, settings, strategies as st

import seqlm
from seqlm.checkpoint import MAX_HEADER_BYTES, load_checkpoint
from seqlm.errors import CheckpointError

TEXT = ("the time traveller for so it will be convenient to speak of him was expounding a "
        "recondite matter to us his grey eyes shone and twinkled\n") * 30
TINY = ["--cell", "gru", "--impl", "fused", "--hidden-size", "16", "--embedding-dim", "8",
        "--batch-size", "4", "--num-steps", "8", "--max-steps", "4", "--eval-every", "2",
        "--sample-tokens", "0", "--split", "0.8,0.1,0.1", "--quiet"]
CHECKPOINT_FILES = ("model.safetensors", "trainer.safetensors", "config.json", "vocab.json",
                    "trainer.json", "tokenizer.json")
# Names under which other tools keep pickles; a loader that globbed for them would run them.
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "optimizer.pt", "scheduler.pt",
                "rng_state.pth", "training_args.bin", "state.pkl", "vocab.pkl", "corpus.pickle")


class Payload:
    """Unpickling this opens (so creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def payloads(marker: Path) -> dict[str, bytes]:
    """The same payload as a bare pickle, inside torch.save's zip layout, and as an object
    array in .npy format."""
    raw = pickle.dumps(Payload(marker), protocol=2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:  # what torch.save writes: archive/data.pkl
        zf.writestr("archive/data.pkl", raw)
        zf.writestr("archive/version", "3\n")
    npy = io.BytesIO()
    np.save(npy, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return {"pickle": raw, "torch-zip": buffer.getvalue(), "npy-object": npy.getvalue()}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQLM_")}
    return {**env, "SEQLM_DATA": ""}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(tmp_path_factory.mktemp("streams"), _env())
    yield r
    r.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory, runner):
    """A BPE run (so it has a tokenizer.json) and a prepared corpus, both real."""
    ws = tmp_path_factory.mktemp("safety")
    (ws / "tiny.txt").write_text(TEXT)
    bpe = ["--tokenizer", "bpe", "--bpe-vocab-size", "300"]
    done = runner.run(["train", "--corpus", "tiny.txt", *bpe, *TINY, "--out", "run"], ws, _env())
    assert done.rc == 0, done.stderr
    done = runner.run(["prepare", "prepared", "--corpus", "tiny.txt", "--split", "0.8,0.1,0.1"],
                      ws, _env())
    assert done.rc == 0, done.stderr
    return ws


def _copy(ws: Path, name: str, dest: str) -> Path:
    shutil.rmtree(ws / dest, ignore_errors=True)
    shutil.copytree(ws / name, ws / dest)
    return ws / dest


def _check(result, marker: Path, *, ok: bool) -> None:
    assert not marker.exists(), "a planted pickle was executed"
    if ok:
        assert result.rc == 0, result.stderr
    else:
        lines = result.stderr.splitlines()
        assert result.rc == 2 and len(lines) == 1 and "Traceback" not in result.stderr, \
            result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "torch-zip", "npy-object"])
def test_a_pickle_in_place_of_any_checkpoint_file_is_refused_not_run(made, runner, kind):
    marker = made / f"marker-{kind}"
    data = payloads(marker)[kind]
    for name in CHECKPOINT_FILES:
        ckpt = _copy(made, "run/checkpoints/last", f"planted-{name}")
        (ckpt / name).write_bytes(data)
        result = runner.run(["generate", ckpt.name, "--max-new-tokens", "3", "--seed", "0"],
                            made, _env())
        _check(result, marker, ok=False)
        assert name in result.stderr, result.stderr  # the message names the bad file


@pytest.mark.slow
def test_pickles_beside_a_checkpoint_a_run_and_a_corpus_are_ignored(made, runner):
    marker = made / "marker-beside"
    data = payloads(marker)
    run = _copy(made, "run", "run-planted")
    for folder in (run, run / "checkpoints", run / "checkpoints" / "last",
                   run / "checkpoints" / "best"):
        for i, name in enumerate(PICKLE_NAMES):
            (folder / name).write_bytes(list(data.values())[i % len(data)])
    prepared = _copy(made, "prepared", "prepared-planted")
    for name in PICKLE_NAMES:
        (prepared / name).write_bytes(data["pickle"])
    for argv in (["generate", "run-planted", "--max-new-tokens", "3", "--seed", "0"],
                 ["evaluate", "run-planted/checkpoints/last"],
                 ["train", "--resume", "run-planted", "--max-steps", "6"],
                 ["train", "--corpus", "prepared-planted", *TINY, "--out", "from-prepared"]):
        _check(runner.run(argv, made, _env()), marker, ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "val"])
def test_an_object_array_in_a_prepared_corpus_is_refused_not_run(made, runner, split):
    marker = made / f"marker-npy-{split}"
    prepared = _copy(made, "prepared", f"prepared-{split}")
    (prepared / f"{split}.npy").write_bytes(payloads(marker)["npy-object"])
    result = runner.run(["train", "--corpus", prepared.name, *TINY, "--out", f"r-{split}"],
                        made, _env())
    _check(result, marker, ok=False)
    assert "not a prepared corpus" in result.stderr and "seqlm prepare" in result.stderr


@pytest.mark.slow
def test_a_pickled_run_config_or_metrics_file_is_refused_not_run(made, runner):
    marker = made / "marker-run-files"
    raw = payloads(marker)["pickle"]
    for name in ("config.json", "metrics.jsonl"):
        run = _copy(made, "run", f"run-bad-{name}")
        (run / name).write_bytes(raw)
        _check(runner.run(["train", "--resume", run.name, "--max-steps", "6"], made, _env()),
               marker, ok=False)


# -- the safetensors header -------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
tensor_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "F16", "O", "PICKLE", ""]),
    "shape": st.lists(st.integers(-2, 2**40), max_size=3),
    "data_offsets": st.lists(st.integers(-8, 2**62) | st.text(max_size=3), max_size=3)})
headers = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["embedding.weight", "decoder.weight", "__metadata__", "x"]),
                    tensor_entry | json_values, max_size=3).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64))


@pytest.fixture(scope="module")
def good_checkpoint(made) -> Path:
    return made / "run" / "checkpoints" / "last"


@pytest.mark.slow  # trains a BPE run in a fresh interpreter first
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers, claimed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
       body=st.binary(max_size=32))
def test_a_malformed_safetensors_header_is_a_clear_checkpoint_error(good_checkpoint, tmp_path,
                                                                      header, claimed, body):
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        shutil.copytree(good_checkpoint, ckpt)
    length = len(header) if claimed is None else claimed
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", length) + header + body)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(ckpt)
    message = str(caught.value)
    assert "model.safetensors" in message and "\n" not in message
    assert "save the checkpoint again" in message or "another one" in message


@pytest.mark.slow  # the BPE run of `made`
def test_an_oversized_header_is_refused_without_reading_it(good_checkpoint, tmp_path):
    ckpt = shutil.copytree(good_checkpoint, tmp_path / "ckpt")
    with open(ckpt / "model.safetensors", "wb") as f:  # claims one byte over the limit
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" * 1024)
    with pytest.raises(CheckpointError, match=f"header claims {MAX_HEADER_BYTES + 1} bytes "
                                              f"\\(limit {MAX_HEADER_BYTES}\\)"):
        load_checkpoint(ckpt)


# -- the source ---------------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                  "shelve", "yaml"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_seqlm_source_has_no_way_to_unpickle_or_eval():
    root = Path(seqlm.__file__).parent
    problems = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad = {n.split(".")[0] for n in names} & UNSAFE_MODULES
                if bad:
                    problems.append(f"{where}:{node.lineno} imports {sorted(bad)}")
        for call, name in _calls(tree):
            if name in ("eval", "exec", "torch.load", "torch.jit.load", "torch.package",
                        "pickle.load", "pickle.loads"):
                problems.append(f"{where}:{call.lineno} calls {name}")
            if name in ("np.load", "numpy.load"):
                flags = {k.arg: ast.unparse(k.value) for k in call.keywords}
                if flags.get("allow_pickle") != "False":
                    problems.append(f"{where}:{call.lineno} np.load without allow_pickle=False")
    assert not problems, problems
