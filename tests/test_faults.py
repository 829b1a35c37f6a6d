"""Killed at any moment, nothing lost; a full disk keeps the previous checkpoint.

A short training run (real ``seqlm train`` processes, see ``forkrun``) is killed with
SIGKILL again and again, at random moments and on purpose while ``checkpoints/last`` is being
written. After every kill the checkpoint on disk must be whole, ``--resume`` must continue
from it, and the finished run must hold weights, optimizer state and RNG states bit-identical
to an uninterrupted run of the same seed, with the same training curve.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from forkrun import Zygote
from safetensors.torch import load_file

from seqlm.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # kills and starves real training processes

TEXT = ("the time traveller for so it will be convenient to speak of him was expounding a "
        "recondite matter to us his grey eyes shone and twinkled and his usually pale face "
        "was flushed and animated\n") * 30
# Small enough to run in well under a second, with a checkpoint every 3 steps; dropout and
# the cosine schedule make the RNG state and the step count matter.
TRAIN = ["--corpus", "tiny.txt", "--cell", "lstm", "--impl", "fused", "--hidden-size", "48",
         "--embedding-dim", "16", "--dropout", "0.1", "--batch-size", "4", "--num-steps", "16",
         "--max-steps", "STEPS", "--eval-every", "3", "--log-every", "3", "--schedule", "cosine",
         "--warmup-steps", "4", "--sample-tokens", "4", "--split", "0.8,0.1,0.1",
         "--threads", "1", "--seed", "7", "--quiet"]
LAST_FILES = {"config.json", "model.safetensors", "vocab.json", "trainer.json",
              "trainer.safetensors"}
KILLS = 12
STEPS = 48
TRAIN[TRAIN.index("STEPS")] = str(STEPS)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQLM_")}
    return {**env, "SEQLM_DATA": "", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork to start many training processes quickly")
    z = Zygote(tmp_path_factory.mktemp("streams"), _env())
    yield z
    z.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, zygote):
    """An uninterrupted run, and how long it took."""
    ws = tmp_path_factory.mktemp("faults")
    (ws / "tiny.txt").write_text(TEXT)
    start = time.perf_counter()
    done = zygote.run(["train", *TRAIN, "--out", "ref"], ws, _env())
    assert done.rc == 0, done.stderr
    return ws, time.perf_counter() - start


def _whole(ckpt_dir: Path) -> tuple[str, int]:
    """Checks that the checkpoint a resume would read is complete; says where it is and the
    step it holds."""
    last, old = ckpt_dir / "last", ckpt_dir / ".last.old"
    if last.exists():
        assert {p.name for p in last.iterdir()} == LAST_FILES, sorted(last.iterdir())
        found = "last"
    elif old.exists():
        found = ".last.old"  # killed between the two renames of a save
    else:
        return "none", 0
    ckpt = load_checkpoint(ckpt_dir / found)
    step = ckpt.trainer_state["progress"]["step"]
    assert step % 3 == 0 and ckpt.trainer_tensors
    return found, step


def _kill_when(zygote: Zygote, pid: int, ckpt_dir: Path, mode: str, deadline: float) -> int:
    """Waits for the moment ``mode`` names, SIGKILLs the child; returns its exit status."""
    while True:
        rc = zygote.poll(0.0005)
        if rc is not None:
            return rc
        now = time.perf_counter()
        if mode == "random" and now >= deadline:
            break
        if mode != "random" and ckpt_dir.is_dir():
            names = os.listdir(ckpt_dir)
            if mode == "writing" and any(n.startswith(".last.tmp-") for n in names):
                break
            if mode == "swapping" and ".last.old" in names:
                break
            if now >= deadline:
                break
    os.kill(pid, signal.SIGKILL)
    return zygote.poll(None)


def _curve(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows if r["kind"] == "train"]
    evals = [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval" and not r["final"]]
    return train + evals


def _same_as_reference(ws: Path) -> None:
    for name in ("model.safetensors", "trainer.safetensors"):
        ref = load_file(ws / "ref" / "checkpoints" / "last" / name)
        got = load_file(ws / "run" / "checkpoints" / "last" / name)
        assert ref.keys() == got.keys()
        assert not [k for k in ref if not ref[k].equal(got[k])], name
    assert _curve(ws / "run") == _curve(ws / "ref")
    # A later save of the same checkpoint clears what killed saves of it left behind.
    assert not [n for n in os.listdir(ws / "run" / "checkpoints") if n.startswith(".last")]


def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference, zygote):
    ws, duration = reference
    rng = random.Random(20240607)
    ckpt_dir = ws / "run" / "checkpoints"
    fresh_start = ["train", *TRAIN, "--out", "run", "--overwrite"]
    command, seen, kills, finished, step = fresh_start, {}, 0, 0, 0
    while kills < KILLS:
        pid = zygote.start(command, ws, _env())
        mode = ("random", "writing", "random", "swapping")[kills % 4]
        # Random moments fall anywhere in the process's life, start-up included: a uniform
        # share of the time the rest of the run would take (6 steps' worth for start-up).
        left = duration * (STEPS - step + 6) / (STEPS + 6)
        wait = rng.uniform(0.0, 0.8 * left) if mode == "random" else duration
        started = time.perf_counter()
        rc = _kill_when(zygote, pid, ckpt_dir, mode, started + wait)
        if rc == 0:  # it finished first: check it, and start another run to kill
            if command is fresh_start:  # a whole run's life, measured on this machine now
                duration = min(duration, time.perf_counter() - started)
            _same_as_reference(ws)
            command, finished, step = fresh_start, finished + 1, 0
            continue
        assert rc == -signal.SIGKILL, zygote.result(rc).stderr
        kills += 1
        where, step = _whole(ckpt_dir)
        names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
        temp = any(n.startswith(".last.tmp-") for n in names)
        key = (f"{mode} kill, resumed from {where}" + (", a save was cut short" if temp else "")
               + (", the old copy not yet deleted" if ".last.old" in names else ""))
        seen[key] = seen.get(key, 0) + 1
        # Continue the run; a run killed before its first save starts again.
        command = ["train", "--resume", "run", "--quiet"] if where != "none" else fresh_start
    done = zygote.run(command, ws, _env())
    assert done.rc == 0, done.stderr
    _same_as_reference(ws)
    assert any("cut short" in k for k in seen), seen  # some kills hit a save in progress
    print(f"{kills} kills, {finished} runs finished between them: {seen}")


def _disk_full_runner():
    """Runs a command with the run directory on a tmpfs of the given size (a user and mount
    namespace), else with RLIMIT_FSIZE capping every file (writes past it fail with EFBIG)."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs "
                            "/tmp 2>/dev/null && echo ok"], capture_output=True, text=True) \
        if shutil.which("unshare") else None
    return "tmpfs" if probe is not None and probe.stdout.strip() == "ok" else "fsize"


