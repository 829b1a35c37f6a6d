"""Load test of ``seqlm serve``: concurrent streamed generations on loopback, and the
streaming speed of one request against ``seqlm generate``'s library call on the same model.

    python benchmarks/serve_load.py --run runs/<name>
    python benchmarks/serve_load.py            # the default model (cpu-fast preset), untrained

The server is started as ``seqlm serve RUN --port 0`` on 127.0.0.1 (nothing else is ever
contacted), then:

* idle: ``--idle`` requests one after another: first-token latency (request sent → first
  token line received) and the stream's tokens/s;
* library: the same generation through :meth:`seqlm.api.LanguageModel.generate` in this
  process (what ``seqlm generate`` runs after loading) on the main thread, as the command
  runs it, and in a fresh thread, as the server runs it (where torch's intra-op pool is not
  used), interleaved with the idle requests so all see the same machine; and
  ``seqlm generate`` itself as a subprocess (wall time, start-up included);
* load: ``--clients`` requests of ``--tokens`` tokens sent at once (each on its own
  connection), all of which must succeed: throughput, p50/p95 latency, p50/p95 first token.

Speed of an untrained model equals a trained one's (same shapes), so the default needs no
training. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "the time traveller "


def default_run(folder: Path) -> Path:
    """A checkpoint of the default model (``seqlm train``'s cpu-fast preset) with a char
    vocabulary of the built-in corpus, untrained."""
    import torch

    from seqlm.checkpoint import save_checkpoint
    from seqlm.config import ModelConfig
    from seqlm.models import RNNLM
    from seqlm.presets import PRESETS
    from seqlm.text import read_corpus
    from seqlm.tokenize import fit_tokenizer

    tokenizer = fit_tokenizer("char", read_corpus("builtin"))
    fields = {f: PRESETS["cpu-fast"][f] for f in ModelConfig.__dataclass_fields__
              if f in PRESETS["cpu-fast"]}
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=len(tokenizer.vocab), **fields))
    return save_checkpoint(folder / "default", model, tokenizer)


def start_server(run: Path, max_concurrent: int, max_queued: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "seqlm", "serve", str(run), "--port", "0",
                             "--max-concurrent", str(max_concurrent), "--max-queued",
                             str(max_queued), "--queue-timeout", "600"],
                            env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"seqlm serve did not start: {line!r}")
    return proc, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def one_stream(port: int, tokens: int, seed: int) -> dict:
    """One streamed generation: times of the first token and of the end, and the count."""
    body = json.dumps({"prefix": PREFIX, "max_new_tokens": tokens, "temperature": 0.8,
                       "seed": seed})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first, count, status, error = None, 0, response.status, None
    for raw in response:
        line = json.loads(raw)
        if line["type"] == "token":
            count += 1
            if first is None:
                first = time.perf_counter() - t0
        elif line["type"] == "error":
            error = line["error"]
    total = time.perf_counter() - t0
    conn.close()
    return {"status": status, "tokens": count, "first": first, "total": total, "error": error}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def library_run(lm, tokens: int, seed: int) -> float:
    """Seconds of one LanguageModel.generate call (what seqlm generate runs after loading)."""
    t0 = time.perf_counter()
    lm.generate(PREFIX, max_new_tokens=tokens, temperature=0.8, seed=seed)
    return time.perf_counter() - t0


def in_thread(fn, *args):
    """``fn(*args)`` run in a fresh thread, as the server runs model work (torch's intra-op
    pool is then not used: one thread per generation)."""
    out = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)))
    worker.start()
    worker.join()
    return out[0]


def cli_wall(run: Path, tokens: int) -> float:
    """Wall seconds of ``seqlm generate`` as a subprocess, start-up and loading included."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seqlm", "generate", str(run), "--prefix", PREFIX,
                    "--max-new-tokens", str(tokens), "--seed", "0", "--json"], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def load(port: int, clients: int, tokens: int) -> dict:
    results: list[dict] = [None] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        results[i] = one_stream(port, tokens, seed=i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200 and r["tokens"] == tokens and not r["error"]]
    totals, firsts = [r["total"] for r in ok], [r["first"] for r in ok]
    return {"clients": clients, "tokens": tokens, "succeeded": len(ok), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "latency_p50_s": percentile(totals, 0.5), "latency_p95_s": percentile(totals, 0.95),
            "first_token_p50_s": percentile(firsts, 0.5),
            "first_token_p95_s": percentile(firsts, 0.95)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run or checkpoint directory (default: the default model)")
    p.add_argument("--clients", type=int, default=50, help="concurrent requests")
    p.add_argument("--tokens", type=int, default=200, help="tokens per request")
    p.add_argument("--idle", type=int, default=20, help="sequential requests on an idle server")
    p.add_argument("--max-concurrent", type=int, default=4, help="the server's limit")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    import seqlm

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else default_run(Path(tmp))
        lm = seqlm.load(run)
        cli = cli_wall(run, args.tokens)
        proc, port = start_server(run, args.max_concurrent, max(args.clients, 64))
        try:
            one_stream(port, args.tokens, seed=0)  # warm both
            library_run(lm, args.tokens, seed=0)
            idle, library, worker = [], [], []
            for i in range(args.idle):  # interleaved: all three see the same machine
                idle.append(one_stream(port, args.tokens, seed=i))
                library.append(library_run(lm, args.tokens, seed=i))
                worker.append(in_thread(library_run, lm, args.tokens, i))
            loaded = load(port, args.clients, args.tokens)
        finally:
            proc.terminate()
            proc.wait()
    streams = [r["total"] for r in idle]
    stream_s, library_s = statistics.median(streams), statistics.median(library)
    report = {"run": str(args.run or "default (cpu-fast preset, untrained)"),
              "load_average": os.getloadavg()[0],
              "idle": {"requests": args.idle, "tokens": args.tokens,
                       "first_token_p50_s": statistics.median(r["first"] for r in idle),
                       "first_token_max_s": max(r["first"] for r in idle),
                       "stream_median_s": stream_s, "stream_min_s": min(streams),
                       "tokens_per_s": args.tokens / stream_s},
              "library": {"median_s": library_s, "min_s": min(library),
                          "tokens_per_s": args.tokens / library_s, "cli_wall_s": cli,
                          "worker_thread_median_s": statistics.median(worker)},
              "stream_vs_library": stream_s / library_s,
              "stream_vs_library_worker": stream_s / statistics.median(worker),
              "load": loaded}
    if args.json:
        print(json.dumps(report))
        return 0 if loaded["succeeded"] == args.clients else 1
    i, lib, ld = report["idle"], report["library"], loaded
    print(f"model: {report['run']} (1-minute load average {report['load_average']:.1f})")
    print(f"idle, {i['requests']} requests of {args.tokens} tokens: first token "
          f"{1e3 * i['first_token_p50_s']:.1f} ms (median; max {1e3 * i['first_token_max_s']:.1f}),"
          f" stream {1e3 * i['stream_median_s']:.1f} ms = {i['tokens_per_s']:,.0f} tokens/s")
    print(f"library generate: {1e3 * lib['median_s']:.1f} ms = {lib['tokens_per_s']:,.0f} "
          f"tokens/s; seqlm generate wall {lib['cli_wall_s']:.2f} s (start-up included); "
          f"stream / library = {report['stream_vs_library']:.2f}")
    print(f"library generate in a worker thread (as the server runs it): "
          f"{1e3 * lib['worker_thread_median_s']:.1f} ms; stream / that = "
          f"{report['stream_vs_library_worker']:.2f}")
    print(f"load, {ld['clients']} concurrent: {ld['succeeded']}/{ld['clients']} succeeded in "
          f"{ld['wall_s']:.2f} s, {ld['tokens_per_s']:,.0f} tokens/s; latency p50 "
          f"{ld['latency_p50_s']:.2f} s, p95 {ld['latency_p95_s']:.2f} s; first token p50 "
          f"{1e3 * ld['first_token_p50_s']:.0f} ms, p95 {1e3 * ld['first_token_p95_s']:.0f} ms")
    return 0 if ld["succeeded"] == ld["clients"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
