"""End-to-end `ppgguf.build.pipeline.build` on the tiny Hugging Face checkpoint directory."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import ppgguf.export.writer
from ppgguf.build.pipeline import BuildOptions, build
from ppgguf.build.validate import ValidationError
from ppgguf.errors import UserError

from tiny_models import tiny_recipe

REPO = Path(__file__).resolve().parent.parent
CHARACTER = REPO / "examples" / "captain_mirela.txt"

TINY_RECIPE = tiny_recipe("wanda-sp")


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    path = tmp_path / "tiny-test.toml"
    path.write_text(TINY_RECIPE, encoding="utf-8")
    return path


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if "partial" in p.name or p.name.endswith(".tmp")]


@pytest.mark.parametrize("family,per_layer", [("llama", False), ("qwen2", True)])
def test_build_end_to_end(request, family, per_layer, recipe_file, tmp_path):
    tiny = request.getfixturevalue(f"tiny_{family}")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "mirela.gguf"
    overrides = {"base": str(tiny.dir), "uniform": False if per_layer else None}
    messages = []
    result = build(
        BuildOptions(character=CHARACTER, out=out, recipe=str(recipe_file), overrides=overrides, device="cpu"),
        progress=messages.append,
    )
    assert result.path == out and out.is_file()
    assert messages  # progress is reported
    report = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(result.report))

    params = report["parameters"]
    assert params["dense"] > params["pruned"] == params["predicted_from_widths"]
    assert 0 < params["kept_fraction"] < 1
    assert len(report["widths"]) == 2
    assert all(w["n_head"] == 2 and w["n_head_kv"] == 1 for w in report["widths"])
    n_ff = [w["n_ff"] for w in report["widths"]]
    if per_layer:  # a global ranking may still give equal widths; deci only when they differ
        assert report["architecture"] == ("deci" if len(set(n_ff)) > 1 else "llama")
        assert all(w % 32 == 0 for w in n_ff) and abs(sum(n_ff) - 256) <= 64
    else:
        assert report["architecture"] == "llama"  # heads pruned: qwen2 is also written as llama
        assert n_ff == [128, 128]
    assert report["recipe"]["quant"] == "Q8_0" and report["recipe"]["base"] == str(tiny.dir)
    assert report["base"]["family"] == family
    assert report["quantization"]["quant"] == "Q8_0" and "Q8_0" in report["quantization"]["tensor_types"]
    validation = report["validation"]
    assert validation["positions"] > 0 and validation["gated"] is False
    assert validation["top1"] > 0.8, validation  # Q8_0 of a tiny model: close, not exact
    assert validation["repetition"]["answers"] == 2  # the recipe's validation prompts, answered greedily
    assert (validation["repetition"]["rate"] >= 0.5) == any("loop" in w for w in report["warnings"])
    assert report["file_bytes"] == out.stat().st_size
    for stage in ("load_base", "calibrate", "score", "surgery", "export", "quantize", "validate", "total"):
        assert report["seconds"][stage] >= 0
    assert Path(report["run_dir"]).is_relative_to(tmp_path / "home")

    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == report["architecture"]
    assert reader.fields["ppgguf.persona.name"].contents() == report["character"]
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert not leftovers(out_dir), leftovers(out_dir)

    # a rerun reuses the plan from the run directory and writes the same widths
    again = build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe_file), overrides=overrides, device="cpu"))
    assert again.report["seconds"].get("score", 0.0) == 0.0
    assert again.report["parameters"] == params
    assert again.report["widths"] == report["widths"]


def test_build_failing_validation_leaves_no_output(tiny_llama, recipe_file, tmp_path, monkeypatch):
    # Q and K written without llama.cpp's rotary permutation: the file loads but computes garbage
    monkeypatch.setattr(ppgguf.export.writer, "permute_for_gguf", lambda w, n_head: w)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "broken.gguf"
    options = BuildOptions(
        character=CHARACTER, out=out, recipe=str(recipe_file),
        overrides={"base": str(tiny_llama.dir), "quant": "F16"}, device="cpu",
    )
    with pytest.raises(ValidationError, match="disagrees"):
        build(options)
    assert list(out_dir.iterdir()) == []


def test_a_recipe_changes_only_the_knobs_it_names(tmp_path):
    from ppgguf.recipe import load_recipe

    default = load_recipe().to_json()
    mine = tmp_path / "mine.toml"
    mine.write_text("[train]\nsteps = 7\n", encoding="utf-8")
    assert load_recipe(str(mine)).to_json() == {**default, "steps": 7}
    # quick inherits the default's sparsity instead of repeating it
    quick = load_recipe("quick").to_json()
    assert quick["ffn_sparsity"] == default["ffn_sparsity"] and quick["steps"] < default["steps"]


# --------------------------------------------------------------------------------------------
# Defects of issue 15, each with the test that failed before its fix.

PLAIN_TEMPLATE = (  # neither ChatML nor Llama 3: no Ollama TEMPLATE can be written for it
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@pytest.fixture(scope="module")
def plain_template_base(tiny_llama, tmp_path_factory) -> Path:
    """The tiny llama checkpoint with a chat template of no format ppgguf knows."""
    directory = tmp_path_factory.mktemp("plain-template") / "tiny-plain"
    shutil.copytree(tiny_llama.dir, directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["chat_template"] = PLAIN_TEMPLATE
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return directory


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def test_nothing_pruned_is_the_source_round_trip(tiny_llama, tmp_path, monkeypatch):
    """Sparsity 0: no scoring, no healing, even when the recipe heals; the tensors are the source's."""
    import ppgguf.pruning.prune

    monkeypatch.setattr(ppgguf.pruning.prune, "get_scorer", lambda name: pytest.fail("a dense build scored channels"))
    recipe = tmp_path / "dense.toml"
    recipe.write_text(tiny_recipe("persona", "F32", heal=True, heal_steps=4), encoding="utf-8")
    out = tmp_path / "dense.gguf"
    result = build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe), device="cpu",
                                overrides={"base": str(tiny_llama.dir), "ffn_sparsity": 0.0, "head_sparsity": 0.0}))
    report = result.report
    assert "score" not in report["seconds"] and "heal" not in report["seconds"]
    assert "heal_loss_history" not in report["scoring"]
    assert report["widths"] == report["dense_widths"]
    assert report["validation"]["top1"] == 1.0 and report["validation"]["kl_mean"] < 1e-3
    source = tmp_path / "source.f32.gguf"
    ppgguf.export.writer.export_gguf(tiny_llama.fresh(), tiny_llama.base.family, tiny_llama.base.tokenizer_spec, source, "F32")
    built, expected = _tensors(out), _tensors(source)
    assert built.keys() == expected.keys()
    assert all(np.array_equal(built[name], expected[name]) for name in expected)


