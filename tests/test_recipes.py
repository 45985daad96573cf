"""Every shipped recipe parses, names a registered objective and pooler, and follows the naming rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from csekit.errors import CsekitError
from csekit.models import POOLERS
from csekit.objectives import OBJECTIVES
from csekit.training.config import TrainConfig

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_is_named_after_its_method(recipe):
    config = TrainConfig.from_yaml(recipe)
    assert config.objective in OBJECTIVES
    assert config.pooler in POOLERS
    assert config.model and config.train_files and config.output_dir
    method = config.objective.replace("_", "-")
    assert recipe.stem.startswith(method + "-"), f"{recipe.name} should be named {method}-<model>.yaml"
    rest = recipe.stem[len(method) + 1 :]
    assert rest == "cpu" or rest.replace("-", "").isalnum()
    if rest == "cpu":  # the small recipes run on the shared assets
        assert config.model.startswith("../shared/")


def test_help_keys_documents_every_field():
    text = TrainConfig.describe()
    for line in text.splitlines():
        assert len(line.split(None, 2)) == 3, f"undocumented key: {line}"


def test_overrides_accept_the_ways_users_write_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntrain_files: a.txt\nlearning_rate: 3e-5\n", encoding="utf-8")
    config = TrainConfig.from_yaml(recipe, ["batch_size=16", "temperature=0.1", "max_steps=null"])
    assert config.learning_rate == 3e-5 and config.batch_size == 16 and config.temperature == 0.1
    assert config.max_steps is None and config.train_files == ["a.txt"]


def test_objective_options_come_from_the_recipe_and_dotted_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntrain_files: a.txt\noptions: {dup_rate: 0.32, queue_size: 64}\n", encoding="utf-8")
    config = TrainConfig.from_yaml(recipe, ["options.dup_rate=0.2", "options.momentum=0.995"])
    assert config.options == {"dup_rate": 0.2, "queue_size": 64, "momentum": 0.995}
    recipe.write_text("model: m\noptions: [1, 2]\n", encoding="utf-8")
    with pytest.raises(CsekitError, match="options must be a mapping"):
        TrainConfig.from_yaml(recipe)
