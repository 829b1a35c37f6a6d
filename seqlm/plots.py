"""Training curves: perplexity against tokens seen (and against wall time for comparisons)."""

from __future__ import annotations

from pathlib import Path

from seqlm.errors import ConfigError


def new_figure(**kwargs):
    """A figure outside pyplot: drawing it needs no display and leaves the caller's backend
    (a notebook's inline plots, say) alone, and nothing holds it once it is saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, *, dpi: int = 110) -> None:
    """Writes ``fig`` to ``path`` and closes it.

    Raises:
        ConfigError: ``path`` cannot be written (missing or read-only directory, disk full).
    """
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); choose a writable "
                          "path or free some disk space") from None
    finally:
        if fig.canvas.manager is not None:  # made through pyplot, which keeps a reference
            import matplotlib.pyplot as plt

            plt.close(fig)


def plot_curves(records: list[dict], baselines: dict | None, path: str | Path) -> None:
    """Train and validation perplexity against tokens seen, the n-gram baselines as
    horizontal lines, log-scale y."""
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "eval" and "val_ppl" in r]
    if train:
        ax.plot([r["tokens"] for r in train], [r["ppl"] for r in train], label="train")
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_ppl"] for r in val], "o-", label="validation")
    for name, style in (("unigram", ":"), ("bigram", "--")):
        if baselines and name in baselines:
            ax.axhline(baselines[name]["ppl"], color="grey", linestyle=style,
                       label=f"{name} baseline ({baselines[name]['ppl']:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


def plot_comparison(runs: dict[str, list[dict]], path: str | Path) -> None:
    """Several runs side by side: perplexity against tokens and against wall time."""
    fig = new_figure(figsize=(11, 4.5))
    by_tokens, by_time = fig.subplots(1, 2, sharey=True)
    for name, records in runs.items():
        train = [r for r in records if r.get("kind") == "train"]
        val = [r for r in records if r.get("kind") == "eval" and "val_ppl" in r]
        for ax, key in ((by_tokens, "tokens"), (by_time, "elapsed")):
            line, = ax.plot([r[key] for r in train], [r["ppl"] for r in train], alpha=0.6,
                            label=f"{name} train")
            if val:
                ax.plot([r[key] for r in val], [r["val_ppl"] for r in val], "o-",
                        color=line.get_color(), label=f"{name} val")
    by_tokens.set_xlabel("tokens seen")
    by_time.set_xlabel("wall time (s)")
    by_tokens.set_ylabel("perplexity")
    for ax in (by_tokens, by_time):
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    by_time.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
