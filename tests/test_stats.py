import numpy as np
import pytest

from seqlm.stats import corpus_stats, ngram_counts, plot_frequencies, zipf_exponent
from seqlm.tokenize import WordTokenizer


def test_ngram_counts_match_a_counter():
    from collections import Counter

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=500)
    for n in (1, 2, 3):
        table = ngram_counts(ids, n, 7)
        expect = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
        got = {tuple(k): int(c) for k, c in zip(table.keys, table.counts)}
        assert got == expect
        assert np.all(np.diff(table.counts) <= 0)


def test_zipf_exponent_recovers_a_power_law():
    ranks = np.arange(1, 2000)
    counts = np.round(1e6 * ranks ** -1.3)
    assert zipf_exponent(counts) == pytest.approx(1.3, abs=0.02)


def test_time_machine_word_statistics(data_env, tmp_path):
    from seqlm.text import clean, read_corpus

    text = clean(read_corpus("timemachine"), "letters")
    tok = WordTokenizer.fit(text)
    stats = corpus_stats(tok.encode(text), tok.vocab, top=3)
    tables = stats.pop("_tables")
    assert stats["tokens"] == 32_775 and stats["vocab_size"] == 4_580  # the book's figures
    assert [r["tokens"] for r in stats["unigrams"]["top"]] == [["the"], ["i"], ["and"]]
    assert stats["bigrams"]["top"][0] == {"tokens": ["of", "the"], "count": 309}
    assert stats["trigrams"]["top"][0] == {"tokens": ["the", "time", "traveller"], "count": 59}
    assert 0.8 < stats["unigrams"]["zipf_exponent"] < 1.3
    plot_frequencies(tables, tmp_path / "zipf.png")
    assert (tmp_path / "zipf.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook's inline figures kept disappearing after a training run: the library's
    plots switched the process to Agg. They now draw on figures of their own."""
    import subprocess
    import sys

    script = f"""
import matplotlib
matplotlib.use("svg")
from seqlm.plots import plot_curves
from seqlm.stats import ngram_counts, plot_frequencies
import numpy as np
records = [{{"kind": "train", "tokens": 10, "ppl": 9.0}}, {{"kind": "eval", "tokens": 10, "val_ppl": 8.0}}]
plot_curves(records, None, {str(tmp_path / "curves.png")!r})
plot_frequencies({{1: ngram_counts(np.arange(50) % 7, 1, 7)}}, {str(tmp_path / "zipf.png")!r})
import matplotlib.pyplot as plt
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["svg", "0"]
    for name in ("curves.png", "zipf.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
