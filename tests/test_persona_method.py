"""Persona-Pruner pieces on tiny models: question selection, the STE mask, determinism."""

from __future__ import annotations

import torch

from ppgguf.calibration.answers import answer_sequences
from ppgguf.calibration.questions import divergence_scores, last_token_states, middle_band
from ppgguf.pruning.importance import SCORERS, ScoringInputs
from ppgguf.pruning.importance.persona import standardised_log, ste_top_k
from ppgguf.pruning.plan import kept_ffn_width, make_plan

from tiny_models import tiny_recipe

PERSONA = "You are Grimbold, a dwarven smith. You speak only of iron, fire and hammers, always, in every answer."
NEUTRAL = "You are a helpful assistant."


def test_divergence_is_zero_for_identical_states_and_grows_with_difference():
    states = torch.nn.functional.normalize(torch.randn(3, 2, 8), dim=-1)
    refs = torch.stack([states.clone(), states.clone()])
    assert torch.allclose(divergence_scores(states, refs), torch.zeros(3), atol=1e-6)
    moved = refs.clone()
    moved[:, 1] = -moved[:, 1]  # the persona flips question 1's representation
    scores = divergence_scores(states, moved)
    assert scores[1] > 1.5 and scores[0] < 1e-6 and scores[2] < 1e-6


def test_prefix_cached_states_equal_plain_forward(tiny_llama, chat_tokenizer):
    model = tiny_llama.model
    questions = ["Hi!", "What is the weather like in the mountains today?"]
    layers = middle_band(model.config.num_hidden_layers)
    states = last_token_states(model, chat_tokenizer, PERSONA, questions, layers)
    for i, q in enumerate(questions):
        ids = chat_tokenizer.chat_ids([{"role": "system", "content": PERSONA}, {"role": "user", "content": q}], True)
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            expected = torch.nn.functional.normalize(hidden[layer][0, -1], dim=-1)
            assert torch.allclose(states[i, j], expected, atol=1e-4)


def test_selection_prefers_questions_the_persona_changes(tiny_llama, chat_tokenizer):
    """A one-word question is dominated by the system prompt; a long one drowns it out."""
    model = tiny_llama.model
    short = "Hi"
    long = "Please " + " ".join(["list the numbers and letters in this long and very neutral sentence"] * 6)
    layers = middle_band(model.config.num_hidden_layers)
    mine = last_token_states(model, chat_tokenizer, PERSONA, [short, long], layers)
    refs = last_token_states(model, chat_tokenizer, NEUTRAL, [short, long], layers)[None]
    scores = divergence_scores(mine, refs)
    assert scores[0] > scores[1]


def test_ste_mask_keeps_exactly_k_and_passes_gradients():
    scores = torch.randn(256, requires_grad=True)
    mask = ste_top_k(scores, 96)
    assert int(mask.detach().sum()) == 96
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    (mask * torch.arange(256.0)).sum().backward()
    assert torch.allclose(scores.grad, torch.arange(256.0))  # straight through: d mask / d score = 1


def _persona_inputs(tiny, chat_tokenizer, seed=0, **settings):
    examples = [
        {"question": "Tell me about your forge.", "answer": "Iron and fire, lad. Hammers sing all day."},
        {"question": "What do you eat?", "answer": "Bread baked on the forge stones, and strong ale."},
        {"question": "Do you like the sea?", "answer": "Salt rusts good iron. I stay under the mountain."},
    ]
    sequences = answer_sequences(chat_tokenizer, PERSONA, examples)
    return ScoringInputs(
        model=tiny.fresh(), persona_sequences=sequences, ffn_sparsity=0.5, head_sparsity=0.5, seed=seed,
        settings={"steps": 4, "batch_size": 2, "lr": 0.05, **settings},
    )


