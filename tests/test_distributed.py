"""Data-parallel training: row shards, reductions, and N processes against one.

The multi-process tests start real jobs (gloo on 127.0.0.1, one thread per process, a tiny
LSTM and corpus). The equality they check: with dropout 0, a 2-process run is the same
optimisation as the 1-process run of the same seed — per-step training losses, validation
losses and final weights equal within 1e-5 (float32 sums taken in another order: DDP averages
two per-rank mean gradients where one process takes one mean). With dropout > 0 the ranks draw
other masks than one process would, so no equality is claimed there.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT
from safetensors.torch import load_file

from seqlm.checkpoint import load_checkpoint
from seqlm.cli import main
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.batches import random_batches, sequential_batches
from seqlm.data import build_corpus
from seqlm.distributed import Dist, DistributedError, from_env
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.evaluation import evaluate
from seqlm.trainer import Trainer

# ---- in one process ---------------------------------------------------------------------------


def test_from_env_reads_torchrun_variables_and_rejects_bad_ones():
    assert from_env({}) == Dist()
    assert from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Dist(3, 4, 1)
    with pytest.raises(ConfigError, match="RANK='x'"):
        from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="RANK=2 LOCAL_RANK=0 WORLD_SIZE=2"):
        from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_rows_split_the_global_batch_in_rank_order():
    assert [Dist(r, 4).rows(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6),
                                                     slice(6, 8)]
    with pytest.raises(ConfigError, match=r"`batch_size` 6 cannot be split over 4 processes"):
        Dist(0, 4).rows(6)
    state = torch.arange(2 * 8 * 3.0).reshape(2, 8, 3)  # (L, B, H)
    assert torch.equal(torch.cat([Dist(r, 2).shard(state, dim=1) for r in range(2)], 1), state)
    assert [Dist(r, 2).part(3) for r in range(2)] == [slice(0, 1), slice(1, 3)]  # uneven split


@pytest.mark.parametrize("sampler", [sequential_batches, random_batches])
def test_each_rank_owns_its_rows_and_sequential_rows_continue_per_rank(sampler):
    tokens = torch.arange(2000).numpy()
    batches = list(sampler(tokens, 8, 5, generator=torch.Generator().manual_seed(0)))
    for X, Y in batches:
        shards = [(Dist(r, 4).shard(X), Dist(r, 4).shard(Y)) for r in range(4)]
        assert torch.equal(torch.cat([x for x, _ in shards]), X)
        assert all(x.shape == (2, 5) for x, _ in shards)
    if sampler.contiguous:  # rank r's row i of batch k+1 starts where its row i of batch k ended
        for r in range(4):
            for (_, Y0), (X1, _) in itertools.pairwise(batches):
                assert torch.equal(Dist(r, 4).shard(X1)[:, 0], Dist(r, 4).shard(Y0)[:, -1])


def test_single_process_collectives_are_identities():
    single = Dist()
    x = torch.arange(6.0).reshape(2, 3)
    assert single.gather(x, dim=1) is x and single.all_reduce_(x) is x
    assert single.sum(1.5, 2) == (1.5, 2) and single.max(0.25) == 0.25
    assert single.first_step(torch.tensor(-1)) == -1 and single.first_step(torch.tensor(7)) == 7
    assert single.agree("", ("", "interrupted")) == ""
    assert single.lost_peer(RuntimeError("gloo: Connection reset by peer")) is None


def test_lost_peer_turns_only_collective_failures_into_one_clear_error():
    rank1 = Dist(1, 2)
    err = rank1.lost_peer(RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error "
                                       "[127.0.0.1]:1234: Connection reset by peer"))
    assert isinstance(err, DistributedError) and "rank 1 of 2 lost contact" in str(err)
    assert "\n" not in str(err) and "`resume`" in str(err)
    assert rank1.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


@pytest.mark.parametrize("exits, outcome", [
    ({0: 2, 1: -9}, "rank 1 of 2 (pid 101) was killed by SIGKILL"),  # 0 then lost contact
    ({0: -15, 1: 1}, "rank 1 of 2 (pid 101) exited with status 1"),
    ({0: -15, 1: 2}, 2),  # rank 1 printed a user error; torchrun stopped rank 0
    ({0: 130, 1: -2}, 130),  # Ctrl-C: the ranks saved and stopped
])
def test_launch_names_the_rank_that_crashed_or_passes_the_exit_status_on(
        monkeypatch, tmp_path, exits, outcome):
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import (
        ChildFailedError,
        ProcessFailure,
    )

    from seqlm.distributed import launch

    def failing(args):
        assert args.nproc_per_node == "2" and args.training_script == "seqlm" and args.module
        raise ChildFailedError("seqlm", {r: ProcessFailure(r, 100 + r, code, "")
                                         for r, code in exits.items()})

    monkeypatch.setattr(torchrun, "run", failing)
    if isinstance(outcome, int):
        assert launch(["train"], 2, run_dir=tmp_path) == outcome
        return
    with pytest.raises(DistributedError) as info:
        launch(["train"], 2, run_dir=tmp_path)
    assert str(info.value).startswith(outcome) and "no whole checkpoint" in str(info.value)


def test_sharded_evaluation_sums_to_the_single_process_evaluation():
    corpus = build_corpus(TINY_TEXT, tokenizer="char")
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, cell="gru", hidden_size=16,
                              embedding_dim=8))
    val = corpus.splits["val"]
    for batch_size, world in ((4, 2), (3, 2), (4, 4)):  # (3, 2): shares of 1 and 2 rows
        whole = evaluate(model, val, batch_size=batch_size, num_steps=8)
        parts = [evaluate(model, val, batch_size=batch_size, num_steps=8, dist=Dist(r, world))
                 for r in range(world)]
        assert sum(p.tokens for p in parts) == whole.tokens > 0.9 * len(val)
        assert sum(p.nll for p in parts) == pytest.approx(whole.nll, rel=1e-6)


def test_trainer_and_cli_refuse_a_process_count_that_does_not_divide_the_batch(tmp_path, capsys):
    corpus = build_corpus(TINY_TEXT, tokenizer="char")
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, hidden_size=8))
    with pytest.raises(ConfigError, match="`batch_size` 4 cannot be split over 3 processes"):
        Trainer(model, corpus, DataConfig(batch_size=4, num_steps=8), TrainConfig(max_steps=1),
                torch.device("cpu"), dist=Dist(0, 3))
    corpus_file = tmp_path / "tiny.txt"
    corpus_file.write_text(TINY_TEXT)
    for nproc, message in (("3", "--batch-size 4 cannot be split over 3 processes"),
                           ("0", "--nproc must be a positive number of processes, got 0")):
        status = main(["train", "--corpus", str(corpus_file), "--batch-size", "4",
                       "--max-steps", "1", "--nproc", nproc, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert status == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ---- N processes against one --------------------------------------------------------------------

CLIP = 0.3
TRAIN = ["--cell", "lstm", "--impl", "fused", "--num-layers", "2", "--hidden-size", "24",
         "--embedding-dim", "12", "--dropout", "0", "--batch-size", "4", "--num-steps", "8",
         "--optimizer", "adam", "--lr", "0.01", "--schedule", "constant", "--warmup-steps", "0",
         "--clip", str(CLIP), "--log-every", "1", "--eval-every", "10", "--sample-tokens", "0",
         "--threads", "1", "--seed", "5", "--quiet", "--json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(command: list[str]) -> None:
    """Run a multi-process command; on failure show the end of its output, where the failed
    rank and its error are (pytest would cut the middle of a long stderr)."""
    done = subprocess.run(command, env=_env(), capture_output=True, timeout=180)
    if done.returncode:
        lines = done.stderr.decode(errors="replace").replace("\r", "\n").splitlines()
        tail = "\n".join(line for line in lines if line.strip() and "step/s" not in line)
        pytest.fail(f"{' '.join(command[2:])} exited with {done.returncode}:\n{tail[-3000:]}")


def _in_process(*argv) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["train", *map(str, argv)]) == 0
    finally:
        torch.set_num_threads(threads)  # --threads 1 must not leak into other tests


def _losses(run: Path, kind: str = "train") -> dict[int, float]:
    key = "loss" if kind == "train" else "val_loss"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r["kind"] == kind and key in r}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-process runs and 2-process runs of the same seed, some resumed across the two."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    common = ["--corpus", corpus, *TRAIN]
    _in_process(*common, "--max-steps", 10, "--out", root / "one10")
    _in_process(*common, "--max-steps", 20, "--out", root / "one20")
    # 2 processes, started by torchrun itself on loopback with a free port
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                "-m", "seqlm", "train", *map(str, common), "--max-steps", "20",
                "--out", str(root / "two20")]
    _run(torchrun)
    # a 2-process checkpoint continued in 1 process; a 1-process one continued in 2
    shutil.copytree(root / "two20", root / "two20-one25")
    _in_process("--resume", root / "two20-one25", "--max-steps", 25)
    shutil.copytree(root / "one20", root / "one25")
    _in_process("--resume", root / "one25", "--max-steps", 25)
    shutil.copytree(root / "two20", root / "two20-two25")
    shutil.copytree(root / "one10", root / "one10-two20")
    for run, steps in (("two20-two25", "25"), ("one10-two20", "20")):
        _run([sys.executable, "-m", "seqlm", "train", "--nproc", "2", "--resume",
              str(root / run), "--max-steps", steps])
    return root


@pytest.mark.slow
def test_two_processes_are_the_same_optimisation_as_one(runs):
    one, two = _losses(runs / "one20"), _losses(runs / "two20")
    assert sorted(one) == sorted(two) == list(range(1, 21))
    assert two == pytest.approx(one, abs=1e-5)
    assert _losses(runs / "two20", "eval") == pytest.approx(_losses(runs / "one20", "eval"),
                                                            abs=1e-5)
    grad_norms = [json.loads(line)["grad_norm"] for line in
                  (runs / "two20" / "metrics.jsonl").read_text().splitlines()
                  if '"train"' in line]
    assert max(grad_norms) > CLIP  # clipping (by the global norm) took part
    _assert_same_weights(runs / "one20", runs / "two20")
    # only rank 0 wrote: one record per step, no per-rank files
    assert sorted(p.name for p in (runs / "two20").iterdir()) == sorted(
        p.name for p in (runs / "one20").iterdir())


@pytest.mark.slow
def test_checkpoint_of_two_processes_holds_the_global_state_and_resumes_in_one(runs):
    one = load_file(runs / "one20" / "checkpoints" / "last" / "trainer.safetensors")
    two = load_file(runs / "two20" / "checkpoints" / "last" / "trainer.safetensors")
    for part in ("carried_state.0", "carried_state.1"):  # LSTM (h, c), global (L, B, H)
        assert two[part].shape == one[part].shape == (2, 4, 24)
        torch.testing.assert_close(two[part], one[part], rtol=0, atol=1e-5)
    assert two["rng.torch.ranks"].shape[0] == 2
    resumed = _losses(runs / "two20-one25")
    assert resumed == pytest.approx(_losses(runs / "one25"), abs=1e-5)
    assert max(resumed) == 25
    _assert_same_weights(runs / "two20-one25", runs / "one25")


@pytest.mark.slow
def test_two_processes_resume_their_own_checkpoint(runs):
    resumed = _losses(runs / "two20-two25")
    assert sorted(resumed) == list(range(1, 26))
    assert resumed == pytest.approx(_losses(runs / "one25"), abs=1e-5)
    _assert_same_weights(runs / "two20-two25", runs / "one25")


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_in_two(runs):
    resumed = _losses(runs / "one10-two20")
    assert sorted(resumed) == list(range(1, 21))
    assert resumed == pytest.approx(_losses(runs / "one20"), abs=1e-5)
    _assert_same_weights(runs / "one10-two20", runs / "one20")


def _pid_of_rank(tag: str, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"SEQLM_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_rank_that_dies_takes_the_job_down_and_the_last_checkpoint_stays_whole(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    run, tag = tmp_path / "run", uuid.uuid4().hex
    argv = [sys.executable, "-m", "seqlm", "train", "--nproc", "2", "--corpus", str(corpus),
            "--cell", "gru", "--impl", "scratch", "--hidden-size", "16", "--embedding-dim", "8",
            "--sampler", "random", "--batch-size", "4", "--num-steps", "8",
            "--time-budget", "120", "--eval-every", "3", "--early-stopping", "none",
            "--sample-tokens", "0",
            "--threads", "1", "--quiet", "--out", str(run)]
    job = subprocess.Popen(argv, env=_env(SEQLM_TEST_TAG=tag), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last" / "trainer.json").is_file():
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        victim = _pid_of_rank(tag, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("seqlm train: error: rank ") and "torchrun stopped the other" in last
    assert "is whole (step" in last and f"--resume {run}" in last
    ckpt = load_checkpoint(run / "checkpoints" / "last")
    assert ckpt.trainer_state["progress"]["step"] >= 3 and ckpt.trainer_tensors is not None
