"""One suite over every registered objective: the contract of objectives/base.py, on a tiny encoder."""

from __future__ import annotations

import atexit
import importlib
import inspect
import pkgutil
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import assert_grad_cache_matches_plain_step, make_tiny_encoder, needs_bert_token_ids, tiny_config
from transformers import BertForMaskedLM

import csekit.objectives
from csekit import CsekitError
from csekit.data.collate import pad_batch
from csekit.objectives import OBJECTIVES, WRAPPERS, Objective, ObjectiveWrapper, RunContext, build_objective
from csekit.objectives.options import option_parameters

TEXTS = ["a man plays the guitar .", "two dogs run .", "the market fell today .", "she slices an onion .",
         "kids play in the snow .", "a red car ."]  # fmt: skip


def saved_tiny_masked_lm() -> str:
    """A tiny random BERT masked LM saved for this test session (DiffCSE's generator)."""
    folder = Path(tempfile.mkdtemp(prefix="csekit-tiny-mlm-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with torch.random.fork_rng():  # collecting this module leaves the global RNG as it was
        torch.manual_seed(0)
        BertForMaskedLM(tiny_config()).save_pretrained(folder)
    return str(folder)


TINY_GENERATOR = saved_tiny_masked_lm()
#: Options an objective needs to run on the tiny encoder (e.g. a tiny generator), by registry name.
CONTRACT_OPTIONS: dict[str, dict] = {
    "diffcse": {"generator": TINY_GENERATOR},
    # a tiny masked LM's head (the tiny encoder's vocabulary and width), 2 decoder layers
    "denosent": {"prediction_head": TINY_GENERATOR, "decoder_layers": 2, "decoder_feedforward": 64},
    "denosent_pairs": {"prediction_head": TINY_GENERATOR, "decoder_layers": 2, "decoder_feedforward": 64},
    # substitution needs a WordNet database; tests/test_clear.py covers it with a fixture database
    "clear": {"augmentations": ["word_deletion", "reordering"]},
    "micse": {"min_layer": 0, "max_layer": 2},  # the tiny encoder has 2 layers
    "sgbert": {"projection_dim": 64},
    "whitenedcse": {"num_groups": 16},  # groups of 2 of the tiny encoder's 32 columns
    # the MLM head (DeCLUTR) and the prediction layer (DefSent) of a tiny saved masked LM
    "declutr": {"mlm_head": saved_tiny_masked_lm()},
    "defsent": {"prediction_layer": saved_tiny_masked_lm()},
    "clusterns": {"clusters": 4},  # k <= the batch (tests/test_clusterns.py runs the started clustering)
}
#: Gradient tolerance of the gradient-cache checks where the default's 1e-6 is below float32 rounding: batch
#: whitening centres every column, so a token shared by all rows (the [CLS] embedding) gets a gradient that is
#: the small remainder of terms cancelling over the batch, and summing them in another order moves it by ~1e-5
#: (in float64 the two paths agree to 1e-12: tests/test_whitenedcse.py).
GRAD_CACHE_ATOL: dict[str, float] = {"whitenedcse": 5e-5}
#: The tiny encoder's pooler, where an objective needs another than cls (by registry name).
CONTRACT_POOLERS: dict[str, str] = {"promptbert": "mask_denoised", "whitenedcse": "cls_before_pooler"}


#: A target per row of TEXTS for each target column: scores spread over [0, 1] (ties and both sides of
#: AnglE's positive threshold included), labels of every class.
TARGETS = {"score": torch.tensor([0.9, 0.1, 0.5, 0.5, 1.0, 0.0]), "label": torch.tensor([0, 1, 2, 2, 1, 0])}


def assert_trains_the_encoder(encoder) -> None:
    """Every trainable weight of the transformer blocks gets a gradient, and of the deep prefix where one is
    trained over a frozen backbone (PromCSE)."""
    trained = [p for p in encoder.backbone.encoder.parameters() if p.requires_grad]
    trained += list(encoder.prefix.parameters()) if encoder.prefix is not None else []
    assert trained and all(p.grad is not None for p in trained)


def batch_for(objective: Objective, encoder) -> dict:
    batch = {}
    for shift, column in enumerate(objective.columns):
        texts = TEXTS[shift:] + TEXTS[:shift]
        ids = encoder.tokenize(texts)
        batch[column] = pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], 0)
    if objective.targets:
        batch["targets"] = {column: TARGETS[column] for column in objective.targets}
    if objective.text_columns:  # a helper with a tokenizer of its own (a teacher) reads the raw text
        batch["text"] = {column: TEXTS[shift:] + TEXTS[:shift]
                         for shift, column in enumerate(objective.columns) if column in objective.text_columns}  # fmt: skip
    return batch


