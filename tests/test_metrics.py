import math

import numpy as np
import pytest

from seqlm.metrics import LossMeter, bigram_nll, ngram_baselines, perplexity, unigram_nll


def test_perplexity_is_token_weighted_not_a_mean_of_batch_perplexities():
    meter = LossMeter()
    meter.add(nll_sum=1.0 * 10, tokens=10)
    meter.add(nll_sum=3.0 * 30, tokens=30)
    assert meter.loss == pytest.approx(2.5)
    assert meter.report()["ppl"] == pytest.approx(math.exp(2.5))
    assert meter.report()["bits"] == pytest.approx(2.5 / math.log(2))
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == math.inf


def test_uniform_unigram_scores_vocab_size():
    train = np.arange(10).repeat(100)
    assert math.exp(unigram_nll(train, train, 10)) == pytest.approx(10, rel=1e-6)


def test_bigram_learns_a_deterministic_sequence():
    seq = np.tile(np.arange(5), 200)
    nll = bigram_nll(seq, seq, 5, k=1e-3)
    assert math.exp(nll) < 1.05  # P(next | current) ~ 1
    base = ngram_baselines(seq[:800], seq[800:], 5)
    assert base["bigram"]["ppl"] < base["unigram"]["ppl"]
    assert base["split"] == "val"


def test_bigram_probabilities_sum_to_one():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 4, 300)
    total = 0.0
    for b in range(4):  # P(b | a=2) summed over b
        total += math.exp(-(bigram_nll(train, np.array([2, b]), 4, 0.5) * 2
                            - unigram_nll(train, np.array([2]), 4)))
    assert total == pytest.approx(1.0, rel=1e-9)
