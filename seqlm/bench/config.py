"""What the harness measures: the workloads of the performance issue and the run settings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from seqlm.config import _check, check_choices, opt
from seqlm.errors import ConfigError

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
SECTIONS = ("train", "generate", "encode")


@dataclass(frozen=True)
class Workload:
    """One model shape: tokens of ``tokenizer`` kind, ``cell``, V, H, B and T."""

    name: str
    tokenizer: str
    cell: str
    vocab_size: int
    hidden_size: int
    batch_size: int = 32
    num_steps: int = 35

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.num_steps


WORKLOADS = {
    "char-rnn": Workload("char-rnn", "char", "rnn", 28, 512),  # the book's
    "char-gru": Workload("char-gru", "char", "gru", 28, 512),
    "char-lstm": Workload("char-lstm", "char", "lstm", 28, 512),
    "word-rnn": Workload("word-rnn", "word", "rnn", 5000, 256),
}


@dataclass
class BenchConfig:
    """Settings of one ``seqlm bench`` run; :meth:`quick` is the one-minute variant."""

    workloads: str = opt(",".join(WORKLOADS), "comma-separated workloads: "
                         + ", ".join(WORKLOADS))
    sections: str = opt(",".join(SECTIONS), "comma-separated parts to run: train, generate, "
                        "encode")
    threads: int = opt(2, "torch CPU threads (the CI machine has 2 cores)")
    device: str = opt("cpu", "cpu or cuda", ("cpu", "cuda"))
    rounds: int = opt(12, "interleaved timing rounds per workload (medians over rounds)")
    steps_per_round: int = opt(3, "training steps timed back to back per path and round")
    warmup_steps: int = opt(3, "untimed steps of every path before the rounds")
    gen_tokens: int = opt(500, "tokens generated per stream after the warm-up prefix")
    gen_prefix: int = opt(10, "prefix tokens read first (warm-up)")
    gen_rounds: int = opt(7, "interleaved generation rounds")
    encode_mb: float = opt(100.0, "size of the synthetic text for the encode benchmark (MB)")
    peak_size: int = opt(2048, "side of the square float32 GEMM that measures the peak")
    bf16: bool = opt(True, "also time seqlm's paths under bfloat16 autocast")
    compile: str = opt("char-rnn", "comma-separated workloads whose scratch (autograd) model "
                       "is also timed under torch.compile; 'none' for none (each compile takes "
                       "30-60 s on two cores)")
    memory: bool = opt(True, "measure each path's peak memory (RSS) during one step")
    seed: int = opt(0, "seed of the weights and token streams")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("threads", "rounds", "steps_per_round", "gen_tokens", "gen_prefix",
                     "gen_rounds", "peak_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "a positive integer")
        _check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        _check(self.encode_mb > 0, "encode_mb", self.encode_mb, "a positive number of MB")
        self.workload_list()
        self.section_list()
        self.compile_list()

    def workload_list(self) -> list[Workload]:
        names = [n.strip() for n in self.workloads.split(",") if n.strip()]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown or not names:
            raise ConfigError(f"`workloads` {self.workloads!r}: unknown or empty; use a "
                              f"comma-separated list of {', '.join(WORKLOADS)}")
        return [WORKLOADS[n] for n in dict.fromkeys(names)]

    def section_list(self) -> list[str]:
        names = [n.strip() for n in self.sections.split(",") if n.strip()]
        if not names or any(n not in SECTIONS for n in names):
            raise ConfigError(f"`sections` {self.sections!r}: use a comma-separated list of "
                              f"{', '.join(SECTIONS)}")
        return list(dict.fromkeys(names))

    def compile_list(self) -> list[str]:
        names = [n.strip() for n in self.compile.split(",") if n.strip() not in ("", "none")]
        if any(n not in WORKLOADS for n in names):
            raise ConfigError(f"`compile` {self.compile!r}: use 'none' or a comma-separated list "
                              f"of {', '.join(WORKLOADS)}")
        return names

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        """A run of well under a minute: fewer rounds, a 10 MB text, no bf16 or compiled rows,
        no memory probes."""
        base = cls(rounds=5, steps_per_round=2, warmup_steps=2, gen_rounds=3, gen_tokens=200,
                   encode_mb=10.0, peak_size=1024, bf16=False, memory=False, compile="none")
        return replace(base, **overrides)
