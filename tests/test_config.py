import math

import pytest

from seqlm import settings
from seqlm.config import DataConfig, TrainConfig
from seqlm.presets import PRESETS, preset
from seqlm.settings import read_toml, route
from seqlm.errors import ConfigError


@pytest.mark.parametrize("kwargs, flag", [
    ({"batch_size": 0}, "`batch_size`"), ({"num_steps": -1}, "`num_steps`"),
    ({"split": "0.5,0.6,0"}, "`split`"), ({"split": "a,b,c"}, "`split`"),
    ({"sampler": "shuffled"}, "`sampler`"), ({"tokenizer": "spm"}, "`tokenizer`"),
    ({"clean": "upper"}, "`clean`"), ({"max_tokens": 0}, "`max_tokens`"),
])
def test_data_config_rejects_bad_values_naming_the_field(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        DataConfig(**kwargs)


@pytest.mark.parametrize("kwargs, flag", [
    ({"lr": -1.0}, "`lr`"), ({"lr": math.nan}, "`lr`"), ({"clip": -1.0}, "`clip`"),
    ({"optimizer": "rmsprop"}, "`optimizer`"), ({"epochs": 0}, "`epochs`"),
    ({"time_budget": 0.0}, "`time_budget`"), ({"log_every": 0}, "`log_every`"),
])
def test_train_config_rejects_bad_values_naming_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**kwargs)


def test_no_budget_means_the_default_time_budget():
    assert TrainConfig().time_budget is not None
    assert TrainConfig(epochs=3).time_budget is None


def test_presets_are_valid_configs():
    for name in PRESETS:
        settings.resolve(name).model_config(28)
    book = preset("d2l-scratch")
    assert (book["hidden_size"], book["lr"], book["epochs"], book["max_tokens"]) == \
        (512, 1.0, 500, 10000)
    with pytest.raises(ConfigError, match="d2l-scratch"):
        preset("nope")


def test_route_sends_each_name_to_its_config_and_type_checks():
    sections = route({"hidden_size": 8, "lr": 1, "bpe_vocab_size": 300})
    assert sections["model"] == {"hidden_size": 8}
    assert sections["train"] == {"lr": 1.0} and isinstance(sections["train"]["lr"], float)
    assert sections["data"] == {"bpe_vocab_size": 300}
    with pytest.raises(ConfigError, match="unknown setting 'hiden_size'"):
        route({"hiden_size": 8})
    with pytest.raises(ConfigError, match="must be int"):
        route({"hidden_size": "big"})
    assert route({"embedding_dim": None})["model"] == {"embedding_dim": None}
    with pytest.raises(ConfigError, match="`vocab_size` is not a setting.*`bpe_vocab_size`"):
        route({"vocab_size": 300})  # the corpus decides the model's V


def test_resolve_applies_defaults_preset_file_then_choices(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text("hidden_size = 64\nlr = 0.5\n")
    chosen = settings.resolve("cpu-fast", toml, {"lr": 0.25, "dropout": 0.3})
    assert chosen.model["hidden_size"] == 64 and chosen.train.lr == 0.25  # file < choices
    assert chosen.model["cell"] == "gru" and chosen.data.batch_size == 64  # the preset's
    assert chosen.train.time_budget == PRESETS["cpu-fast"]["time_budget"]
    # a name the user chose is never adapted; the rest of the preset's list stays
    assert "dropout" not in chosen.train.adapted() and "num_layers" in chosen.train.adapted()
    # a budget the user gives replaces every budget of the preset
    steps = settings.resolve("cpu-fast", choices={"max_steps": 10})
    assert steps.train.max_steps == 10 and steps.train.time_budget is None
    assert settings.resolve().model == settings.resolve("cpu-fast").model  # the default preset


def test_saved_reads_old_names_and_resume_changes_only_budgets():
    old = {"data": {"vocab_size": 512, "tokenizer": "bpe"},  # the BPE target's name before 0.2
           "model": {"vocab_size": 600, "cell": "gru", "cutoffs": "100,300"},
           "train": {"lr": 0.1, "epochs": 2, "a_setting_from_the_future": 1}}
    got = settings.saved(old, settings.resume_budgets(old, {"epochs": 5, "lr": 0.1}))
    assert got.data.bpe_vocab_size == 512 and got.model == {"cell": "gru", "cutoffs": "100,300"}
    assert got.train.epochs == 5 and got.train.lr == 0.1
    with pytest.raises(ConfigError, match="`lr` 0.2 contradicts the saved run"):
        settings.resume_budgets(old, {"lr": 0.2})
    timed = {**old, "train": {"time_budget": 20.0}}  # a budget given replaces the saved ones
    assert settings.saved(timed, {"max_steps": 50}).train.time_budget is None
    assert settings.saved(timed, {"early_stopping": 2}).train.time_budget == 20.0


def test_a_toml_file_with_the_old_bpe_name_still_reads(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text("[data]\nvocab_size = 400\ntokenizer = 'bpe'\n")
    with pytest.warns(DeprecationWarning, match="`bpe_vocab_size`"):
        assert read_toml(old) == {"bpe_vocab_size": 400, "tokenizer": "bpe"}


def test_toml_flat_or_sectioned_and_errors(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text('hidden_size = 64\n[train]\nlr = 0.5\n')
    assert read_toml(good) == {"hidden_size": 64, "lr": 0.5}
    bad = tmp_path / "b.toml"
    bad.write_text("hidden_size = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_toml(tmp_path / "missing.toml")
