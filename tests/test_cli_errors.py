"""The bad-input catalogue: the real command line answers every bad input clearly.

Each case runs ``python -m seqlm ...`` in a process of its own and must exit with status 2,
print exactly one line on stderr (``seqlm <command>: error: ...``) that names the problem and
the fix, print no traceback, and leave every file and directory of its working tree as it
was (nothing changed, removed or added).

Importing torch costs about 1.5 s a process, more than the whole catalogue may take, so the
cases run in children forked from one interpreter that imported seqlm once (see
``forkrun``); ``test_forked_cases_answer_like_fresh_interpreters`` runs a sample both ways
and requires identical answers. No case reaches the network: the proxy variables point at a
closed port, or at the test's own loopback server.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from forkrun import Runner, fresh

pytestmark = pytest.mark.slow  # the catalogue runs each case in a process of its own

TEXT = ("the time traveller for so it will be convenient to speak of him was expounding a "
        "recondite matter to us his grey eyes shone and twinkled\n") * 40
TINY = ["--cell", "rnn", "--impl", "fused", "--hidden-size", "16", "--embedding-dim", "8",
        "--batch-size", "4", "--num-steps", "8", "--max-steps", "4", "--eval-every", "2",
        "--sample-tokens", "0", "--split", "0.8,0.1,0.1", "--quiet"]
CORPUS = ["--corpus", "tiny.txt"]
CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, nothing leaks


def base_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SEQLM_") and k.lower() not in ("http_proxy", "https_proxy",
                                                                 "all_proxy", "no_proxy")}
    env.update({"http_proxy": CLOSED_PORT_PROXY, "https_proxy": CLOSED_PORT_PROXY,
                "no_proxy": "", "SEQLM_DATA": "", "PYTHONHASHSEED": "0"})
    env.update(extra)
    return env


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a directory marker or the file's content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


class _WrongFile(http.server.BaseHTTPRequestHandler):
    """A loopback proxy that answers every request with the wrong bytes."""

    def do_GET(self):
        body = b"this is not the book you asked for\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def wrong_file_proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WrongFile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _rewrite_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Bad inputs of every kind, a real trained run and damaged copies of its checkpoint."""
    ws = tmp_path_factory.mktemp("catalogue")
    (ws / "tiny.txt").write_text(TEXT)
    (ws / "other.txt").write_text(TEXT.upper())  # another vocabulary
    (ws / "latin.txt").write_bytes("café au lait\n".encode("latin-1") * 40)
    (ws / "bin.txt").write_bytes(b"\x7fELF\x02\x01\x00\x00" * 64)
    (ws / "empty.txt").write_text("")
    (ws / "digits.txt").write_text("1984 2001 -- 42!\n" * 30)
    (ws / "short.txt").write_text("abc def ghi\n")
    (ws / "notes").mkdir()
    (ws / "notes" / "todo.md").write_text("a directory of notes, not a corpus\n")
    (ws / "blocker").write_text("a file where a directory would have to be\n")
    (ws / "bad.toml").write_text("lr = = 3\n")
    (ws / "unknown.toml").write_text("[train]\nlearning_rate = 0.1\n")
    (ws / "wrongtype.toml").write_text("[model]\nhidden_size = \"big\"\n")
    (ws / "badcell.toml").write_text("cell = \"transformer\"\n")
    (ws / "plot.png").write_bytes(b"an existing figure")
    (ws / "cache").mkdir()
    made = fresh(["train", *CORPUS, *TINY, "--out", "run"], ws, base_env())
    assert made.rc == 0, made.stderr
    last = ws / "run" / "checkpoints" / "last"
    for name in ("ckpt_trunc", "ckpt_shapes", "ckpt_novocab"):
        shutil.copytree(last, ws / name)
    weights = (ws / "ckpt_trunc" / "model.safetensors").read_bytes()
    (ws / "ckpt_trunc" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    _rewrite_json(ws / "ckpt_shapes" / "config.json",
                  lambda c: c["model"].update(hidden_size=24))
    (ws / "ckpt_novocab" / "vocab.json").unlink()
    shutil.copytree(ws / "run", ws / "run_vocab")  # its corpus now gives another vocabulary
    _rewrite_json(ws / "run_vocab" / "config.json", lambda c: c["data"].update(corpus="other.txt"))
    shutil.copytree(ws / "run", ws / "run_nockpt")  # killed before its first save
    shutil.rmtree(ws / "run_nockpt" / "checkpoints")
    (ws / "run_nockpt" / "checkpoints").mkdir()
    return ws


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(tmp_path_factory.mktemp("streams"), base_env())
    yield r
    r.close()


def case(name, argv, pattern, *, env=None, skip=None):
    return pytest.param(argv, pattern, env or {}, id=name,
                        marks=[pytest.mark.skipif(True, reason=skip)] if skip else [])


CASES = [
    # -- corpora
    case("missing-path", ["train", "--corpus", "nope.txt"],
         r"nope\.txt: no such file or directory.*known corpus name"),
    case("directory-without-txt", ["train", "--corpus", "notes"],
         r"notes: directory has no \.txt files; put the text in \*\.txt files"),
    case("binary-file", ["train", "--corpus", "bin.txt"],
         r"bin\.txt: looks like a binary file.*give a text file"),
    case("latin1-without-encoding", ["train", "--corpus", "latin.txt"],
         r"latin\.txt: not valid utf-8: byte 0xe9 at offset 3; pass --encoding .*latin-1"),
    case("unknown-encoding", ["train", "--corpus", "latin.txt", "--encoding", "klingon"],
         r"--encoding klingon: unknown encoding; try utf-8 or latin-1"),
    case("empty-file", ["train", "--corpus", "empty.txt"],
         r"empty\.txt: the corpus is empty; give a file with some text"),
    case("empty-stdin", ["stats", "--corpus", "-"], r"-: the corpus is empty"),
    case("clean-letters-empties-it", ["train", "--corpus", "digits.txt", "--clean", "letters"],
         r"nothing is left after --clean letters; use --clean none"),
    case("too-short-for-one-minibatch", ["train", "--corpus", "short.txt", *TINY, "--out", "o"],
         r"corpus too short for one minibatch: 12 tokens, but batch_size 4 × num_steps 8 "
         r"needs at least 40; .*smaller --batch-size"),
    case("too-short-does-not-touch-the-run-it-would-overwrite",
         ["train", "--corpus", "short.txt", *TINY, "--out", "run", "--overwrite"],
         r"corpus too short for one minibatch: 12 tokens"),
    case("too-short-for-a-validation-split",
         ["train", *CORPUS, *TINY, "--split", "0.999,0.001,0", "--out", "o"],
         r"corpus too short for a validation split: 0\.001 of the text is \d tokens, but one "
         r"evaluation window \(--num-steps 8\) needs 9; .*--split 1,0,0"),
    case("bpe-vocabulary-too-small", ["stats", *CORPUS, "--tokenizer", "bpe", "--bpe-vocab-size",
                                      "10"], r"--bpe-vocab-size must be at least 300.*got 10"),
    case("split-not-summing-to-one", ["train", "--split", "0.5,0.6"],
         r"--split must be three fractions train,val,test summing to 1.*got '0\.5,0\.6'"),
    case("min-freq-zero", ["stats", *CORPUS, "--min-freq", "0"],
         r"--min-freq must be a positive integer, got 0"),
    # -- numbers out of range
    case("num-steps-zero", ["train", "--num-steps", "0"],
         r"--num-steps must be a positive integer, got 0"),
    case("batch-size-negative", ["train", "--batch-size", "-3"],
         r"--batch-size must be a positive integer, got -3"),
    case("batch-size-not-a-number", ["train", "--batch-size", "many"],
         r"argument --batch-size: expected an integer, got 'many'; see --help"),
    case("hidden-size-zero", ["train", "--hidden-size", "0"],
         r"--hidden-size must be a positive integer, got 0"),
    case("num-layers-negative", ["train", "--num-layers", "-1"],
         r"--num-layers must be a positive integer, got -1"),
    case("embedding-dim-zero", ["train", "--embedding-dim", "0"],
         r"--embedding-dim must be a positive integer, got 0"),
    case("tied-weights-of-different-sizes", ["train", "--tie-weights", "--embedding-dim", "8",
                                             "--hidden-size", "16"],
         r"--tie-weights needs embedding_dim == hidden_size.*set --embedding-dim to 16"),
    case("lr-negative", ["train", "--lr", "-1"], r"--lr must be a positive number, got -1\.0"),
    case("lr-nan", ["train", "--lr", "nan"], r"--lr must be a positive number, got nan"),
    case("dropout-one", ["train", "--dropout", "1"], r"--dropout must be a probability in \[0, 1\), got 1\.0"),
    case("dropout-negative", ["train", "--dropout", "-0.5"], r"--dropout must be a probability in \[0, 1\), got -0\.5"),
    case("clip-negative", ["train", "--clip", "-1"], r"--clip must be >= 0.*got -1\.0"),
    case("max-steps-zero", ["train", "--max-steps", "0"],
         r"--max-steps must be a positive integer, got 0"),
    case("time-budget-negative", ["train", "--time-budget", "-5"],
         r"--time-budget must be a positive number of seconds, got -5\.0"),
    case("max-new-tokens-zero", ["generate", "run", "--max-new-tokens", "0"],
         r"--max-new-tokens must be an integer >= 1, got 0"),
    case("max-new-tokens-negative", ["generate", "run", "--max-new-tokens", "-5"],
         r"--max-new-tokens must be an integer >= 1, got -5"),
    case("num-samples-zero", ["generate", "run", "--num-samples", "0"],
         r"--num-samples must be a positive integer, got 0"),
    case("top-p-zero", ["generate", "run", "--top-p", "0"], r"--top-p must be in \(0, 1\] or None to keep all tokens, got 0\.0"),
    case("top-p-above-one", ["generate", "run", "--top-p", "1.5"],
         r"--top-p must be in \(0, 1\] or None to keep all tokens, got 1\.5"),
    case("top-k-zero", ["generate", "run", "--top-k", "0"], r"--top-k must be an integer >= 1 or None to keep all tokens, got 0"),
    case("temperature-negative", ["generate", "run", "--temperature", "-1"],
         r"--temperature must be >= 0 \(0 means greedy argmax\), got -1\.0"),
    case("temperature-nan", ["generate", "run", "--temperature", "nan"],
         r"--temperature must be >= 0.*got nan"),
    case("evaluate-batch-size-zero", ["evaluate", "run", "--batch-size", "0"],
         r"--batch-size must be a positive integer"),
    case("evaluate-cache-zero", ["evaluate", "run", "--cache", "0"],
         r"--cache must be a positive integer, got 0"),
    case("evaluate-cache-not-a-number", ["evaluate", "run", "--cache", "big"],
         r"argument --cache: invalid int value: 'big'"),
    case("evaluate-dynamic-unknown-rule", ["evaluate", "run", "--dynamic", "adam"],
         r"argument --dynamic: invalid choice: 'adam' \(choose from .*'sgd'\)"),
    case("stats-top-negative", ["stats", *CORPUS, "--top", "-1"], r"--top must be >= 0, got -1"),
    # -- unknown names
    case("unknown-cell", ["train", "--cell", "transformer"],
         r"argument --cell: invalid choice: 'transformer' \(choose from .*'minlstm'\)"),
    case("unknown-tokenizer", ["train", "--tokenizer", "sentencepiece"],
         r"argument --tokenizer: invalid choice: 'sentencepiece' \(choose from .*'bpe'\)"),
    case("unknown-sampler", ["train", "--sampler", "shuffled"],
         r"argument --sampler: invalid choice: 'shuffled' \(choose from .*'random-start'\)"),
    case("unknown-truncation", ["train", "--truncation", "sometimes"],
         r"truncation 'sometimes' is not understood; use 'window', 'full'"),
    case("unknown-preset", ["train", "--preset", "huge"],
         r"unknown --preset 'huge'; choose one of .*d2l-scratch"),
    case("unknown-device", ["train", "--device", "tpu"],
         r"--device tpu: unknown device; use auto, cpu, cuda"),
    case("cuda-where-there-is-none",
         ["train", *CORPUS, *TINY, "--device", "cuda", "--out", "o_cuda"],
         r"--device cuda: CUDA is not available on this machine; use --device cpu or auto",
         skip="this machine has CUDA" if torch.cuda.is_available() else None),
    case("generate-on-cuda-where-there-is-none", ["generate", "run", "--device", "cuda"],
         r"--device cuda: CUDA is not available",
         skip="this machine has CUDA" if torch.cuda.is_available() else None),
    # -- config files
    case("config-not-toml", ["train", "--config", "bad.toml"],
         r"--config bad\.toml: not valid TOML \(.*line 1.*\); fix the file"),
    case("config-unknown-key", ["train", "--config", "unknown.toml"],
         r"unknown setting 'learning_rate'; see seqlm train --help"),
    case("config-wrong-type", ["train", "--config", "wrongtype.toml"],
         r"setting 'hidden_size' must be int, got str 'big'"),
    case("config-unknown-cell", ["train", "--config", "badcell.toml"],
         r"cell.*'transformer'.*(not supported|choose|use one of).*lstm"),
    case("config-missing", ["train", "--config", "nope.toml"],
         r"--config nope\.toml: cannot read \(No such file or directory\)"),
    case("config-is-a-directory", ["train", "--config", "notes"], r"--config notes: cannot read"),
    # -- resume
    case("resume-not-a-run", ["train", "--resume", "notes"],
         r"notes is not a seqlm run \(no config\.json\)"),
    case("resume-missing-directory", ["train", "--resume", "nowhere"],
         r"nowhere is not a seqlm run"),
    case("resume-another-hidden-size", ["train", "--resume", "run", "--hidden-size", "32"],
         r"--hidden-size 32 contradicts the saved run \(16\); only --epochs.* may change"),
    case("resume-another-tokenizer", ["train", "--resume", "run", "--tokenizer", "word"],
         r"--tokenizer word contradicts the saved run \(char\)"),
    case("resume-another-corpus", ["train", "--resume", "run", "--corpus", "other.txt"],
         r"--corpus other\.txt contradicts the saved run \(tiny\.txt\)"),
    case("resume-corpus-now-gives-another-vocabulary", ["train", "--resume", "run_vocab"],
         r"run_vocab: the corpus gives another vocabulary than the saved run"),
    case("resume-before-any-checkpoint", ["train", "--resume", "run_nockpt"],
         r"run_nockpt.*no checkpoint.*--overwrite"),
    # -- damaged checkpoints
    case("checkpoint-truncated", ["generate", "ckpt_trunc"],
         r"ckpt_trunc/model\.safetensors: .*truncated.*save the checkpoint again"),
    case("checkpoint-config-disagrees-with-weights", ["generate", "ckpt_shapes"],
         r"ckpt_shapes/model\.safetensors does not match .*config\.json.*wrong shape"),
    case("checkpoint-without-vocab", ["evaluate", "ckpt_novocab"],
         r"ckpt_novocab/vocab\.json is missing; the checkpoint is incomplete"),
    case("generate-from-nothing", ["generate", "nowhere"],
         r"nowhere is neither a checkpoint directory .* nor a run directory"),
    # -- outputs, caches and downloads
    case("out-exists", ["train", *CORPUS, *TINY, "--out", "run"],
         r"run already exists; pass --overwrite to replace it, --resume to continue it"),
    case("out-cannot-be-written", ["train", *CORPUS, *TINY, "--out", "blocker/run"],
         r"cannot create the run directory blocker/run \(Not a directory\); choose a writable"),
    case("overwrite-refuses-what-is-not-a-run", ["train", *CORPUS, *TINY, "--out", "notes",
                                                 "--overwrite"],
         r"notes exists and is not a seqlm run; --overwrite only replaces runs"),
    case("prepare-out-exists", ["prepare", "run", *CORPUS],
         r"run already exists; pass --overwrite to replace"),
    case("prepare-out-cannot-be-written", ["prepare", "blocker/prepared", *CORPUS],
         r"blocker/prepared.*(Not a directory|cannot).*writable"),
    case("plot-exists", ["stats", *CORPUS, "--plot", "plot.png"],
         r"plot\.png already exists; pass --overwrite"),
    case("plot-cannot-be-written", ["stats", *CORPUS, "--plot", "blocker/zipf.png"],
         r"blocker/zipf\.png.*(Not a directory|cannot).*writable"),
    case("gradient-flow-plot-cannot-be-written", ["bptt", *CORPUS, "--steps", "5", "--plot",
                                                  "blocker/flow.png"],
         r"cannot write blocker/flow\.png \(Not a directory\); choose a writable path"),
    case("comparison-plot-cannot-be-written", ["compare", "run", "--plot", "blocker/cmp.png"],
         r"cannot write blocker/cmp\.png \(Not a directory\); choose a writable path"),
    case("cache-cannot-be-written", ["stats", "--corpus", "timemachine"],
         r"cache directory blocker/seqlm is not writable \(Not a directory\); set SEQLM_CACHE",
         env={"SEQLM_CACHE": "blocker/seqlm"}),
    case("download-checksum-mismatch", ["stats", "--corpus", "timemachine"],
         r"timemachine\.txt: checksum mismatch \(sha1 [0-9a-f]{40}, expected 090b5e7e.*\); "
         r"nothing was cached", env={"SEQLM_CACHE": "cache", "http_proxy": "WRONG_FILE_PROXY"}),
]


@pytest.mark.parametrize("argv,pattern,env", CASES)
def test_bad_input_is_one_clear_line_exit_2_and_touches_nothing(argv, pattern, env, workspace,
                                                                 runner, wrong_file_proxy):
    env = {k: v.replace("WRONG_FILE_PROXY", wrong_file_proxy) for k, v in env.items()}
    before = snapshot(workspace)
    result = runner.run(argv, workspace, base_env(**env))
    lines = result.stderr.splitlines()
    assert result.rc == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"seqlm {argv[0]}: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(workspace) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_directory_as_out(workspace, runner):
    ro = workspace / "read-only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    try:
        before = snapshot(workspace)
        result = runner.run(["train", *CORPUS, *TINY, "--out", "read-only/run"], workspace,
                               base_env())
        assert result.rc == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "Permission denied" in result.stderr and "writable" in result.stderr
        assert snapshot(workspace) == before
    finally:
        ro.chmod(0o755)


def test_out_of_vocabulary_prefix_warns_and_generates(workspace, runner):
    before = snapshot(workspace)
    result = runner.run(["generate", "run", "--prefix", "ZZ€ the", "--max-new-tokens", "12",
                            "--seed", "1"], workspace, base_env())
    assert result.rc == 0, result.stderr
    assert result.stderr.splitlines() == [
        "seqlm: warning: prefix tokens outside the vocabulary are read as <unk>: 'Z', '€'",
        "seqlm generate: checkpoint run/checkpoints/best (step 4)"]
    assert result.stdout.startswith("ZZ€ the") and len(result.stdout.rstrip("\n")) >= 7 + 12
    assert snapshot(workspace) == before


def test_forked_cases_answer_like_fresh_interpreters(workspace, runner):
    """The zygote's children behave as ``python -m seqlm`` started from scratch."""
    sample = [["train", "--corpus", "latin.txt"],
              ["generate", "run", "--prefix", "Zt", "--max-new-tokens", "5", "--seed", "2"]]
    for argv in sample:
        assert runner.run(argv, workspace, base_env()) == fresh(argv, workspace, base_env())
