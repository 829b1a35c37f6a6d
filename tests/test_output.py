"""The adaptive softmax output layer: exact probabilities, the same interface as the full
decoder everywhere (loss, evaluation, stepping, checkpoints, export), and its choice rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqlm.checkpoint import load_checkpoint, save_checkpoint
from seqlm.config import ModelConfig
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.models.output import MIN_CLUSTER, choose_cutoffs, wants_adaptive
from seqlm.tokenize import WordTokenizer
from seqlm.evaluation import evaluate

V = 900


def _model(**kw) -> RNNLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=V, cell="gru", hidden_size=32, embedding_dim=16, impl="auto",
                  bptt_engine="auto")
    return RNNLM(ModelConfig(**{**fields, **kw}))


def test_auto_picks_adaptive_only_when_the_decoder_outweighs_the_core():
    assert _model().config.output == "adaptive"  # 32·900 decoder weights > the core's
    assert _model(vocab_size=100).config.output == "full"
    assert _model(hidden_size=256, embedding_dim=256).config.output == "full"
    assert _model(tie_weights=True, embedding_dim=32).config.output == "full"
    assert not wants_adaptive(2 * MIN_CLUSTER - 1, 512, 1)


def test_cutoffs_follow_the_training_counts():
    counts = np.zeros(V)
    counts[:100] = 1000.0  # 100 ids carry ~99 % of the text
    counts[100:] = 1.0
    head, *_ = choose_cutoffs(counts, V)
    assert head == MIN_CLUSTER  # 90 % coverage is reached inside the smallest head allowed
    zipf = 1.0 / np.arange(1, 20001)
    cuts = choose_cutoffs(zipf, 20000)
    share = np.cumsum(zipf) / zipf.sum()
    assert share[cuts[0] - 1] >= 0.9 > share[cuts[0] - 2]
    assert len(cuts) == 2 and share[cuts[1] - 1] >= 0.99
    assert choose_cutoffs(None, 20000) == cuts  # rank alone assumes the same 1/rank law


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_adaptive_log_probs_are_exact_and_the_loss_matches_them(cell):
    model = _model(cell=cell).eval()
    X, Y = torch.randint(0, V, (3, 6)), torch.randint(0, V, (3, 6))
    with torch.no_grad():
        logp, state = model(X)
        nll, state2 = model.loss(X, Y)
    assert logp.shape == (3, 6, V)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 6))
    ref = F.cross_entropy(logp.reshape(-1, V), Y.reshape(-1), reduction="sum")
    torch.testing.assert_close(nll, ref)
    torch.testing.assert_close(state2, state)


def test_the_stepper_and_next_logits_follow_forward():
    model = _model().eval()
    X = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        logp, state = model(X)
        step, s = model.stepper(batch_size=2), model.begin_state(2)
        for t in range(5):
            out, s = step(X[:, t], s)
            torch.testing.assert_close(out, logp[:, t])
        torch.testing.assert_close(model.next_logits(state), logp[:, -1])
    with pytest.raises(ConfigError, match="numpy stepper"):
        model.stepper(backend="numpy")


def test_training_reduces_the_loss_and_evaluate_reads_it():
    model = _model()
    text = np.random.default_rng(0).zipf(1.3, 4000).clip(max=V) - 1
    X = torch.from_numpy(text[:3992].reshape(8, -1)[:, :40].copy())
    Y = torch.from_numpy(text[1:3993].reshape(8, -1)[:, :40].copy())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        nll, _ = model.loss(X, Y)
        loss = nll / Y.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    meter = evaluate(model, text, batch_size=4, num_steps=10)
    assert meter.tokens > 0 and np.isfinite(meter.loss)


def test_checkpoint_round_trip_keeps_the_layer(tmp_path):
    text = " ".join(f"w{i % 700}" for i in range(3000))
    tok = WordTokenizer.fit(text)
    model = _model(vocab_size=len(tok.vocab)).eval()
    save_checkpoint(tmp_path / "ck", model, tok)
    back = load_checkpoint(tmp_path / "ck").model.eval()
    assert back.config == model.config and back.config.output == "adaptive"
    X = torch.randint(0, len(tok.vocab), (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(back(X)[0], model(X)[0])


def test_bad_cutoffs_and_impossible_choices_are_one_line_errors():
    with pytest.raises(ConfigError, match="`cutoffs`"):
        ModelConfig(vocab_size=V, cutoffs="500,300")
    with pytest.raises(ConfigError, match="`cutoffs`"):
        ModelConfig(vocab_size=V, cutoffs="two")
    with pytest.raises(ConfigError, match="`output`"):
        ModelConfig(vocab_size=V, output="tiny")
    with pytest.raises(ConfigError, match="tie_weights"):
        _model(output="adaptive", tie_weights=True, embedding_dim=32)
    assert _model(output="adaptive", cutoffs="100,400").decoder.cutoffs == (100, 400)
