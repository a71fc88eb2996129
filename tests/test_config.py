"""Configs: recipes load, overrides apply, and every mistake is one clear ScratchLMError."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchlm.config import RunConfig, load_config
from scratchlm.core.config_files import read_toml
from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import model_preset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe: Path) -> None:
    config = load_config(recipe)
    finetune = read_toml(recipe).get("finetune")
    if finetune is None:
        assert config.name == recipe.stem
    else:
        # A recipe that pretrains and fine-tunes: its fine-tuned run bears its name, and its
        # base is the run it pretrains.
        from scratchlm.finetune.config import read_recipe

        run = read_recipe(recipe)
        run.validate()
        assert run.name == recipe.stem and run.base == str(Path("runs") / config.name)


def test_overrides_are_typed() -> None:
    config = load_config(
        None,
        [
            "--train.max_steps", "7",
            "--train.learning_rate=3e-4",
            "--model.bias", "false",
            "--model.pos_encoding", "rope",
            "--data.sources", "pydocs,shakespeare",
            "--name", "x",
        ],
    )  # fmt: skip
    assert config.train.max_steps == 7
    assert config.train.learning_rate == 3e-4
    assert config.model.bias is False
    assert config.model.pos_encoding == "rope"
    assert config.data.sources == ["pydocs", "shakespeare"]
    assert config.name == "x"


def test_toml_round_trip(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "demo.toml", ["--train.max_steps", "3"])
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[model]\nn_layers = 2\n",
            r"unknown key model\.n_layers \(did you mean model\.n_layer\?\)",
        ),
        ("[modle]\n", "unknown key modle"),
        ("[model]\nn_layer = 'two'\n", "model.n_layer must be a whole number"),
        ("[model]\npos_encoding = 'alibi'\n", "choose one of 'learned', 'sinusoidal', 'rope'"),
        ("[model]\nn_embd = 100\nn_head = 3\n", "divisible by model.n_head"),
        ("[tokenizer]\nvocab_size = 200\n", "at least 256 byte tokens"),
        ("[train]\nbatch_size = 0\n", "train.batch_size must be at least 1"),
        ("[train]\nmin_lr = 1.0\n", "train.min_lr"),
        ("[model\n", "not valid TOML"),
        ("model = 3\n", r"\[model\] must be a table"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ScratchLMError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.max_steps", "many"], "takes a number"),
        (["--model.bias", "maybe"], "true or false"),
        (["--train.max_steps"], "needs a value"),
        (["--trian.max_steps", "3"], "unknown option"),
        (["max_steps"], "unexpected argument"),
    ],
)
def test_bad_override_is_one_clear_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ScratchLMError, match=message):
        load_config(None, overrides)


def test_missing_config_file() -> None:
    with pytest.raises(ScratchLMError, match="config file not found"):
        load_config("no/such.toml")


def test_presets() -> None:
    assert model_preset("gpt2-124m").n_layer == 12
    with pytest.raises(ScratchLMError, match="gpt2-124m"):
        model_preset("gpt5")
    # The defaults are GPT-2 124M; the preset only adds its name.
    assert RunConfig().model == model_preset("gpt2-124m", preset="")


def test_clean_section_has_every_cleaning_threshold_with_its_default() -> None:
    # One definition of the thresholds: [clean] offers each of data.clean's CleanConfig fields
    # under the same name, and its defaults give CleanConfig's defaults.
    import dataclasses

    from scratchlm.data.clean import CleanConfig
    from scratchlm.data.config import CleaningConfig

    section = {f.name for f in dataclasses.fields(CleaningConfig)}
    assert {f.name for f in dataclasses.fields(CleanConfig)} <= section
    assert CleaningConfig().clean_config() == CleanConfig()
