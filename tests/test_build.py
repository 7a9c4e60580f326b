"""End-to-end `ppgguf.build.build` on the tiny Hugging Face checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

import ppgguf.export
from ppgguf.build import BuildOptions, build
from ppgguf.validate import ValidationError

from conftest import tiny_recipe

REPO = Path(__file__).resolve().parent.parent
CHARACTER = REPO / "examples" / "captain_mirela.txt"

TINY_RECIPE = tiny_recipe("wanda-sp")


@pytest.fixture
def recipe_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PPGGUF_HOME", str(tmp_path / "home"))
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
    monkeypatch.setattr(ppgguf.export, "permute_for_gguf", lambda w, n_head: w)
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