def test_report_has_the_dense_widths(tiny_llama, recipe_file, tmp_path):
    out = tmp_path / "mirela.gguf"
    report = build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe_file), device="cpu",
                                overrides={"base": str(tiny_llama.dir)})).report
    assert [w["n_ff"] for w in report["dense_widths"]] == [256, 256]
    assert [w["n_ff"] for w in report["widths"]] == [128, 128]


def test_unknown_chat_format_skips_the_modelfile_and_places_the_rest(plain_template_base, recipe_file, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "mirela.gguf"
    messages: list[str] = []
    result = build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe_file), device="cpu",
                                overrides={"base": str(plain_template_base)}), progress=messages.append)
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "mirela.gguf", "mirela.gguf.png", "mirela.gguf.report.json", "mirela.md"]
    assert any("no Ollama Modelfile" in w for w in result.report["warnings"])
    assert any("Warning" in m and "Modelfile" in m for m in messages[:3])  # said before the long stages
    assert [Path(p).name for p in result.report["companions"]] == ["mirela.md", "mirela.gguf.png"]


def test_a_persona_quoting_chatml_does_not_make_the_base_chatml(plain_template_base, recipe_file, tmp_path):
    """The chat format comes from the base's template, not from the baked one that holds the persona."""
    character = tmp_path / "quoter.txt"
    character.write_text("Name: Quoter\nQuoter is a terse archivist who collects odd strings such as "
                         "<|im_start|> and <|im_end|> and recites them on request.\n", encoding="utf-8")
    out = tmp_path / "quoter.gguf"
    build(BuildOptions(character=character, out=out, recipe=str(recipe_file), device="cpu",
                       overrides={"base": str(plain_template_base)}))
    assert out.is_file() and not out.with_name("quoter.Modelfile").exists()


def test_a_failure_while_writing_companions_places_nothing(tiny_llama, recipe_file, tmp_path, monkeypatch):
    import ppgguf.build.finish

    def broken_card(report):
        raise RuntimeError("model card failed")

    monkeypatch.setattr(ppgguf.build.finish, "model_card_text", broken_card)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="model card failed"):
        build(BuildOptions(character=CHARACTER, out=out_dir / "mirela.gguf", recipe=str(recipe_file), device="cpu",
                           overrides={"base": str(tiny_llama.dir)}))
    assert list(out_dir.iterdir()) == []


