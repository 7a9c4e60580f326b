"""The character in the weights (ppgguf.pruning.bake): the training pairs, the loss it lowers, the built file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from typer.testing import CliRunner

from ppgguf.build.pipeline import BuildOptions, build
from ppgguf.calibration.batches import answer_distributions, answer_logits, shared_prefix_length
from ppgguf.calibration.distill import kl_loss
from ppgguf.calibration.followups import bake_conversations
from ppgguf.cli import app
from ppgguf.errors import UserError
from ppgguf.inputs.persona import persona_from_text
from ppgguf.llama.reader import read_header
from ppgguf.pruning.bake import (
    GENERIC_SYSTEM_PROMPTS, bake_pairs, short_prompt, student_systems, template_system_prompt,
)
from ppgguf.pruning.heal import heal
from ppgguf.recipe import load_recipe, with_overrides
from ppgguf.use.chat import ChatSession

from tiny_models import tiny_recipe

REPO = Path(__file__).resolve().parent.parent
CHARACTER = REPO / "examples" / "captain_mirela.txt"
PERSONA = persona_from_text("Name: Grimbold\nA dwarven smith who speaks only of iron, fire and hammers, in every answer.")


def _examples(n: int, offset: int = 0) -> list[dict]:
    words = ["iron", "the forge", "a hammer", "fire", "the anvil", "steel", "coal", "the bellows"]
    return [{"question": f"Tell me about {words[(i + offset) % 8]} number {i + offset}?",
             "answer": f"Ah, {words[(i + offset * 3) % 8]}! Hot and heavy, like {words[(i + 5) % 8]} at dawn."}
            for i in range(n)]


def test_the_short_prompt_is_the_name_and_the_description_s_first_words():
    assert short_prompt(PERSONA, 0) == "You are Grimbold."
    assert short_prompt(PERSONA, 3) == "You are Grimbold. A dwarven smith"
    assert short_prompt(PERSONA, 100) == "You are Grimbold. " + PERSONA.description  # a short description whole


def test_the_student_sees_the_short_prompt_or_a_mix_and_never_changes_the_answer(chat_tokenizer):
    assert student_systems(PERSONA, "name", 5, 0, 2) == ["You are Grimbold. A dwarven"] * 5
    mix = student_systems(PERSONA, "mix", 64, 0, 2)
    assert mix.count(short_prompt(PERSONA, 2)) == 32 and mix.count(PERSONA.system_prompt) == 16
    assert mix.count(None) == 8 and sum(s in GENERIC_SYSTEM_PROMPTS for s in mix) == 8
    assert mix == student_systems(PERSONA, "mix", 64, 0, 2) != student_systems(PERSONA, "mix", 64, 1, 2)

    followups = [{**e, "followup": "And what else?", "followup_answer": "More iron, always."} for e in _examples(2)]
    conversations = bake_conversations(PERSONA, _examples(6), followups)
    teacher, student, groups = bake_pairs(chat_tokenizer, PERSONA, conversations, "mix", 0, 20)
    assert len(teacher) == len(student) == len(groups) == 8
    assert groups == [s or "" for s in student_systems(PERSONA, "mix", 8, 0, 20)]
    prompt_ids = chat_tokenizer.encode(PERSONA.system_prompt)
    for (t_ids, t_start), (s_ids, s_start) in zip(teacher, student):
        assert t_ids[t_start:] == s_ids[s_start:]  # the same answer tokens: the teacher's rows are the targets
        assert _contains(t_ids, prompt_ids)
    assert sum(_contains(ids, prompt_ids) for ids, _ in student) < len(student)
    # The two-turn conversations train the second answer with the first exchange as context.
    assert chat_tokenizer.decode(teacher[-1][0][teacher[-1][1]:]).startswith("More iron, always.")


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def _no_prompt_kl(model, teacher_targets, student) -> float:
    with torch.no_grad():
        logits = answer_logits(model, student, shared_prefix_length(student), "cpu")
        return float(torch.stack([kl_loss(l, t) for l, t in zip(logits, teacher_targets)]).mean())


def _bake_data(model, chat_tokenizer):
    """(student training sequences, their targets, held-out student sequences, their targets): 16 and 6 questions."""
    train_t, train_s, _ = bake_pairs(chat_tokenizer, PERSONA, bake_conversations(PERSONA, _examples(16), []),
                                     "name", 0, 0)
    held_t, held_s, _ = bake_pairs(chat_tokenizer, PERSONA, bake_conversations(PERSONA, _examples(6, 40), []),
                                   "name", 0, 0)
    return (train_s, answer_distributions(model, train_t, "cpu", dtype=torch.float32),
            held_s, answer_distributions(model, held_t, "cpu", dtype=torch.float32))


def test_baking_lowers_the_no_prompt_kl_against_the_prompted_teacher_on_held_out_questions(tiny_llama, chat_tokenizer):
    model = tiny_llama.fresh()
    train_s, targets, held_s, held_targets = _bake_data(model, chat_tokenizer)
    before = _no_prompt_kl(model, held_targets, held_s)
    history = heal(model, train_s, targets, steps=30, batch_size=4, lr=3e-3, seed=0, device="cpu")
    after = _no_prompt_kl(model, held_targets, held_s)
    assert history[-1] < history[0]
    assert after < 0.7 * before, (before, after)


def test_a_bake_of_the_vectors_alone_leaves_every_matrix_as_it_was_and_still_lowers_the_kl(tiny_llama, chat_tokenizer):
    model = tiny_llama.fresh()
    train_s, targets, held_s, held_targets = _bake_data(model, chat_tokenizer)
    before_kl = _no_prompt_kl(model, held_targets, held_s)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heal(model, train_s, targets, steps=30, batch_size=4, lr=3e-2, seed=0, device="cpu", vectors_only=True)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if v.dim() > 1)  # quantized back onto the same grid
    assert all(not torch.equal(after[k], v) for k, v in before.items() if k.endswith("norm.weight"))
    after_kl = _no_prompt_kl(model, held_targets, held_s)
    assert after_kl < 0.9 * before_kl, (before_kl, after_kl)


def test_a_bake_runs_each_system_prompt_of_a_batch_once_and_steps_as_the_whole_batch(tiny_llama, chat_tokenizer,
                                                                                       monkeypatch):
    import ppgguf.pruning.heal

    teacher, student, groups = bake_pairs(chat_tokenizer, PERSONA, bake_conversations(PERSONA, _examples(16), []),
                                          "mix", 0, 2)
    assert len(set(groups)) >= 3
    targets = answer_distributions(tiny_llama.fresh(), teacher, "cpu", dtype=torch.float32)
    grouped = []  # (system prompts, prefix length, sequences) of each pass of the grouped run

    def spy(model, batch, prefix_length, device):
        grouped.append(({groups[student.index(s)] for s in batch}, prefix_length, batch))
        return answer_logits(model, batch, prefix_length, device)

    with monkeypatch.context() as m:
        m.setattr(ppgguf.pruning.heal, "answer_logits", spy)
        model = tiny_llama.fresh()
        history = heal(model, student, targets, steps=6, batch_size=4, lr=1e-2, seed=0, device="cpu",
                       vectors_only=True, groups=groups)
        weights = model.state_dict()
    plain = tiny_llama.fresh()
    plain_history = heal(plain, student, targets, steps=6, batch_size=4, lr=1e-2, seed=0, device="cpu",
                         vectors_only=True)
    plain_weights = plain.state_dict()
    assert len(grouped) > 6
    for systems, prefix_length, batch in grouped:
        assert len(systems) == 1  # one system prompt a pass
        system = chat_tokenizer.encode(next(iter(systems)))
        assert prefix_length == shared_prefix_length(batch) >= len(system)  # run once for the part
    # The same steps as whole batches: the parts' gradients add up to the batch's.
    assert history == pytest.approx(plain_history, rel=1e-4)
    assert all(torch.allclose(weights[k], plain_weights[k], atol=1e-5) for k in weights)


def test_an_unknown_bake_mode_is_refused():
    with pytest.raises(UserError, match="unknown bake mode 'always'"):
        with_overrides(load_recipe(), {"bake": "always"})
    with pytest.raises(UserError, match="unknown bake_trains 'biases'; use one of: vectors, weights"):
        with_overrides(load_recipe(), {"bake_trains": "biases"})
    with pytest.raises(UserError, match="bake_prompt_words must be 0"):
        with_overrides(load_recipe(), {"bake_prompt_words": -1})


@pytest.fixture(scope="module")
def baked(tiny_llama, tmp_path_factory) -> dict:
    """One baked tiny build, without and with a card greeting (shared by the tests below)."""
    d = tmp_path_factory.mktemp("baked")
    recipe = d / "bake.toml"
    recipe.write_text(tiny_recipe("persona", "Q8_0", bake_steps=2, bake="name"), encoding="utf-8")
    home = d / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPGGUF_HOME", str(home))
        result = build(BuildOptions(character=CHARACTER, out=d / "mirela.gguf", recipe=str(recipe), device="cpu",
                                    overrides={"base": str(tiny_llama.dir), "ffn_sparsity": 0.0, "head_sparsity": 0.0}))
    return {"path": result.path, "report": result.report, "home": home}


MIRELA_SHORT = ("You are Captain Mirela Voss. Captain Mirela Voss commands the Gull's Lament, a patched-up cargo "
                "airship that docks at the smoky mooring towers of Brassport,")  # the description's first 20 words


def test_a_baked_build_trains_without_the_prompt_and_its_template_sends_only_the_short_prompt(baked):
    report, header = baked["report"], read_header(baked["path"])
    assert report["bake"] == {"mode": "name", "template_system_prompt": MIRELA_SHORT}
    assert report["seconds"]["bake"] > 0 and len(report["scoring"]["bake_loss_history"]) == 2
    assert "score" not in report["seconds"]  # nothing pruned: nothing scored
    assert header.get("ppgguf.bake") == "name"
    persona = report["persona"]
    assert header.get("ppgguf.system_prompt") == persona["system_prompt"]  # the full prompt still travels
    template = ImmutableSandboxedEnvironment().from_string(header.get("tokenizer.chat_template"))
    rendered = template.render(messages=[{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    assert MIRELA_SHORT in rendered
    assert persona["description"][-40:] not in rendered and "Stay in character" not in rendered
    mine = template.render(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert "Be brief." in mine and "Mirela" not in mine
    modelfile = baked["path"].with_name("mirela.Modelfile").read_text(encoding="utf-8")
    assert f'SYSTEM """{MIRELA_SHORT}"""' in modelfile and "Stay in character" not in modelfile
    card = baked["path"].with_name("mirela.md").read_text(encoding="utf-8")
    assert "trained into the weights" in card and f"`{MIRELA_SHORT}`" in card
    # Follow-up turns were answered for the two-turn conversations.
    followups = list((baked["home"] / "followups").glob("*.json"))
    assert len(followups) == 1 and json.loads(followups[0].read_text())[0]["followup_answer"]


def test_chat_and_inspect_say_a_file_is_baked_and_chat_sends_no_persona_prompt(baked):
    session = ChatSession(baked["path"], n_ctx=512, max_tokens=4)
    try:
        assert session.baked and session.system_prompt is None and session.messages() == []
        assert "baked into the weights" in session.persona_note()
        assert "Stay in character" not in session.render([{"role": "user", "content": "Hi"}])
    finally:
        session.close()
    shown = CliRunner().invoke(app, ["inspect", str(baked["path"])])
    assert shown.exit_code == 0 and "baked into the weights" in shown.output
    assert json.loads(CliRunner().invoke(app, ["inspect", str(baked["path"]), "--json"]).stdout)["baked"] is True


def test_bench_asks_a_baked_file_as_used_and_with_the_prompt_and_states_what_baking_saves(baked):
    result = CliRunner().invoke(app, ["bench", str(baked["path"]), "--reps", "1", "--tokens", "2", "--threads", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["models"]
    used, prompted = rows["npc"], rows["npc prompted"]
    assert used["baked"] and used["prompt_tokens"] < prompted["prompt_tokens"]
    assert used["kv_bytes_per_token"] == prompted["kv_bytes_per_token"] > 0
    assert used["prompt_kv_bytes"] == used["prompt_tokens"] * used["kv_bytes_per_token"]


def test_an_unbaked_file_keeps_the_persona_prompt_in_its_template():
    assert template_system_prompt(PERSONA, "off", 20) == PERSONA.system_prompt
    assert template_system_prompt(PERSONA, "mix", 0) == template_system_prompt(PERSONA, "name", 0) == "You are Grimbold."
