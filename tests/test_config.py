import math

import pytest

from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.presets import PRESETS, preset, read_toml, split_overrides
from seqlm.errors import ConfigError

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
SKIP = {"model": {"vocab_size"}}


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
        sections = split_overrides(preset(name), SECTIONS, skip=SKIP)
        DataConfig(**sections["data"])
        TrainConfig(**sections["train"])
        ModelConfig(vocab_size=28, **sections["model"])
    book = preset("d2l-scratch")
    assert (book["hidden_size"], book["lr"], book["epochs"], book["max_tokens"]) == \
        (512, 1.0, 500, 10000)
    with pytest.raises(ConfigError, match="d2l-scratch"):
        preset("nope")


def test_split_overrides_routes_and_type_checks():
    sections = split_overrides({"hidden_size": 8, "lr": 1, "vocab_size": 300}, SECTIONS,
                               skip=SKIP)
    assert sections["model"] == {"hidden_size": 8}
    assert sections["train"] == {"lr": 1.0} and isinstance(sections["train"]["lr"], float)
    assert sections["data"] == {"vocab_size": 300}
    with pytest.raises(ConfigError, match="unknown setting 'hiden_size'"):
        split_overrides({"hiden_size": 8}, SECTIONS, skip=SKIP)
    with pytest.raises(ConfigError, match="must be int"):
        split_overrides({"hidden_size": "big"}, SECTIONS, skip=SKIP)
    assert split_overrides({"embedding_dim": None}, SECTIONS, skip=SKIP)["model"] == \
        {"embedding_dim": None}


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
