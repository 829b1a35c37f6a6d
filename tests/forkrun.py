"""Run ``python -m seqlm`` many times without paying torch's import each time.

A zygote process imports seqlm, torch and what they import lazily (the optimizers' dynamo,
matplotlib) once; every command then runs in a child forked from it, which takes its argv,
working directory, environment and standard streams and runs the ``seqlm`` package as
``__main__`` exactly as ``python -m seqlm`` does (``SystemExit`` gives the exit status, an
uncaught exception prints its traceback and exits 1). Children are real processes: they can
be killed, and their files are real files. Without ``os.fork`` (Windows) every command starts
a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ZYGOTE = r"""
import json, os, runpy, sys, traceback
import seqlm.cli, seqlm.cli.commands, seqlm.cli.training, seqlm.run  # the slow imports, once
import torch._dynamo  # what torch.optim imports on first use (about 2 s)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
os.write(1, b'{"ready": true}\n')

def _exit_code(exc):
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1

def _child(job):
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    sys.stdin, sys.stdout, sys.stderr = (open(0, "r", closefd=False),
                                         open(1, "w", closefd=False),
                                         open(2, "w", closefd=False))
    sys.argv = ["seqlm", *job["argv"]]
    code = 0
    try:
        runpy.run_module("seqlm", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

for line in iter(sys.stdin.buffer.readline, b""):
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        _child(job)
    os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, (json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n").encode())
"""


class Result(NamedTuple):
    rc: int
    stdout: str
    stderr: str


def fresh(argv, cwd: Path, env: dict) -> Result:
    """``python -m seqlm argv`` in a new interpreter."""
    proc = subprocess.run([sys.executable, "-m", "seqlm", *map(str, argv)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Zygote:
    """Starts ``seqlm`` commands in forked children, one at a time."""

    def __init__(self, scratch: Path, env: dict) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.pid: int | None = None
        self.argv: list[str] = []
        self._buffer = b""
        self.ready = False

    def start(self, argv, cwd: Path, env: dict) -> int:
        """Starts a child and returns its pid."""
        if not self.ready:  # the first command waits for the imports, not for a fork
            self.ready = self._reply()["ready"]
        self.argv = [str(a) for a in argv]
        job = {"argv": self.argv, "cwd": str(cwd), "env": env,
               "stdout": str(self.scratch / "stdout"), "stderr": str(self.scratch / "stderr")}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        self.pid = self._reply()["pid"]
        return self.pid

    def poll(self, timeout: float = 0.0) -> int | None:
        """The child's exit status once it has ended, else None (after ``timeout`` s)."""
        reply = self._reply(timeout)
        return None if reply is None else reply["rc"]

    def wait(self) -> Result:
        return self.result(self._reply()["rc"])

    def result(self, rc: int) -> Result:
        return Result(rc, (self.scratch / "stdout").read_text(),
                      (self.scratch / "stderr").read_text())

    def run(self, argv, cwd: Path, env: dict) -> Result:
        self.start(argv, cwd, env)
        return self.wait()

    def _reply(self, timeout: float | None = None) -> dict | None:
        """The zygote's next reply line; None if none came within ``timeout`` seconds."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if timeout is not None and not select.select([fd], [], [], timeout)[0]:
                return None
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError(f"the zygote died running seqlm {' '.join(self.argv)}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Runner:
    """``run(argv, cwd, env)``: through a zygote where ``os.fork`` exists, else fresh."""

    def __init__(self, scratch: Path, env: dict) -> None:
        self.zygote = Zygote(scratch, env) if hasattr(os, "fork") else None

    def run(self, argv, cwd: Path, env: dict) -> Result:
        if self.zygote is None:
            return fresh(argv, cwd, env)
        return self.zygote.run(argv, cwd, env)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