def _teacher_with_other_vocabulary(tiny_llama, path: Path) -> Path:
    spec = copy.deepcopy(tiny_llama.base.tokenizer_spec)
    tokens = list(spec.tokens)
    tokens[10], tokens[11] = tokens[11], tokens[10]
    spec.set(gguf.Keys.Tokenizer.LIST, tokens, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    ppgguf.export.writer.export_gguf(tiny_llama.fresh(), tiny_llama.base.family, spec, path, "F16")
    return path


def test_a_teacher_with_another_vocabulary_is_refused_before_any_work(tiny_llama, tmp_path):
    teacher = _teacher_with_other_vocabulary(tiny_llama, tmp_path / "teacher.gguf")
    recipe = tmp_path / "persona.toml"
    recipe.write_text(tiny_recipe("persona"), encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UserError, match="another tokenizer than the base model"):
        build(BuildOptions(character=CHARACTER, out=out_dir / "m.gguf", recipe=str(recipe), device="cpu",
                           overrides={"base": str(tiny_llama.dir), "teacher": str(teacher)}))
    assert list(out_dir.iterdir()) == []
    assert not (tmp_path / "home" / "calibration").exists()


def test_the_calibration_cache_follows_the_teacher_content(tiny_llama, chat_tokenizer, tmp_path, monkeypatch):
    import ppgguf.calibration.answers
    from ppgguf.inputs.persona import persona_from_text
    from ppgguf.recipe import load_recipe, with_overrides

    calls = []
    monkeypatch.setattr(ppgguf.calibration.answers, "persona_calibration",
                        lambda *a, **k: calls.append(1) or [{"question": "q", "answer": "a", "divergence": 0.0}])
    teacher = tmp_path / "teacher.gguf"
    persona = persona_from_text(CHARACTER.read_text(encoding="utf-8"))
    settings = with_overrides(load_recipe(), {"teacher": str(teacher)}).calibration
    base = tiny_llama.base
    for seed in (1, 2):  # the same path, other weights
        model = tiny_llama.fresh()
        torch.manual_seed(seed)
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
        ppgguf.export.writer.export_gguf(model, base.family, base.tokenizer_spec, teacher, "F16")
        ppgguf.calibration.answers.cached_persona_calibration(base, chat_tokenizer, persona, settings, 0)
    ppgguf.calibration.answers.cached_persona_calibration(base, chat_tokenizer, persona, settings, 0)
    assert len(calls) == 2  # a new teacher file is a new calibration set; the same one is reused


def test_the_time_left_counts_only_the_steps(monkeypatch):
    """Work before the first step (calibration, the dense pass) does not enter the estimate."""
    import ppgguf.stages

    now = [0.0]
    monkeypatch.setattr(ppgguf.stages.time, "perf_counter", lambda: now[0])
    messages: list[str] = []
    report = ppgguf.stages.step_reporter("Learning masks", messages.append)
    now[0] = 600.0  # ten minutes of calibration before the first step ends
    report(1, 10, 0.5)
    now[0] = 602.0  # then 2 s per step
    report(2, 10, 0.4)
    assert "about 0.3 min left" in messages[-1]  # 8 steps x 2 s, not 8 x 301 s


def test_an_importance_matrix_weighs_the_rounding_and_ships_beside_the_gguf(tiny_llama, recipe_file, tmp_path):
    from ppgguf.export.imatrix import read_imatrix_gguf

    outs = {}
    for kind in ("generic", "none"):
        outs[kind] = tmp_path / kind / "m.gguf"
        outs[kind].parent.mkdir()
        report = build(BuildOptions(character=CHARACTER, out=outs[kind], recipe=str(recipe_file), device="cpu",
                                    overrides={"base": str(tiny_llama.dir), "quant": "Q4_0", "imatrix": kind})).report
        assert report["quantization"]["imatrix"] == kind
    shipped = outs["generic"].with_name("m.imatrix.gguf")
    assert str(shipped) in report_companions(outs["generic"])
    assert not outs["none"].with_name("m.imatrix.gguf").exists()
    assert len(read_imatrix_gguf(shipped).sums) == 2 * 7 + 1  # 7 matrices per layer and the output matrix
    weighted, plain = _tensors(outs["generic"]), _tensors(outs["none"])
    assert not np.array_equal(weighted["blk.0.ffn_down.weight"], plain["blk.0.ffn_down.weight"])


def report_companions(out: Path) -> list[str]:
    return json.loads(out.with_name(out.name + ".report.json").read_text(encoding="utf-8"))["companions"]


def test_a_type_that_needs_an_importance_matrix_is_refused_up_front(tiny_llama, recipe_file, tmp_path):
    with pytest.raises(UserError, match="IQ2_XXS needs an importance matrix.*--imatrix persona"):
        build(BuildOptions(character=CHARACTER, out=tmp_path / "m.gguf", recipe=str(recipe_file), device="cpu",
                           overrides={"base": str(tiny_llama.dir), "quant": "IQ2_XXS", "imatrix": "none"}))
    assert not (tmp_path / "home" / "runs").exists()


def test_several_characters_load_the_base_once_and_build_as_they_would_alone(tiny_llama, recipe_file, tmp_path, monkeypatch):
    import ppgguf.inputs.base
    from ppgguf.build.pipeline import build_many

    loads = []
    real_load = ppgguf.inputs.base.load_base
    monkeypatch.setattr(ppgguf.inputs.base, "load_base", lambda *a: loads.append(a) or real_load(*a))
    first, second = tmp_path / "mirela.txt", tmp_path / "tobin.txt"
    shutil.copy(CHARACTER, first)
    shutil.copy(REPO / "examples" / "brother_tobin.txt", second)
    options = [BuildOptions(character=c, recipe=str(recipe_file), overrides={"base": str(tiny_llama.dir)}, device="cpu")
               for c in (first, second)]
    results = build_many(options)
    assert len(loads) == 1
    assert [r.path for r in results] == [first.with_suffix(".gguf"), second.with_suffix(".gguf")]
    assert results[0].report["character"] != results[1].report["character"]
    assert results[0].report["run_dir"] != results[1].report["run_dir"]
    assert results[0].report["widths"] == results[1].report["widths"] == [{"n_ff": 128, "n_head": 2, "n_head_kv": 1}] * 2
    # the second build pruned a fresh copy of the base: alone it writes the same file
    alone = build(BuildOptions(character=second, out=tmp_path / "alone.gguf", recipe=str(recipe_file),
                               overrides={"base": str(tiny_llama.dir)}, device="cpu"))
    assert alone.path.read_bytes() == results[1].path.read_bytes()


def test_several_characters_are_all_checked_before_any_build(tiny_llama, recipe_file, tmp_path):
    from ppgguf.build.pipeline import build_many

    bad = tmp_path / "empty.txt"
    bad.write_text("", encoding="utf-8")
    good = tmp_path / "mirela.txt"
    shutil.copy(CHARACTER, good)
    options = [BuildOptions(character=c, recipe=str(recipe_file), overrides={"base": str(tiny_llama.dir)}, device="cpu")
               for c in (good, bad)]
    with pytest.raises(UserError):
        build_many(options)
    assert not good.with_suffix(".gguf").exists() and not (tmp_path / "home" / "runs").exists()


def test_one_out_file_for_several_characters_is_refused(tmp_path):
    from typer.testing import CliRunner

    from ppgguf.cli import app

    result = CliRunner().invoke(app, ["build", str(CHARACTER), str(REPO / "examples" / "brother_tobin.txt"),
                                      "--out", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and "--out names one file" in result.output
    assert "Traceback" not in result.output


def test_a_dense_build_with_a_persona_importance_matrix_calibrates_but_neither_scores_nor_heals(tiny_llama, tmp_path, monkeypatch):
    import ppgguf.pruning.prune

    monkeypatch.setattr(ppgguf.pruning.prune, "get_scorer", lambda name: pytest.fail("a dense build scored channels"))
    recipe = tmp_path / "dense.toml"
    recipe.write_text(tiny_recipe("persona", "IQ4_NL", heal=True, heal_steps=4), encoding="utf-8")
    out = tmp_path / "dense.gguf"
    report = build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe), device="cpu", overrides={
        "base": str(tiny_llama.dir), "ffn_sparsity": 0.0, "head_sparsity": 0.0, "imatrix": "persona"})).report
    assert report["seconds"]["calibrate"] > 0 and report["seconds"]["imatrix"] > 0
    assert "score" not in report["seconds"] and "heal" not in report["seconds"]
    assert report["quantization"]["imatrix"] == "persona" and report["size"]["predicted_bytes"] == out.stat().st_size
    assert out.with_name("dense.imatrix.gguf").is_file()


def test_a_type_that_uses_no_importance_matrix_gets_none(tiny_llama, recipe_file, tmp_path):
    out = tmp_path / "m.gguf"
    report = build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe_file), device="cpu",
                                overrides={"base": str(tiny_llama.dir), "quant": "Q8_0", "imatrix": "generic"})).report
    assert report["quantization"]["imatrix"] == "none" and "imatrix" not in report["seconds"]
    assert not out.with_name("m.imatrix.gguf").exists()
