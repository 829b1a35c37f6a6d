import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.data import build_corpus
from seqlm.models import RNNLM
from seqlm.run import RunSession
from seqlm.settings import Settings
from seqlm.schedule import lr_factor
from seqlm.errors import TrainingDiverged
from seqlm.evaluation import evaluate
from seqlm.trainer import Hooks, Trainer

from conftest import TINY_TEXT


def _trainer(sampler="sequential", cell="rnn", **train):
    corpus = build_corpus(TINY_TEXT, tokenizer="char")
    data = DataConfig(sampler=sampler, batch_size=4, num_steps=8)
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, cell=cell, hidden_size=16,
                              embedding_dim=8))
    cfg = TrainConfig(**{"optimizer": "sgd", "lr": 0.5, "max_steps": 20, "eval_every": 0,
                         "sample_tokens": 0, **train})
    return Trainer(model, corpus, data, cfg, torch.device("cpu"))


class StateSpy(torch.nn.Module):
    """Wraps an RNNLM and records the state each training step's loss call receives."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.seen = model, []

    def loss(self, tokens, targets, state=None, **kw):
        self.seen.append(state)
        return self.inner.loss(tokens, targets, state, **kw)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sequential_carries_detached_state_and_resets_each_epoch(cell):
    trainer = _trainer("sequential", cell, epochs=2, max_steps=None, log_every=1000)
    spy = StateSpy(trainer.model)
    trainer.model = spy
    per_epoch = len(list(trainer.batches()))
    trainer.run(Hooks())  # would raise "backward through the graph a second time" if not cut
    seen = spy.seen[: 2 * per_epoch]
    assert seen[0] is None and seen[per_epoch] is None  # fresh state at each epoch start
    carried = [s for i, s in enumerate(seen) if i % per_epoch]
    assert carried and all(s is not None for s in carried)
    leaves = [t for s in carried for t in (s if isinstance(s, tuple) else (s,))]
    assert all(t.grad_fn is None and not t.requires_grad for t in leaves)


@pytest.mark.parametrize("sampler", ["random", "random-start"])
def test_random_sampling_starts_every_minibatch_fresh(sampler):
    trainer = _trainer(sampler, max_steps=6)
    spy = StateSpy(trainer.model)
    trainer.model = spy
    trainer.run(Hooks())
    assert spy.seen[:6] == [None] * 6


def test_step_returns_pre_clip_norm_and_applies_the_clipped_update():
    trainer = _trainer(clip=0.01, lr=1.0)
    X, Y = next(iter(trainer.batches()))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    logits, _ = trainer.model(X)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
    grads = torch.autograd.grad(loss, list(trainer.model.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    nll_sum, got_norm = trainer.step(X, Y)
    assert float(got_norm) == pytest.approx(float(norm), rel=1e-5)
    assert float(nll_sum) == pytest.approx(float(loss.detach()) * Y.numel(), rel=1e-5)
    scale = 0.01 / float(norm)
    for p, p0, g in zip(trainer.model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - scale * g, rtol=1e-4, atol=1e-6)


def test_evaluate_is_token_weighted_over_every_token():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=11, hidden_size=8)).eval()
    tokens = np.random.default_rng(0).integers(0, 11, size=203)
    meter = evaluate(model, tokens, batch_size=3, num_steps=7)
    rows, row_len = 3, 202 // 3
    t = torch.as_tensor(tokens, dtype=torch.int64)
    total = 0.0
    for r in range(rows):  # each row read in one piece, state carried implicitly
        x = t[r * row_len: (r + 1) * row_len][None]
        y = t[r * row_len + 1: (r + 1) * row_len + 1]
        logits, _ = model(x)
        total += float(F.cross_entropy(logits[0], y, reduction="sum"))
    assert meter.tokens == rows * row_len
    assert meter.loss == pytest.approx(total / meter.tokens, rel=1e-5)


def test_lr_schedules():
    cfg = TrainConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1, max_steps=110)
    assert lr_factor(cfg, 0, 110) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 110) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.55)
    assert lr_factor(cfg, 110, 110) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(schedule="constant", max_steps=5), 3, 5) == 1.0


def test_budgets_stop_training():
    trainer = _trainer(max_steps=7, log_every=3)
    trainer.run(Hooks())
    assert trainer.progress.step == 7 and trainer.progress.stop_reason == "max_steps"
    logged = [r for r in trainer.history if r["kind"] == "train"]
    assert [r["step"] for r in logged] == [3, 6, 7]
    assert [r["tokens"] for r in logged] == [3 * 32, 6 * 32, 7 * 32]  # cumulative, B·T a step
    trainer = _trainer(max_steps=None, epochs=1, log_every=1000)
    trainer.run(Hooks())
    assert trainer.progress.epoch == 1 and trainer.progress.stop_reason == "epochs"


def test_should_stop_hook_interrupts():
    trainer = _trainer(max_steps=100)
    trainer.run(Hooks(should_stop=lambda: True))
    assert trainer.progress.step == 1 and trainer.progress.stop_reason == "interrupted"


def _session(tmp_path, name, **train):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT)
    data = DataConfig(corpus=str(path), batch_size=4, num_steps=8, split="0.8,0.2,0")
    cfg = TrainConfig(**{"optimizer": "adam", "lr": 0.01, "schedule": "constant",
                         "eval_every": 5, "log_every": 2, "sample_tokens": 5, **train})
    model = {"cell": "lstm", "hidden_size": 16, "embedding_dim": 8, "dropout": 0.2}
    return RunSession.start(tmp_path / name, Settings(data, model, cfg))


def test_resume_is_bit_identical(tmp_path):
    full = _session(tmp_path, "full", max_steps=14)
    full.fit()
    half = _session(tmp_path, "half", max_steps=7)
    half.fit()
    again = _session(tmp_path, "half2", max_steps=14)
    again.run = half.run
    again.resume()
    assert again.trainer.progress.step == 7
    again.fit()
    a = load_file(full.run.checkpoints / "last" / "model.safetensors")
    b = load_file(half.run.checkpoints / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full.run.path / "samples.txt").read_text().count("--- step") >= 2


def test_diverged_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    session = _session(tmp_path, "nan", max_steps=40, eval_every=5, log_every=1,
                       guard_retries=0)

    def poison(progress):  # a weight turns NaN after step 7, as an exploding update would
        if progress.step == 7:
            with torch.no_grad():
                next(session.trainer.model.parameters()).fill_(math.nan)

    with pytest.raises(TrainingDiverged, match=r"step 8.*`lr`"):
        session.fit(on_step=poison)
    last = session.run.checkpoints / "last"
    saved = load_file(last / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert '"step": 5' in (last / "trainer.json").read_text()
