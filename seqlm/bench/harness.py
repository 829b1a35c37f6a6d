"""The benchmark run: training, generation and encoding, returned as one plain dict."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from seqlm.bench.config import BenchConfig, Workload
from seqlm.bench.encode import encode_throughput, synthetic_text
from seqlm.bench.paths import (default_path_name, generation_tasks, make_batches,
                               torch_path_name, training_tasks)
from seqlm.bench.roofline import (flops_per_token, gemm_bound_task, gemm_gflops,
                                  machine_peaks)
from seqlm.bench.timing import (interleave, median, peak_rss_mb, ratio, step_peak_mb,
                                synchronizer)
from seqlm.devices import resolve_device

GEMM_BOUND = "GEMM bound"
BATCHES = 8  # distinct minibatches each path cycles through


def run_bench(cfg: BenchConfig, *, workloads: list[Workload] | None = None,
              on_progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run the sections of ``cfg`` and return the report (see :func:`format_report`).

    Args:
        cfg: what to run.
        workloads: model shapes to use instead of ``cfg.workloads`` (e.g. tiny ones).
        on_progress: called with a short line before each part (the library never prints).

    Returns:
        ``{"machine", "config", "peaks", "train", "generate", "encode", "peak_rss_mb",
        "seconds"}``; sections not run hold empty lists.

    Raises:
        ConfigError: ``cfg.device`` is not available here.
    """
    device = resolve_device(cfg.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    sync = synchronizer(device)
    sections = cfg.section_list()
    report: dict = {"machine": machine_info(cfg, device), "config": asdict(cfg), "peaks": {},
                    "train": [], "generate": [], "encode": []}
    try:
        if "train" in sections:
            on_progress(f"GEMM peak ({cfg.peak_size}^3, float32 and bfloat16)")
            report["peaks"] = machine_peaks(cfg.peak_size, device, sync)
        for w in workloads or cfg.workload_list():
            if "train" in sections:
                on_progress(f"training {w.name}")
                report["train"].append(bench_training(w, cfg, device, report["peaks"]))
            if "generate" in sections:
                on_progress(f"generation {w.name}")
                report["generate"].append(bench_generation(w, cfg, device))
        if "encode" in sections:
            on_progress(f"encoding a synthetic {cfg.encode_mb:g} MB text")
            report["encode"] = bench_encoding(cfg)
    finally:
        torch.set_num_threads(previous_threads)
    report["peak_rss_mb"] = peak_rss_mb()
    report["seconds"] = time.perf_counter() - start
    return report


def machine_info(cfg: BenchConfig, device: torch.device) -> dict:
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": cfg.threads,
            "device": str(device), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_training(w: Workload, cfg: BenchConfig, device: torch.device, peaks: dict) -> dict:
    """Interleaved training steps of every path of ``w``, and the GEMM bound."""
    sync = synchronizer(device)
    batches = make_batches(w, BATCHES, cfg.seed, device)
    tasks = training_tasks(w, batches, device, cfg.seed, bf16=cfg.bf16,
                           compile=w.name in cfg.compile_list())
    tasks[GEMM_BOUND] = gemm_bound_task(w, device)
    samples = interleave(tasks, rounds=cfg.rounds, reps=cfg.steps_per_round,
                         warmup=cfg.warmup_steps, sync=sync)
    fpt = flops_per_token(w)
    base, ref = samples["textbook"], samples[torch_path_name(w)]
    default = default_path_name(w, device)
    rows = []
    for name, times in samples.items():
        tokens_per_s = w.tokens_per_step / median(times)
        gflops = tokens_per_s * fpt / 1e9
        roof = peaks.get("bfloat16" if name.endswith("bf16") else "float32")
        rows.append({"path": name, "default": name == default,
                     "ms_per_step": median(times) * 1e3,
                     "tokens_per_s": tokens_per_s, "vs_textbook": ratio(base, times),
                     "vs_torch": ratio(ref, times), "gflops": gflops,
                     "roofline": gflops / roof if roof else None,
                     "peak_mb": (step_peak_mb(tasks[name], device)
                                 if cfg.memory and name != GEMM_BOUND else None)})
    H, GH = w.hidden_size, w.gates * w.hidden_size
    return {"workload": asdict(w), "flops_per_token": fpt,
            "step_gemm_gflops": gemm_gflops(w.batch_size, H, GH, device=device, sync=sync),
            "paths": rows}


def bench_generation(w: Workload, cfg: BenchConfig, device: torch.device) -> dict:
    """Interleaved greedy generation of one stream by every path of ``w``."""
    tasks = generation_tasks(w, device, cfg.seed, prefix_len=cfg.gen_prefix,
                             new_tokens=cfg.gen_tokens)
    samples = interleave(tasks, rounds=cfg.gen_rounds, warmup=1, sync=synchronizer(device))
    base = samples["textbook"]
    rows = [{"path": name, "tokens_per_s": cfg.gen_tokens / median(times),
             "ms_per_token": median(times) / cfg.gen_tokens * 1e3,
             "vs_textbook": ratio(base, times),
             "peak_mb": step_peak_mb(tasks[name], device) if cfg.memory else None}
            for name, times in samples.items()]
    return {"workload": asdict(w), "new_tokens": cfg.gen_tokens, "prefix": cfg.gen_prefix,
            "paths": rows}


def bench_encoding(cfg: BenchConfig) -> list[dict]:
    """Encode MB/s and peak memory of the char and word tokenizers on a synthetic text."""
    text = synthetic_text(int(cfg.encode_mb * 1e6), seed=cfg.seed)
    return [encode_throughput(kind, text) for kind in ("char", "word")]
