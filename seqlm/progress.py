"""What a training run shows while it runs: a progress bar, one line per evaluation and per
divergence-guard recovery, and the lines that open and close a run.

:class:`Reporter` is given to :meth:`seqlm.run.RunSession.fit` as its callbacks; ``seqlm
train`` shows it in the terminal and :func:`seqlm.train` wherever it runs (a notebook gets
tqdm's notebook bar when ipywidgets is installed, else the text bar). The line texts are
plain functions (:func:`start_lines`, :func:`summary_lines`), so every front end words a run
alike.
"""

from __future__ import annotations

import sys
import warnings
from typing import TextIO


class Reporter:
    """A progress bar and the run's lines.

    Args:
        quiet: no bar and no evaluation lines (recoveries are still reported: they change
            the run).
        out: where lines go (the bar always draws on stderr).
        total: the bar's length in steps (None: unknown).
        notebook: draw tqdm's notebook bar when running in Jupyter with ipywidgets.
    """

    def __init__(self, *, quiet: bool = False, out: TextIO | None = None,
                 total: int | None = None, notebook: bool = False) -> None:
        self.quiet, self.out = quiet, out or sys.stdout
        self.bar = None if quiet else _tqdm(notebook)(
            total=total, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)

    def callbacks(self) -> dict:
        """The keyword arguments of :meth:`seqlm.run.RunSession.fit` this reporter fills."""
        return {"on_step": self.step, "on_log": self.log, "on_eval": self.eval,
                "on_recovery": self.recovery, "on_event": self.event}

    def step(self, progress) -> None:
        if self.bar is not None:
            self.bar.update(progress.step - self.bar.n)

    def log(self, r: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{r['loss']:.3f}", ppl=f"{r['ppl']:.2f}",
                                 tok_s=f"{r['tokens_per_s']:.0f}", gnorm=f"{r['grad_norm']:.2f}",
                                 refresh=False)

    def eval(self, r: dict) -> None:
        if self.quiet or "val_ppl" not in r:
            return
        line = (f"step {r['step']:>6} | epoch {r['epoch']:>4} | val loss {r['val_loss']:.4f} "
                f"| val ppl {r['val_ppl']:.3f}{' *' if r.get('best') else ''}")
        self.write(line + (f"\n    {r['sample']!r}" if r.get("sample") else ""))

    def recovery(self, r: dict) -> None:
        """One line per divergence-guard recovery, even when quiet (it changes the run)."""
        self.write(f"step {r['step']:>6} | diverging: {r['reason']}; back to step "
                   f"{r['restored_step']} at lr {r['lr']:.3g} (recovery {r['recovery']} of "
                   f"{r['retries']})")

    def event(self, r: dict) -> None:
        """One line per change the recipe's followers make (a thread count, a new plan), even
        when quiet."""
        if r.get("kind") == "threads":
            times = ", ".join(f"{k}: {1000 * v:.0f} ms" for k, v in r["step_seconds"].items())
            self.write(f"step {r['step']:>6} | threads {r['previous']} -> {r['threads']} "
                       f"({r['reason']}; step time at each count {times})")
        elif r.get("kind") == "replan":
            chosen = ", ".join(f"{k} {v}" for k, v in r["chosen"].items()) or "no change"
            again = "; starting again" if r.get("restart") else ""
            self.write(f"step {r['step']:>6} | recipe: {r['tokens_per_s']:,.0f} tokens/s "
                       f"({r['reason']}): {chosen}{again}")

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _tqdm(notebook: bool):
    if notebook:
        from tqdm import TqdmWarning

        with warnings.catch_warnings():  # no ipywidgets: tqdm.auto says so, then uses text
            warnings.simplefilter("ignore", TqdmWarning)
            from tqdm.auto import tqdm
        return tqdm
    from tqdm import tqdm

    return tqdm


def start_lines(session) -> list[str]:
    """What a run trains on and with: corpus and splits, model, the recipe's measurement and
    choices, the n-gram baselines (``session``: a :class:`seqlm.run.RunSession`)."""
    c, b = session.corpus, session.baselines
    sizes = ", ".join(f"{k} {len(v):,}" + (f" (OOV {c.oov_rate[k]:.2%})" if c.oov_rate.get(k)
                                           else "") for k, v in c.splits.items())
    n_params = sum(p.numel() for p in session.trainer.model.parameters())
    lines = [f"corpus {session.data.corpus}: {session.data.tokenizer} tokens, vocabulary "
             f"{c.vocab_size:,}; {sizes}"]
    world = session.dist.world_size
    where = f"{world} processes on {session.device.type}" if world > 1 else session.device
    cfg = session.model_cfg
    engine = ", hand-written BPTT" if cfg.impl == "scratch" and cfg.bptt_engine == "manual" else ""
    output = f", adaptive softmax (cutoffs {cfg.cutoffs})" if cfg.output == "adaptive" else ""
    lines.append(f"model {cfg.cell}/{cfg.impl}{engine}{output}, {n_params:,} parameters, on "
                 f"{where}; run {session.run.path}")
    if session.recipe:
        m, chosen = session.recipe["measured"], session.recipe["chosen"]
        budget = f" in {m['budget']:g} s" if m["budget"] else ""
        epochs = f"{m['epochs']:.1f} epochs{budget}" if m["epochs"] else "no budget"
        lines.append(f"recipe: {m['train_tokens_per_s']:,.0f} tokens/s measured, {epochs}: "
                     + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    lines.append(f"baselines on {b['split']}: unigram ppl {b['unigram']['ppl']:.3f}, bigram "
                 f"ppl {b['bigram']['ppl']:.3f} (add-k, k={b['bigram']['k']})")
    return lines


def summary_lines(summary: dict) -> list[str]:
    """How a run ended: its stop reason and speed, train and validation perplexity against
    the baselines, the best checkpoint, the last sample and the run directory."""
    train, val, base = summary["train"], summary["val"], summary["baselines"]
    lines = [f"stopped: {summary['stop_reason']} after {summary['steps']:,} steps, "
             f"{summary['tokens']:,} tokens, {summary['wall_s']:.1f} s, "
             f"{summary['tokens_per_s']:,.0f} tokens/s"]
    if train:
        lines.append(f"train perplexity {train['ppl']:.3f}")
    if val:
        lines.append(f"validation perplexity {val['ppl']:.3f} ({val['bits']:.3f} bits/token); "
                     f"bigram baseline {base['bigram']['ppl']:.3f}, unigram "
                     f"{base['unigram']['ppl']:.3f}")
    best = summary.get("best_val")
    if best and val:
        lines.append(f"best validation perplexity {best['ppl']:.3f} at step {best['step']:,} "
                     "(checkpoints/best; generate and evaluate use it, --last picks the final "
                     "weights)")
    if summary.get("sample"):
        lines.append(f"\n{summary['sample']}\n")
    lines.append(f"run: {summary['run']}  (seqlm generate {summary['run']} --prefix ...)")
    return lines
