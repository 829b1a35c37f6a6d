"""The front door of a training run: :func:`train` (``seqlm.train``), the one call that trains
from Python as ``seqlm train`` does, :func:`open_session` (the new or resumed run both of them
drive) and :func:`stop_requests` (Ctrl-C ends a run after the current step).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from seqlm import settings
from seqlm.run import RunSession


def open_session(corpus: str | None = None, *, preset: str | None = None,
                 config: str | Path | None = None, out: str | Path | None = None,
                 name: str | None = None, resume: str | Path | None = None,
                 overwrite: bool = False, is_main: bool = True, **choices) -> RunSession:
    """A new run (in ``out``, else ``runs/<name>``, else ``runs/<preset or cell>-<time>``) or,
    with ``resume``, a saved one; the arguments are :func:`train`'s.

    Raises:
        ConfigError: a bad setting, ``out`` taken, or a resume that changes more than budgets.
        CorpusError, CheckpointError: the corpus or the resumed run cannot be read.
    """
    if corpus is not None:
        choices["corpus"] = str(corpus)
    if resume is not None:
        return RunSession.reopen(resume, choices, is_main=is_main)
    chosen = settings.resolve(preset, config, choices)
    return RunSession.start(out or default_out(name, preset, chosen.model.get("cell", "rnn")),
                            chosen, preset=preset, overwrite=overwrite, is_main=is_main)


def default_out(name: str | None, preset: str | None, cell: str) -> Path:
    """``runs/<name>``, else ``runs/<preset or cell>-<date>-<time>``."""
    return Path("runs") / (name or f"{preset or cell}-{time.strftime('%Y%m%d-%H%M%S')}")


@contextmanager
def stop_requests(signals=(signal.SIGINT,), *, immediate: bool = True
                  ) -> Iterator[Callable[[], int | None]]:
    """Turns ``signals`` into a request to stop after the current step while the block runs;
    yields ``received()``, the first signal's number (None while none came). A second
    signal raises KeyboardInterrupt at once when ``immediate`` (under torchrun the second is
    torchrun forwarding the first, so the command line passes False there). Outside the main
    thread, where Python cannot take signals, nothing is installed.
    """
    caught: list[int] = []

    def on_signal(signum, frame):
        if caught and immediate:
            raise KeyboardInterrupt
        caught.append(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in signals} if main else {}
    try:
        yield lambda: caught[0] if caught else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(corpus: str | Path | None = None, *, preset: str | None = None,
          config: str | Path | None = None, out: str | Path | None = None,
          name: str | None = None, resume: str | Path | None = None, overwrite: bool = False,
          progress: bool = True, **settings_):
    """Train a language model in one call, as ``seqlm train`` does: the same settings, preset,
    recipe, run directory, checkpoints, divergence guard and summary.

    ::

        import seqlm
        lm = seqlm.train("my_book.txt", time_budget=60)
        print(lm.generate("It was", max_new_tokens=100), lm.summary["best_val"]["ppl"])

    Args:
        corpus: a text file, a directory of ``.txt`` files, a prepared corpus or a name
            (``builtin``, ``timemachine``, ...); None keeps the preset's (``builtin``).
        preset: a named preset (:data:`seqlm.presets.PRESETS`); None is ``cpu-fast``.
        config: a TOML settings file.
        out: the run directory (default ``runs/<name>``, else ``runs/<preset>-<time>``).
        name: the run's name under ``runs/``.
        resume: a run directory to continue from its ``checkpoints/last``; only the budgets
            (``epochs``, ``max_steps``, ``time_budget``, ``early_stopping``) may change.
        overwrite: replace an existing run in ``out``.
        progress: show a progress bar (tqdm's notebook bar in Jupyter, when ipywidgets is
            installed) and the run's opening, evaluation and closing lines; False shows
            nothing (recoveries from a divergence still come as lines).
        **settings_: any field of :class:`~seqlm.config.DataConfig`,
            :class:`~seqlm.config.ModelConfig` (but ``vocab_size``) or
            :class:`~seqlm.config.TrainConfig`, e.g. ``time_budget=60, cell="lstm"``;
            they override the preset and the file.

    Returns:
        The trained :class:`~seqlm.api.LanguageModel` (checkpoints/best, as :func:`seqlm.load`
        gives it), with the run's summary as ``lm.summary`` (see
        :meth:`seqlm.run.RunSession.fit`). Ctrl-C (or the notebook's interrupt) ends the run
        after the current step, saves checkpoints/last and returns the model trained so far
        (``lm.summary["stop_reason"] == "interrupted"``); a second Ctrl-C stops at once.

    Raises:
        ConfigError: a bad setting (the message names it), or ``out`` is taken.
        CorpusError: the corpus cannot be read or is too short.
        CheckpointError: ``resume`` names no resumable run.
        TrainingDiverged: the divergence guard could not recover.
    """
    from seqlm.api import load
    from seqlm.progress import Reporter, start_lines, summary_lines

    session = open_session(corpus, preset=preset, config=config, out=out, name=name,
                           resume=resume, overwrite=overwrite, **settings_)
    reporter = Reporter(quiet=not progress, total=session.trainer.total_steps, notebook=True)
    for line in start_lines(session) if progress else ():
        reporter.write(line)
    try:
        with stop_requests() as received:
            summary = session.fit(**reporter.callbacks(), should_stop=lambda: bool(received()))
    finally:
        reporter.close()
    for line in summary_lines(summary) if progress else ():
        reporter.write(line)
    lm = load(session.run.path)
    lm.summary = summary
    return lm