def test_registry_holds_every_objective_and_wrapper_defined_in_the_package():
    """An objective (or wrapper) class written in csekit/objectives/ but missing from its registry fails here."""
    defined = set()
    for module_info in pkgutil.iter_modules(csekit.objectives.__path__):
        module = importlib.import_module(f"csekit.objectives.{module_info.name}")
        defined |= {cls for cls in vars(module).values()
                    if inspect.isclass(cls) and issubclass(cls, Objective) and cls not in (Objective, ObjectiveWrapper)
                    and cls.__module__ == module.__name__}  # fmt: skip
    assert defined == set(OBJECTIVES.values()) | set(WRAPPERS.values())
    with pytest.raises(Exception, match="unknown objective"):
        build_objective("nope", make_tiny_encoder())


def test_unknown_objective_options_are_errors_and_run_keys_never_reach_the_objective():
    encoder = make_tiny_encoder()
    objective = build_objective("simcse", encoder, options={"temperature": 0.1})
    assert objective.temperature == 0.1
    with pytest.raises(CsekitError, match="has no option"):
        build_objective("simcse", encoder, options={"dup_rate": 0.3})
    # Options of one method are errors for another (SimCSE's hard-negative weight is no ESimCSE option),
    # and the run's own keys are not options at all: they come as the context.
    for name, option in [("esimcse", "hard_negative_weight"), ("simcse", "batch_size"), ("clear", "max_length"),
                         ("simcse", "model"), ("simcse", "mlm_weight")]:  # fmt: skip
        with pytest.raises(CsekitError, match=f"objective {name!r} has no option.*{option}"):
            build_objective(name, encoder, options={option: 1})
    with pytest.raises(CsekitError, match="temperature must be float"):
        build_objective("simcse", encoder, options={"temperature": "warm"})


@pytest.mark.parametrize("cls", [*OBJECTIVES.values(), *WRAPPERS.values()], ids=lambda cls: cls.__name__)
def test_every_option_is_keyword_only_with_a_default_and_an_annotation(cls):
    for name, parameter in option_parameters(cls).items():
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, f"{cls.__name__}: {name} must be keyword-only"
        assert parameter.default is not inspect.Parameter.empty, f"{cls.__name__}: {name} needs a default"
        assert parameter.annotation is not inspect.Parameter.empty, f"{cls.__name__}: {name} needs a type"


