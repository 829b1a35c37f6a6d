"""The adaptive recipe: its rules, what it may change, and its edges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqlm import recipe
from seqlm.cli import main
from seqlm.config import ADAPTABLE, DataConfig, ModelConfig, TrainConfig
from seqlm.errors import ConfigError
from seqlm.models import RNNLM
from seqlm.presets import preset
from seqlm.settings import merge_choices
from seqlm.run import RunSession
from seqlm.settings import Settings


def _measure(**kw) -> recipe.Measurement:
    fields = dict(train_tokens=400_000, val_tokens=40_000, vocab_size=100, tokens_per_step=2048,
                  train_tokens_per_s=20_000.0, eval_tokens_per_s=60_000.0, budget=95.0)
    return recipe.Measurement(**{**fields, **kw})


def test_dropout_rises_with_the_passes_the_budget_buys():
    values = [recipe.dropout_for(e) for e in (0.5, 2, 4, 8, 16, 32, 1000)]
    assert values == sorted(values) and values[:2] == [0.0, 0.0]
    assert values[2] == pytest.approx(0.1) and values[-1] == recipe.MAX_DROPOUT


def test_embedding_grows_with_the_vocabulary_within_bounds():
    assert recipe.embedding_for(104, 384) == 64
    assert recipe.embedding_for(3896, 384) == 128
    assert recipe.embedding_for(19_167, 384) == 224
    assert recipe.embedding_for(10 ** 7, 384) == 384  # never wider than the hidden state


def test_measurement_takes_the_tightest_budget():
    m = _measure()
    assert m.epochs == pytest.approx(20_000 * 95 / 400_000)
    assert _measure(max_epochs=1).epochs == 1.0
    assert _measure(budget=None, max_steps=100).steps == pytest.approx(100)
    assert _measure(budget=None).epochs is None


def test_adapt_changes_only_the_names_it_is_given():
    model = ModelConfig(vocab_size=100, cell="gru", embedding_dim=64, dropout=0.2)
    train = TrainConfig(eval_every=250)
    m = _measure(budget=540.0, train_tokens=160_000)  # 67 passes: heavy dropout
    new_model, new_train, record = recipe.adapt(("dropout",), model, train, m)
    assert new_model.dropout == recipe.MAX_DROPOUT and new_train.eval_every == 250
    assert record["chosen"] == {"dropout": recipe.MAX_DROPOUT}
    _, new_train, _ = recipe.adapt(("eval_every",), model, train, m)
    assert new_train.eval_every == recipe.eval_every_for(m.steps)
    _, kept, _ = recipe.adapt(("eval_every",), model, TrainConfig(eval_every=0), m)
    assert kept.eval_every == 0  # "only at the end" is not a cadence to tune


def test_what_the_user_sets_leaves_the_adapt_list():
    values = merge_choices(preset("cpu-fast"), {"dropout": 0.3})
    assert values["dropout"] == 0.3 and "dropout" not in values["adapt"].split(",")
    assert set(merge_choices(preset("cpu-fast"), {})["adapt"].split(",")) == set(ADAPTABLE)
    with pytest.raises(ConfigError, match="`adapt`"):
        TrainConfig(adapt="dropout,colour")


def test_the_probe_leaves_model_and_random_streams_alone():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=30, cell="gru", hidden_size=16, embedding_dim=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    tokens = np.random.default_rng(0).integers(0, 30, 5000)
    threads = torch.get_num_threads()
    train, evaluate, rates = recipe.probe(model, tokens, 8, 10, clip=1.0,
                                          device=torch.device("cpu"), seconds=0.05)
    assert train > 0 and evaluate > 0 and rates == {threads: train}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unseen_bigrams_tells_a_repetitive_text_from_a_sparse_one():
    rng = np.random.default_rng(0)
    letters = np.tile(np.arange(30), 4000)  # every bigram recurs in every piece
    assert recipe.unseen_bigrams(letters) == 0.0
    sparse = rng.integers(0, 5000, 120_000)  # 25 M possible bigrams, 120 k seen
    assert recipe.unseen_bigrams(sparse) > 0.9
    assert recipe.unseen_bigrams(sparse[:5000]) == 0.0  # under 10 pieces: cannot tell
    big = rng.integers(0, 60, recipe.SPARSITY_TOKENS * 3)  # sampled, not read whole
    assert recipe.unseen_bigrams(big) < 0.01


def test_a_sparse_text_counts_as_more_passes():
    dense, sparse = _measure(budget=540.0), _measure(budget=540.0, unseen_bigrams=0.14)
    assert dense.effective_epochs == dense.epochs
    assert sparse.effective_epochs == pytest.approx(sparse.epochs * (1 + 15 * 0.14))
    model = ModelConfig(vocab_size=100, cell="gru", embedding_dim=64)
    drops = [recipe.adapt(("dropout",), model, TrainConfig(), m)[0].dropout
             for m in (dense, sparse)]
    assert drops[0] < drops[1]
    once = _measure(budget=95.0, train_tokens=1_000_000, unseen_bigrams=0.14)  # 1.9 passes
    assert once.effective_epochs > 4 and recipe.adapt(("dropout",), model, TrainConfig(),
                                                      once)[0].dropout == 0.0


def test_depth_is_measured_only_where_the_text_limits_the_model():
    gru = ModelConfig(vocab_size=100, cell="gru", embedding_dim=64)
    assert recipe.wants_depth(gru, _measure(budget=540.0, train_tokens=160_000))  # 67 passes
    assert not recipe.wants_depth(gru, _measure(budget=95.0, train_tokens=3_000_000))
    assert not recipe.wants_depth(ModelConfig(vocab_size=100, cell="gru", num_layers=2),
                                  _measure(budget=540.0, train_tokens=160_000))
    assert not recipe.wants_depth(ModelConfig(vocab_size=100, cell="rnn"),
                                  _measure(budget=540.0, train_tokens=160_000))


@pytest.mark.parametrize("deep_speed, layers", [(8_000.0, 2), (100.0, 1)])  # 33 k, 420 steps
def test_build_model_keeps_two_layers_only_with_steps_to_train_them(monkeypatch, deep_speed,
                                                                    layers):
    def fake_probe(model, *args, **kw):  # 1 layer 20 k tokens/s; 2 layers deep_speed
        speed = 20_000.0 if model.config.num_layers == 1 else deep_speed
        return speed, 60_000.0, {1: speed}

    class Alone:
        @staticmethod
        def sum(*values):
            return values

    monkeypatch.setattr(recipe, "probe", fake_probe)
    tokens = np.tile(np.arange(50), 4000)  # 200 k tokens: 54 passes in 540 s at 20 k/s
    cfg = ModelConfig(vocab_size=50, cell="gru", hidden_size=32, embedding_dim=64)
    train = TrainConfig(time_budget=540.0, adapt="dropout,num_layers", eval_every=0)
    data = DataConfig(batch_size=8, num_steps=16)
    torch.manual_seed(0)
    model, train2, record = recipe.build_model(cfg, {"train": tokens, "val": tokens[:2000]},
                                               data, train, torch.device("cpu"), Alone())
    assert model.config.num_layers == layers and record["chosen"]["num_layers"] == layers
    assert train2.adapt == "" and model.config.dropout > 0  # changed, so the model was rebuilt
    # as a run given these settings starts: same weights, same random stream after them
    # (the twin measured and dropped moved nothing)
    state = torch.get_rng_state()
    torch.manual_seed(train.seed)
    twin = RNNLM(model.config)
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(),
                                                 model.state_dict().values()))


def test_budget_too_short_for_one_evaluation_is_one_line():
    m = _measure(budget=1.0, val_tokens=600_000)  # 10 s to evaluate
    with pytest.raises(ConfigError, match="too short.*`time_budget`"):
        recipe.check_budget(m)
    recipe.check_budget(_measure())


def test_vocabulary_larger_than_the_text_can_train():
    with pytest.raises(ConfigError, match="min_freq"):
        recipe.check_vocabulary(train_tokens=3_000, vocab_size=1_000)
    recipe.check_vocabulary(train_tokens=400_000, vocab_size=19_000)


def test_a_session_records_its_choices_and_a_resumed_run_keeps_them(tmp_path):
    data = DataConfig(corpus="builtin", max_tokens=60_000, batch_size=8, num_steps=16)
    fields = {k: v for k, v in preset("cpu-fast").items() if k in ModelConfig.__dataclass_fields__}
    fields.update(hidden_size=32)
    train = TrainConfig(max_steps=3, eval_every=0, adapt="dropout,eval_every", threads=1,
                        sample_tokens=0)
    session = RunSession.start(tmp_path / "run", Settings(data, fields, train))
    assert session.train_cfg.adapt == "" and session.recipe["chosen"].keys() == {"dropout"}
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["recipe"]["measured"]["train_tokens_per_s"] > 0
    assert saved["train"]["adapt"] == "" and saved["model"]["dropout"] == session.model_cfg.dropout


@pytest.mark.slow
def test_cli_budget_too_short_exits_2_and_leaves_no_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--corpus", "builtin", "--time-budget", "0.01", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--time-budget" in err[0]
    assert not out.exists()