def _pages(path: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) for p in path.rglob("*") if p.is_file())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(reference, zygote, tmp_path):
    ws, _ = reference
    src = ws / "ref"
    kind = _disk_full_runner()
    before = {p.name: p.read_bytes() for p in (src / "checkpoints" / "last").iterdir()}
    shutil.copy(ws / "tiny.txt", tmp_path / "tiny.txt")
    argv = [sys.executable, "-m", "seqlm", "train", "--resume", "run", "--max-steps", "60",
            "--quiet"]
    if kind == "tmpfs":
        # Room for the run and the corpus (a page per directory too), a rewritten
        # metrics.jsonl and a few records more, not for a new checkpoint (16 pages or more).
        dirs = sum(1 for p in src.rglob("*") if p.is_dir()) + 2
        size_kib = 4 * (_pages(src) + _pages(ws / "tiny.txt") + dirs + _pages(src / "metrics.jsonl")
                        + 8)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {mnt} && cp -a {src} {mnt}/run && "
                  f"cp {tmp_path / 'tiny.txt'} {mnt}/ && cd {mnt} && "
                  f"{shlex.join(argv)} 2>{tmp_path / 'stderr'}; echo $? > {tmp_path / 'rc'}; "
                  f"cp -a {mnt}/run {tmp_path}/run")
        subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), timeout=300,
                       check=True)
        rc, stderr = int((tmp_path / "rc").read_text()), (tmp_path / "stderr").read_text()
        errno_text = "No space left on device"
    else:
        import resource

        shutil.copytree(src, tmp_path / "run", symlinks=True)
        limit = len(before["trainer.safetensors"]) - 1  # the model fits, the trainer does not

        def cap():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        proc = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              preexec_fn=cap, timeout=300)
        rc, stderr, errno_text = proc.returncode, proc.stderr, "File too large"
    lines = stderr.splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert errno_text in lines[0] and "previous checkpoint there is intact" in lines[0], lines[0]
    last = tmp_path / "run" / "checkpoints" / "last"
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before
    assert not [n for n in os.listdir(last.parent) if n.startswith(".")]
    load_checkpoint(last)
    # With room again, the run continues from that checkpoint.
    again = zygote.run(["train", "--resume", "run", "--max-steps", "51", "--quiet"], tmp_path,
                       _env())
    assert again.rc == 0, again.stderr
