"""The best checkpoint everywhere: patience ends a run that stopped improving, the summary
names the best evaluation, generate and evaluate read checkpoints/best unless --last."""

import json

import pytest
import torch

from seqlm.cli import main
from seqlm.config import DEFAULT_PATIENCE, DataConfig, ModelConfig, TrainConfig
from seqlm.data import build_corpus
from seqlm.models import RNNLM
from seqlm.presets import PRESETS
from seqlm.trainer import Hooks, Trainer

from conftest import TINY_TEXT


def test_patience_ends_a_run_whose_validation_stopped_improving():
    corpus = build_corpus(TINY_TEXT, tokenizer="char", split=(0.8, 0.2, 0.0))
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, cell="gru", impl="fused",
                              hidden_size=16, embedding_dim=8))
    # An lr so small that no evaluation after the first can be a new best.
    cfg = TrainConfig(optimizer="adam", lr=1e-12, max_steps=200, eval_every=2,
                      early_stopping=3, sample_tokens=0)
    trainer = Trainer(model, corpus, DataConfig(batch_size=4, num_steps=8), cfg,
                      torch.device("cpu"))
    trainer.run(Hooks())
    p = trainer.progress
    assert p.stop_reason == "early_stopping" and p.step == 2 + 3 * 2
    assert p.best_step == 2 and p.stale_evals == 3


def test_patience_and_guard_are_on_by_default_and_off_for_the_book():
    assert TrainConfig(max_steps=1).early_stopping == DEFAULT_PATIENCE
    assert TrainConfig(max_steps=1).guard_retries > 0
    for name, values in PRESETS.items():
        if name.startswith("d2l"):
            assert values["early_stopping"] is None and values["guard_retries"] == 0, name


def _train(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT)
    run = tmp_path / "run"
    status = main(["train", "--corpus", str(corpus), "--out", str(run), "--cell", "gru",
                   "--impl", "fused", "--hidden-size", "16", "--embedding-dim", "8",
                   "--batch-size", "4", "--num-steps", "8", "--max-steps", "30",
                   "--eval-every", "10", "--lr", "0.01", "--sample-tokens", "0",
                   "--split", "0.8,0.2,0", "--quiet"])
    assert status == 0
    return run, capsys.readouterr().out


@pytest.mark.slow  # a whole run through the command line
def test_summary_generate_and_evaluate_name_the_best_checkpoint(tmp_path, capsys):
    run, summary = _train(tmp_path, capsys)
    best = json.loads((run / "checkpoints" / "best" / "trainer.json").read_text())
    step = best["progress"]["step"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_ppl = min(r["val_ppl"] for r in evals if r["kind"] == "eval")
    assert f"best validation perplexity {best_ppl:.3f} at step {step}" in summary

    assert main(["generate", str(run), "--max-new-tokens", "5", "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"].endswith("best") and out["checkpoint_step"] == step
    assert main(["generate", str(run), "--last", "--max-new-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"].endswith("last") and out["checkpoint_step"] == 30
    assert main(["generate", str(run), "--max-new-tokens", "5", "--prefix", "the"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out.startswith("the") and f"best (step {step})" in streamed.err

    assert main(["evaluate", str(run), "--batch-size", "4", "--num-steps", "8"]) == 0
    line = capsys.readouterr().out
    assert f"best (step {step}):" in line and f"perplexity {best_ppl:.3f}" in line
    assert main(["evaluate", str(run), "--last", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_step"] == 30
    assert main(["evaluate", str(run / "checkpoints" / "last"), "--last"]) == 2
    assert "--last needs a run directory" in capsys.readouterr().err