def test_persona_scorer_learns_masks_of_the_planned_size(tiny_llama, chat_tokenizer):
    inputs = _persona_inputs(tiny_llama, chat_tokenizer)
    dense_state = {k: v.clone() for k, v in inputs.model.state_dict().items()}
    importance = SCORERS["persona"](inputs)
    history = inputs.log["loss_history"]
    assert len(history) == 4 and all(h > 0 for h in history)
    # frozen base weights
    for key, value in inputs.model.state_dict().items():
        assert torch.equal(value, dense_state[key]), key
    plan = make_plan(importance, 0.5, 0.5)
    width = tiny_llama.model.config.intermediate_size
    assert plan.ffn_widths == [kept_ffn_width(width, 0.5)] * len(plan.ffn_widths)
    assert plan.kv_groups == [1] * len(plan.kv_groups)
    # The scores start from the standardised log of wanda-sp on the same sequences (what zero steps
    # return), and training moved them away from it.
    start = SCORERS["persona"](_persona_inputs(tiny_llama, chat_tokenizer, steps=0))
    wanda = SCORERS["wanda-sp"](ScoringInputs(model=inputs.model, calibration=[s for s, _ in inputs.persona_sequences]))
    for begin, scores in zip(start.ffn + start.heads, wanda.ffn + wanda.heads):
        torch.testing.assert_close(begin, standardised_log(scores), atol=1e-4, rtol=0)
    moved = [float((a - b).abs().max()) for a, b in zip(importance.ffn + importance.heads, start.ffn + start.heads)]
    assert min(moved) > 1e-2, moved


def test_persona_scorer_is_deterministic_and_seed_dependent(tiny_llama, chat_tokenizer):
    first = SCORERS["persona"](_persona_inputs(tiny_llama, chat_tokenizer, seed=3))
    again = SCORERS["persona"](_persona_inputs(tiny_llama, chat_tokenizer, seed=3))
    other = SCORERS["persona"](_persona_inputs(tiny_llama, chat_tokenizer, seed=4))
    assert all(torch.equal(a, b) for a, b in zip(first.ffn, again.ffn))
    assert any(not torch.equal(a, b) for a, b in zip(first.ffn, other.ffn))


def test_cross_entropy_loss_variant_runs(tiny_llama, chat_tokenizer):
    inputs = _persona_inputs(tiny_llama, chat_tokenizer, loss="ce")
    SCORERS["persona"](inputs)
    assert len(inputs.log["loss_history"]) == 4
    assert inputs.dense_answer_logprobs is None  # no dense teacher with cross-entropy


def test_kl_scorer_hands_on_the_dense_distributions_healing_needs(tiny_llama, chat_tokenizer):
    from ppgguf.calibration.batches import answer_distributions

    inputs = _persona_inputs(tiny_llama, chat_tokenizer)
    SCORERS["persona"](inputs)
    expected = answer_distributions(inputs.model, inputs.persona_sequences, "cpu")
    assert len(inputs.dense_answer_logprobs) == len(expected)
    for got, want in zip(inputs.dense_answer_logprobs, expected):
        assert got.dtype == torch.float16 and got.shape == want.shape
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=0)


HEAL_RECIPE = tiny_recipe("persona", "F16", batch_size=2, heal=True, heal_steps=6, heal_lr=0.001)


def test_heal_trains_the_kept_weights_and_lowers_the_loss(tiny_llama, tmp_path):
    from ppgguf.build.pipeline import BuildOptions, build
    from ppgguf.stages import StepMessage

    recipe = tmp_path / "heal.toml"
    recipe.write_text(HEAL_RECIPE)
    character = tmp_path / "grimbold.txt"
    character.write_text("Name: Grimbold\n" + PERSONA + "\n")
    options = BuildOptions(character=character, out=tmp_path / "healed.gguf", recipe=str(recipe),
                           overrides={"base": str(tiny_llama.dir)}, device="cpu")
    messages = []
    healed = build(options, progress=messages.append).report
    assert "Dense answer distributions for healing" not in messages  # reused from mask learning
    history = healed["scoring"]["heal_loss_history"]
    assert len(history) == 6 and history[-1] < history[0]
    # each training step is a StepMessage (a display overwrites them); stage lines are plain strings
    steps = [m for m in messages if isinstance(m, StepMessage)]
    assert [m.split(":")[0] for m in steps] == ["Learning masks"] * 2 + ["Healing"] * 6
    assert not any(isinstance(m, StepMessage) for m in messages if "step" not in m)
    assert healed["validation"]["top1"] >= 0.99  # the gate compares against the healed weights
    # a rerun reuses the healed weights and writes the same file
    again = build(BuildOptions(character=character, out=tmp_path / "again.gguf", recipe=str(recipe),
                               overrides={"base": str(tiny_llama.dir)}, device="cpu"))
    assert (tmp_path / "again.gguf").read_bytes() == (tmp_path / "healed.gguf").read_bytes()
    assert again.report["scoring"]["heal_loss_history"] == history


