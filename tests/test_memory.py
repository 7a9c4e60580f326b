"""The memory model of a build (ppgguf.build.memory) and the per-stage peaks a build reports (ppgguf.stages)."""

from __future__ import annotations

import numpy as np

from ppgguf.build.memory import PROMPT_AND_QUESTION_TOKENS, predicted_peak, training_activation_bytes
from ppgguf.export.writer import export_gguf
from ppgguf.inputs.base import LoadedBases
from ppgguf.inputs.shapes import model_shape
from ppgguf.pruning.surgery import parameter_count
from ppgguf.recipe import load_recipe, with_overrides
from ppgguf.stages import StageClock


def test_shape_from_headers_matches_the_loaded_model(tiny, tmp_path):
    """Read without loading: from a checkpoint's safetensors headers and from a GGUF's tensor table."""
    config = tiny.model.config
    gguf_path = tmp_path / "model.gguf"
    export_gguf(tiny.model, tiny.base.family, tiny.base.tokenizer_spec, gguf_path, "F32")
    for path in (tiny.dir, gguf_path):
        shape = model_shape(path)
        assert shape.parameters == parameter_count(tiny.model)
        assert (shape.vocab, shape.hidden, shape.layers) == (config.vocab_size, config.hidden_size, config.num_hidden_layers)
        assert shape.kv_width == config.num_key_value_heads * config.head_dim
        assert shape.source_bytes > 4 * shape.parameters * 0.99


def test_training_adds_optimizer_states_and_targets_only_when_the_build_trains(tiny_llama):
    shape = model_shape(tiny_llama.dir)
    default = load_recipe(None)
    dense = predicted_peak(shape, default)
    pruned = predicted_peak(shape, with_overrides(default, {"ffn_sparsity": 0.5}))
    top_k = predicted_peak(shape, with_overrides(default, {"ffn_sparsity": 0.5, "teacher_top_k": 8}))
    assert "train" not in dense and dense["total"] == max(v for k, v in dense.items() if k != "total")
    assert pruned["train"] >= dense["load"] + 12 * shape.parameters
    assert top_k["train"] < pruned["train"]  # 6k + 4 bytes a token instead of a vocabulary row
    assert predicted_peak(shape, with_overrides(default, {"bake": "mix", "bake_trains": "weights"}))["train"] > pruned["train"] - 1


def test_stage_peaks_see_what_each_stage_allocates():
    clock = StageClock(lambda _: None)
    clock.run("big", "", lambda: np.ones(64 * 2**20 // 8).sum())  # 64 MiB, touched
    clock.run("small", "", lambda: None)
    peaks = clock.memory()
    assert peaks["big"] >= peaks["small"] + 48 * 2**20
    assert peaks["total"] >= peaks["big"]


def test_the_last_build_of_many_takes_the_loaded_model_itself(tiny_llama, tmp_path):
    bases = LoadedBases(builds=2)
    first = bases.load(str(tiny_llama.dir), tmp_path)
    second = bases.load(str(tiny_llama.dir), tmp_path)
    assert first.model is not second.model  # the first build prunes its own copy
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first.model.parameters(), second.model.parameters()))
    assert not bases._loaded  # nothing kept once the last build has it


def test_adapters_hold_optimizer_states_for_their_own_parameters_only(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from ppgguf.build.memory import adapter_parameters
    from ppgguf.pruning.heal import ADAPTED_PROJECTIONS

    shape = model_shape(tiny_llama.dir)
    adapted = get_peft_model(tiny_llama.fresh(), LoraConfig(r=4, target_modules=ADAPTED_PROJECTIONS))
    assert adapter_parameters(shape, 4) == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    pruning = with_overrides(load_recipe(None), {"ffn_sparsity": 0.5})
    lora = with_overrides(pruning, {"adapter_rank": 4})
    saved = predicted_peak(shape, pruning)["train"] - predicted_peak(shape, lora)["train"]
    assert saved == 12 * shape.parameters - 16 * adapter_parameters(shape, 4) > 0


def test_training_without_the_embeddings_saves_their_optimizer_states(tiny_llama):
    shape = model_shape(tiny_llama.dir)
    pruning = with_overrides(load_recipe(None), {"ffn_sparsity": 0.5})
    frozen = with_overrides(pruning, {"train_embeddings": False})
    assert shape.embedding_parameters == 2 * shape.vocab * shape.hidden  # untied
    assert predicted_peak(shape, pruning)["train"] - predicted_peak(shape, frozen)["train"] == 12 * shape.embedding_parameters


def test_a_bake_of_the_vectors_holds_no_optimizer_state_for_the_weights(tiny_llama):
    shape = model_shape(tiny_llama.dir)
    weights = with_overrides(load_recipe(None), {"bake": "mix", "bake_trains": "weights"})
    vectors = with_overrides(weights, {"bake_trains": "vectors"})
    assert predicted_peak(shape, weights)["train"] - predicted_peak(shape, vectors)["train"] == 12 * shape.parameters


def test_a_bake_s_batch_is_padded_to_a_follow_up_with_its_earlier_answer(tiny_llama):
    # Measured on SmolLM2 (README "The character in the weights"): a default --bake build, each batch run one
    # system prompt at a time, peaked at 5.23 GiB; predicted 6.73 GiB (eight sequences of one prompt, padded).
    shape = model_shape(tiny_llama.dir)
    healing, baking = (training_activation_bytes(shape, 8, 64, earlier_answers=e) for e in (0, 1))
    rows, layers = 8 * (64 + PROMPT_AND_QUESTION_TOKENS // 4), shape.layers
    per_token = 4 * (16 * shape.hidden + 4 * shape.ffn + 2 * shape.heads * (PROMPT_AND_QUESTION_TOKENS + 64))
    longer = 4 * (16 * shape.hidden + 4 * shape.ffn + 2 * shape.heads * (PROMPT_AND_QUESTION_TOKENS + 128))
    assert baking - healing == ((rows + 8 * 64) * longer - rows * per_token) * layers
    recipe = with_overrides(load_recipe(None), {"ffn_sparsity": 0.5, "bake_trains": "vectors"})
    baked = with_overrides(recipe, {"bake": "mix"})
    assert predicted_peak(shape, baked)["train"] > predicted_peak(shape, recipe)["train"]
