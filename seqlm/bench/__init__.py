"""The performance harness: seqlm's paths against the textbook baseline and the roofline.

:func:`run_bench` returns a plain dict (training tokens/s per path with ratios, GFLOP/s and
roofline fraction; generation tokens/s; encode MB/s; peak memory) and
:func:`format_report` renders it as the table ``seqlm bench`` prints. The modules:

* :mod:`~seqlm.bench.config` — the workloads of the performance issue and the run settings;
* :mod:`~seqlm.bench.textbook` — the chapter's implementation and torch's modules, written
  plainly (the baselines);
* :mod:`~seqlm.bench.paths` — one step / one generation of every path, seqlm's through
  :meth:`seqlm.trainer.Trainer.step` and :func:`seqlm.generate.generate`;
* :mod:`~seqlm.bench.roofline` — FLOPs per token, GEMM peak and the GEMM-only bound;
* :mod:`~seqlm.bench.timing` — interleaved rounds, medians, ratios and peak memory;
* :mod:`~seqlm.bench.encode` — the synthetic text and the tokenizers' throughput;
* :mod:`~seqlm.bench.harness` — the run itself.
"""

from seqlm.bench.config import WORKLOADS, BenchConfig, Workload

__all__ = ["WORKLOADS", "BenchConfig", "Workload", "format_report", "run_bench"]


def __getattr__(name: str):
    # the harness pulls in training, generation and the tokenizers: load it on first use,
    # so that building the command line (which reads BenchConfig) stays cheap
    if name == "run_bench":
        from seqlm.bench.harness import run_bench

        return run_bench
    if name == "format_report":
        from seqlm.bench.report import format_report

        return format_report
    raise AttributeError(f"module 'seqlm.bench' has no attribute {name!r}")
