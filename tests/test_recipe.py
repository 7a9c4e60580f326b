"""Typed recipe settings: every knob's name, type and value is checked when the recipe loads."""

from __future__ import annotations

import dataclasses

import pytest

from ppgguf.errors import UserError
from ppgguf.recipe import Recipe, load_recipe, with_overrides

# The flat knob names of Recipe.to_json, in order: run directories and reports are keyed by it.
FLAT_KEYS = [
    "base", "method", "ffn_sparsity", "head_sparsity", "uniform", "quant", "seed", "generic_sequences",
    "sequence_length", "candidate_questions", "reference_personas", "selected_questions", "answer_tokens",
    "teacher_temperature", "teacher", "steps", "batch_size", "lr", "loss", "heal", "heal_steps", "heal_lr",
    "validation_prompts", "imatrix", "target_size_mib", "teacher_top_k", "bake", "bake_steps", "bake_lr",
    "train_embeddings", "embedding_quant", "adapter_rank", "bake_trains",
    "bake_prompt_words",  # new knobs go last: the keys before them hash as they always did
]


def test_sections_hold_the_toml_tables_and_to_json_stays_flat():
    recipe = load_recipe()
    assert isinstance(recipe, Recipe)
    assert list(recipe.to_json()) == FLAT_KEYS
    assert recipe.base.model == recipe.to_json()["base"]
    assert recipe.validate.prompts == recipe.to_json()["validation_prompts"]
    assert recipe.train.loss in ("kl", "ce") and recipe.export.quant == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.prune.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("toml, expected", [
    ('[train]\nloss = "kll"\n', "recipe bad.toml: unknown loss 'kll'"),
    ('[prune]\nmethod = "persnoa"\n', "recipe bad.toml: unknown method 'persnoa'; choose one of: persona"),
    ('[export]\nquant = "Q9_K"\n', "recipe bad.toml: unknown quant type 'Q9_K'"),
    ("[prune]\nffn_sparsity = 1.5\n", "recipe bad.toml: ffn_sparsity must be in [0, 1), got 1.5"),
    ("[prune]\nhead_sparsity = -0.1\n", "recipe bad.toml: head_sparsity must be in [0, 1), got -0.1"),
    ("[export]\ntarget_size_mib = -5\n", "recipe bad.toml: target_size_mib must be a size in MiB (0 for none), got -5"),
    ('[train]\nsteps = "7"\n', "recipe bad.toml: 'steps' must be int, got '7'"),
    ("[train]\nstep = 7\n", "recipe bad.toml: unknown key 'step' in [train]"),
    ("[trian]\nsteps = 7\n", "recipe bad.toml: unknown section [trian]"),
    ('[export]\nimatrix = "mine"\n', "recipe bad.toml: unknown imatrix 'mine'; use one of: none, persona, generic"),
    ('[export]\nquant = "IQ2_XXS"\nimatrix = "none"\n', "recipe bad.toml: IQ2_XXS needs an importance matrix"),
    ('[train]\nbake = "yes"\n', "recipe bad.toml: unknown bake mode 'yes'; use one of: off, name, mix"),
    ('[export]\nembedding_quant = "Q3"\n', "recipe bad.toml: unknown embedding quant type 'Q3'; choose one of: F16"),
])
def test_a_bad_knob_fails_when_the_recipe_loads(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        load_recipe(str(path))
    message = str(exc.value)
    assert message.startswith(expected) and "\n" not in message, message


@pytest.mark.parametrize("overrides, expected", [
    ({"ffn_sparsity": 1.0}, "--ffn-sparsity must be in [0, 1), got 1.0"),
    ({"head_sparsity": 1}, "--head-sparsity must be in [0, 1), got 1.0"),
    ({"method": "oracle"}, "unknown method 'oracle'"),
    ({"quant": "Q3_XYZ"}, "unknown quant type 'Q3_XYZ'"),
    ({"seed": 1.5}, "option: 'seed' must be int, got 1.5"),
    ({"sparsity": 0.5}, "option: unknown recipe key 'sparsity'"),
])
def test_a_bad_override_fails_with_one_line(overrides, expected):
    with pytest.raises(UserError) as exc:
        with_overrides(load_recipe(), overrides)
    assert str(exc.value).startswith(expected) and "\n" not in str(exc.value), str(exc.value)


def test_overrides_change_only_their_knobs_and_normalise_the_quant_type(tmp_path):
    recipe = load_recipe()
    changed = with_overrides(recipe, {"quant": "q4_k_m", "ffn_sparsity": 0.5, "heal": False, "base": "x", "seed": None})
    assert changed.export.quant == "Q4_K_M" and changed.prune.ffn_sparsity == 0.5 and changed.base.model == "x"
    assert changed.to_json() == {**recipe.to_json(), "quant": "Q4_K_M", "ffn_sparsity": 0.5, "heal": False, "base": "x"}
    mine = tmp_path / "mine.toml"
    mine.write_text('[export]\nquant = "q6_k"\n[prune]\nffn_sparsity = 0\n', encoding="utf-8")
    loaded = load_recipe(str(mine))
    assert loaded.export.quant == "Q6_K" and loaded.prune.ffn_sparsity == 0.0
    assert isinstance(loaded.prune.ffn_sparsity, float)  # TOML's 0 is a float knob's 0.0


def test_the_scorers_are_the_methods_the_recipe_declares():
    from ppgguf.pruning.importance import SCORERS
    from ppgguf.recipe import KNOBS

    assert tuple(SCORERS) == KNOBS["method"].choices


def test_each_knob_says_which_run_key_it_enters_and_what_chooses_it():
    from ppgguf.recipe import CHOSEN_BY_AUTO, CHOSEN_BY_TARGET, FILE, KNOBS, PLAN, WEIGHTS

    recipe = load_recipe()
    assert set(recipe.knobs(WEIGHTS)) == {"heal", "heal_steps", "heal_lr", "bake", "bake_steps", "bake_lr", "bake_trains",
                                          "bake_prompt_words", "train_embeddings", "adapter_rank"}
    assert set(recipe.knobs(FILE)) == {"quant", "imatrix", "embedding_quant", "target_size_mib", "validation_prompts"}
    assert {**recipe.knobs(PLAN), **recipe.knobs(WEIGHTS), **recipe.knobs(FILE)} == recipe.to_json()
    assert set(CHOSEN_BY_TARGET) == {"ffn_sparsity", "head_sparsity", "quant", "imatrix", "embedding_quant", "uniform"}
    assert CHOSEN_BY_AUTO == ("imatrix", "embedding_quant")
    assert {flat: knob.choices for flat, knob in KNOBS.items() if knob.choices} == {
        "method": ("persona", "wanda-sp", "magnitude", "random"), "loss": ("kl", "ce"),
        "imatrix": ("none", "persona", "generic"), "bake": ("off", "name", "mix"), "bake_trains": ("vectors", "weights")}
    assert recipe.train.bakes is False and with_overrides(recipe, {"bake": "name"}).train.bakes is True