def test_top_k_targets_learn_masks_and_heal_with_a_fraction_of_the_memory(tiny_llama, chat_tokenizer, tmp_path):
    from ppgguf.build.pipeline import BuildOptions, build
    from ppgguf.calibration.distill import TopK

    whole, sparse = _persona_inputs(tiny_llama, chat_tokenizer), _persona_inputs(tiny_llama, chat_tokenizer, teacher_top_k=8)
    SCORERS["persona"](whole)
    SCORERS["persona"](sparse)
    assert all(isinstance(t, TopK) and t.indices.shape[-1] == 8 for t in sparse.dense_answer_logprobs)
    assert sum(t.nbytes() for t in sparse.dense_answer_logprobs) * 4 < sum(
        t.numel() * t.element_size() for t in whole.dense_answer_logprobs)
    # KL over 9 outcomes (top 8 + rest) never exceeds the whole KL: merging outcomes loses divergence
    assert all(0 < s <= w + 1e-3 for s, w in zip(sparse.log["loss_history"][:1], whole.log["loss_history"][:1]))

    recipe = tmp_path / "heal.toml"
    recipe.write_text(HEAL_RECIPE.replace("[train]\n", "[train]\nteacher_top_k = 8\n"))
    character = tmp_path / "grimbold.txt"
    character.write_text("Name: Grimbold\n" + PERSONA + "\n")
    report = build(BuildOptions(character=character, out=tmp_path / "k.gguf", recipe=str(recipe),
                                overrides={"base": str(tiny_llama.dir)}, device="cpu")).report
    history = report["scoring"]["heal_loss_history"]
    assert report["recipe"]["teacher_top_k"] == 8 and len(history) == 6 and history[-1] < history[0]


def test_heal_without_the_embeddings_trains_the_layers_only(tiny_llama, chat_tokenizer):
    from ppgguf.calibration.batches import answer_distributions
    from ppgguf.pruning.heal import heal

    sequences = _persona_inputs(tiny_llama, chat_tokenizer).persona_sequences
    teacher = answer_distributions(tiny_llama.model, sequences, "cpu")
    model = tiny_llama.fresh()
    with torch.no_grad():  # the student moved away from the teacher, so there is something to heal
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = heal(model, sequences, teacher, steps=4, batch_size=2, lr=1e-3, seed=0, device="cpu",
                   train_embeddings=False)
    after = model.state_dict()
    assert history[-1] < history[0]
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert torch.equal(after["lm_head.weight"], before["lm_head.weight"])
    assert not torch.equal(after["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"])
    assert all(not p.requires_grad for p in model.parameters())  # left as it was found


def test_heal_with_adapters_trains_low_rank_updates_merged_into_the_same_model(tiny_llama, chat_tokenizer):
    from ppgguf.calibration.batches import answer_distributions
    from ppgguf.pruning.heal import heal

    sequences = _persona_inputs(tiny_llama, chat_tokenizer).persona_sequences
    teacher = answer_distributions(tiny_llama.model, sequences, "cpu")
    model = tiny_llama.fresh()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = heal(model, sequences, teacher, steps=4, batch_size=2, lr=1e-2, seed=0, device="cpu", adapter_rank=2)
    after = model.state_dict()
    assert history[-1] < history[0]
    assert list(after) == list(before) and type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear  # merged
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        delta = after[f"model.layers.0.{name}.weight"] - before[f"model.layers.0.{name}.weight"]
        assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= 2  # a rank-2 update
    assert all(not p.requires_grad for p in model.parameters())