def test_each_objective_owns_its_defaults():
    """ConSERT's temperature is its own 0.1, not a recipe-wide 0.05."""
    assert build_objective("consert", make_tiny_encoder()).temperature == 0.1
    assert build_objective("simcse", make_tiny_encoder()).temperature == 0.05


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_returns_finite_named_terms_that_train_the_encoder(name):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"), hidden_dropout_prob=0.1).train()
    objective = build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name)).train()
    batch = batch_for(objective, encoder)
    terms = objective(encoder, batch)
    assert terms and all(value.ndim == 0 and torch.isfinite(value) for value in terms.values())
    sum(terms.values()).backward()
    assert_trains_the_encoder(encoder)
    embeddings = objective.embed(encoder, batch)
    assert all(value.shape[0] == len(TEXTS) for value in embeddings.values())  # rows follow the batch
    # The declared sentence embeddings are the trained encoder's (B, H) rows, with a graph.
    assert objective.sentence_keys and set(objective.sentence_keys) <= set(embeddings)
    for key in objective.sentence_keys:
        assert embeddings[key].shape == (len(TEXTS), encoder.embedding_dim) and embeddings[key].requires_grad, key
    assert set(objective.views) <= set(objective.columns)
    # The loss is pure: calling it twice (same random draws, e.g. DCLR's noise) changes nothing.
    terms = []
    for _ in range(2):
        torch.manual_seed(0)
        terms.append({name: value.item() for name, value in objective.loss(embeddings, batch).items()})
    assert terms[0] == terms[1]


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_gradient_cache_equals_the_plain_step_for_every_objective(name):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"), hidden_dropout_prob=0.1).train()
    objective = build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name)).train()
    if not objective.supports_grad_cache:
        pytest.skip(f"{name} declares no gradient-cache support")
    assert_grad_cache_matches_plain_step(objective, encoder, batch_for(objective, encoder),
                                         atol=GRAD_CACHE_ATOL.get(name))  # fmt: skip


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_the_mlm_wrapper_composes_with_every_objective_and_the_gradient_cache(name):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"), hidden_dropout_prob=0.1).train()
    context = RunContext(model=TINY_MLM, max_length=encoder.max_length)
    objective = build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name), context=context,
                                wrappers={"mlm": {"weight": 0.1}}).train()  # fmt: skip
    assert (objective.columns, objective.views, objective.sentence_keys) == (
        objective.inner.columns, objective.inner.views, objective.inner.sentence_keys)
    batch = batch_for(objective, encoder)
    terms = objective(encoder, batch)
    assert "mlm" in terms and set(terms) - {"mlm"} == set(objective.inner(encoder, batch))
    if objective.supports_grad_cache:
        if name == "promptbert":  # the [MASK] row's gradient sums the template's and the MLM's masks
            needs_bert_token_ids("this gradient's float32 tolerance was set on")
        assert_grad_cache_matches_plain_step(objective, encoder, batch, atol=GRAD_CACHE_ATOL.get(name))


#: The wrappers that train prefixes (and shallower layers) on the tiny 2-layer, 32-wide encoder, every width and
#: layer each step.
PREFIX_WRAPPERS = {
    "matryoshka": {"dims": [32, 16, 8]},
    "matryoshka2d": {"dims": [32, 16, 8], "layers_per_step": 0, "dims_per_step": 0},
    "starbucks": {"pairs": [[1, 16], [2, 32], [2, 8]]},
}


@pytest.mark.parametrize("wrapper", sorted(PREFIX_WRAPPERS))
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_the_prefix_wrappers_compose_with_every_objective_and_the_gradient_cache(name, wrapper):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"), hidden_dropout_prob=0.1).train()
    build = {"options": CONTRACT_OPTIONS.get(name), "wrappers": {wrapper: PREFIX_WRAPPERS[wrapper]}}
    if not OBJECTIVES[name].truncatable:  # its loss reads the full width: refused in one line
        with pytest.raises(CsekitError, match="needs the full embedding width"):
            build_objective(name, encoder, **build)
        return
    objective = build_objective(name, encoder, **build).train()
    assert (objective.columns, objective.views, objective.sentence_keys) == (
        objective.inner.columns, objective.inner.views, objective.inner.sentence_keys)
    batch = batch_for(objective, encoder)
    terms = objective(encoder, batch)
    inner_terms = set(objective.inner(encoder, batch))
    assert terms and all(value.ndim == 0 and torch.isfinite(value) for value in terms.values())
    names = {term.split("@")[0] for term in terms}
    assert inner_terms <= names and names - inner_terms <= {"kl"}  # every inner term at each size, the layer KL
    sum(terms.values()).backward()
    assert_trains_the_encoder(encoder)
    embeddings = objective.embed(encoder, batch)
    assert all(value.shape[0] == len(TEXTS) for value in embeddings.values())  # rows follow the batch
    if objective.supports_grad_cache:
        encoder.zero_grad()
        assert_grad_cache_matches_plain_step(objective, encoder, batch)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_frozen_helpers_stay_frozen_and_out_of_the_checkpoint_state(name):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"), hidden_dropout_prob=0.1)
    objective = build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name)).train()
    state = objective.trainable_state_dict()
    for prefix, helper in objective.helpers():
        assert not helper.training and not any(p.requires_grad for p in helper.parameters())
        assert not any(key.startswith(prefix + ".") for key in state)
    objective.load_trainable_state_dict(state)  # what a resume does


TINY_MLM = TINY_GENERATOR
