"""Every shipped recipe parses, names a registered objective and pooler, and follows the naming rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from csekit.errors import CsekitError
from csekit.models import POOLERS
from csekit.objectives import OBJECTIVES, WRAPPERS
from csekit.objectives.options import check_options
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
    # A recipe of a Matryoshka-family wrapper is named after the wrapper (matryoshka-cpu.yaml over cosent).
    named = [name for name in ("matryoshka", "matryoshka2d", "starbucks") if name in config.wrappers]
    method = named[0] if named else config.objective.replace("_", "-")
    if config.lora is not None:  # a decoder's LoRA fine-tuning is named after its prompt (prompteol-lora-opt-2.7b.yaml)
        method = f"{config.pooler.replace('_', '-')}-lora"
    assert recipe.stem.startswith(method + "-"), f"{recipe.name} should be named {method}-<model>.yaml"
    rest = recipe.stem[len(method) + 1 :]
    assert rest == "cpu" or rest.replace("-", "").replace(".", "").isalnum()
    if rest == "cpu":  # the small recipes run on the shared assets
        assert config.model.startswith("../shared/")


def test_help_keys_documents_every_field():
    text = TrainConfig.describe()
    for line in text.splitlines():
        assert len(line.split(None, 2)) == 3, f"undocumented key: {line}"


def test_overrides_accept_the_ways_users_write_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntrain_files: a.txt\nlearning_rate: 3e-5\n", encoding="utf-8")
    config = TrainConfig.from_yaml(recipe, ["batch_size=16", "options.temperature=0.1", "max_steps=null"])
    assert config.learning_rate == 3e-5 and config.batch_size == 16 and config.options["temperature"] == 0.1
    assert config.max_steps is None and config.train_files == ["a.txt"]


def test_objective_options_come_from_the_recipe_and_dotted_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nobjective: esimcse\ntrain_files: a.txt\noptions: {dup_rate: 0.32, queue_ratio: 2}\n",
                      encoding="utf-8")  # fmt: skip
    config = TrainConfig.from_yaml(recipe, ["options.dup_rate=0.2", "options.momentum=0.995"])
    assert config.options == {"dup_rate": 0.2, "queue_ratio": 2, "momentum": 0.995}
    recipe.write_text("model: m\noptions: [1, 2]\n", encoding="utf-8")
    with pytest.raises(CsekitError, match="options must be a mapping"):
        TrainConfig.from_yaml(recipe)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_binds_its_options_to_the_objective_without_loading_a_model(recipe):
    config = TrainConfig.from_yaml(recipe)  # validate() binds the options and each wrapper's
    bound = check_options(OBJECTIVES[config.objective], config.options, owner=config.objective)
    assert bound.keys() == config.options.keys()
    for wrapper, settings in config.wrappers.items():
        assert check_options(WRAPPERS[wrapper], settings, owner=wrapper).keys() == settings.keys()


@pytest.mark.parametrize(("override", "message"), [
    # a key that is also a parameter name of the objective's constructor used to crash with a TypeError
    ("options.temperature=0.1", None),
    ("options.max_length=8", "objective 'simcse' has no option(s) max_length"),
    ("options.batch_size=8", "objective 'simcse' has no option(s) batch_size"),
    # an option the objective does not take used to be dropped without a word
    ("options.hard_negative_weight=1.0", "objective 'simcse' has no option(s) hard_negative_weight"),
    ("options.mlm_weight=0.1", "objective 'simcse' has no option(s) mlm_weight"),
    ("options.temperature=warm", "option temperature must be float, got 'warm'"),
    ("pooler=avg", "unknown pooler 'avg'; choose one of cls"),
    ("objective=simsce", "unknown objective 'simsce'"),
    ("wrappers.mlm.weight=0.1", None),
    ("wrappers.mlm.wieght=0.1", "wrapper 'mlm' has no option(s) wieght"),
    ("wrappers.matryoshk.dims=[8]", "unknown wrapper 'matryoshk'"),
    ("wrappers.matryoshka.dims=half", "wrapper 'matryoshka': option dims must be int"),
    ("precision=fp16", "precision must be one of auto, fp32, bf16"),
    ("head_init=random", "head_init must be one of fresh, pretrained"),
    ("eval_tasks=stsbb", "unknown task 'stsbb'"),
    ("eval_metric=transfer/avg", "eval_metric 'transfer/avg' is not a metric of eval_tasks 'stsb'"),
    # keys of earlier recipes say where they went
    ("temperature=0.1", "temperature moved to options.temperature"),
    ("mlm_weight=0.1", "mlm_weight moved to wrappers.mlm.weight"),
    ("hard_negative_weight=1", "hard_negative_weight moved to options.hard_negative_weight"),
])  # fmt: skip
def test_recipe_mistakes_are_caught_when_the_config_is_built(override, message):
    recipe = RECIPES[0].parent / "simcse-cpu.yaml"
    if message is None:
        TrainConfig.from_yaml(recipe, [override])
        return
    with pytest.raises(CsekitError) as caught:
        TrainConfig.from_yaml(recipe, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_selection_metric_defaults_to_the_first_familys_headline():
    assert TrainConfig.from_dict({"eval_tasks": "stsb,sickr"}).eval_metric == "sts/avg"
    assert TrainConfig.from_dict({"eval_tasks": "align_uniform,stsb"}).eval_metric == "sts/avg"  # sts prints first
    assert TrainConfig.from_dict({"eval_tasks": "align_uniform"}).eval_metric == "align_uniform/uniform"
