"""Predicted file sizes (llama.cpp's dry run on a shape-only GGUF) and the choice for a size target."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from ppgguf.build.pipeline import BuildOptions, build
from ppgguf.errors import UserError
from ppgguf.export import sizing
from ppgguf.export.imatrix import collect_imatrix
from ppgguf.export.quantize import quantize
from ppgguf.export.sizing import (
    SOURCE, Candidate, check_target_options, fit_to_size, predicted_file_bytes, shaped_like, write_shape_file,
)
from ppgguf.export.writer import export_gguf
from ppgguf.llama.quant_types import source_quant
from ppgguf.pruning.plan import Importance, make_plan
from ppgguf.pruning.surgery import apply_plan, layer_widths
from ppgguf.recipe import load_recipe, with_overrides

CHARACTER = Path(__file__).resolve().parent.parent / "examples" / "captain_mirela.txt"


def _pruned(tiny, ffn_sparsity, head_sparsity):
    model = tiny.fresh()
    g = torch.Generator().manual_seed(7)
    layers = model.model.layers
    importance = Importance(ffn=[torch.rand(l.mlp.gate_proj.out_features, generator=g) for l in layers],
                            heads=[torch.rand(model.config.num_key_value_heads, generator=g) for _ in layers])
    return apply_plan(model, make_plan(importance, ffn_sparsity, head_sparsity))


def test_the_shape_model_has_the_widths_pruning_gives(tiny_llama):
    for ffn, heads in [(0.0, 0.0), (0.5, 0.5), (0.3, 0.0)]:
        shell = shaped_like(tiny_llama.model, ffn, heads)
        assert layer_widths(shell) == layer_widths(_pruned(tiny_llama, ffn, heads))
        assert next(shell.parameters()).device.type == "meta"


@pytest.mark.parametrize("quant,imatrix,embedding", [
    ("F32", False, ""), ("F16", False, ""), ("Q8_0", False, ""), ("Q4_0", False, ""), ("Q4_0", True, ""),
    ("Q4_K_M", False, ""), ("IQ4_NL", True, ""), ("Q2_K", False, ""), ("IQ4_NL", True, "Q4_0"), ("Q8_0", False, "Q5_0")])
def test_the_predicted_size_is_the_size_llama_cpp_writes(tiny, quant, imatrix, embedding, token_sequences, tmp_path):
    model = _pruned(tiny, 0.5, 0.5)
    f32 = tmp_path / "m.f32.gguf"
    export_gguf(model, tiny.base.family, tiny.base.tokenizer_spec, f32, "F32", extra={"ppgguf.persona.name": "Mirela"})
    matrix = collect_imatrix(model, tiny.base.family, token_sequences) if imatrix else None
    out = tmp_path / "m.gguf"
    quantize(f32, out, quant, imatrix=matrix, embedding_quant=embedding)

    shapes = write_shape_file(shaped_like(tiny.model, 0.5, 0.5), lambda m, path, **kw: export_gguf(
        m, tiny.base.family, tiny.base.tokenizer_spec, path, "F32", extra={"ppgguf.persona.name": "Mirela"}, **kw),
        tmp_path / "shapes.gguf")
    assert predicted_file_bytes(shapes, quant, imatrix, embedding) == out.stat().st_size


def test_a_shape_only_file_has_the_full_length_and_writes_no_data(tiny_llama, tmp_path):
    shapes, full = tmp_path / "s.gguf", tmp_path / "f.gguf"
    export_gguf(tiny_llama.fresh(), tiny_llama.base.family, tiny_llama.base.tokenizer_spec, full, "F32")
    export_gguf(shaped_like(tiny_llama.model, 0.0, 0.0), tiny_llama.base.family, tiny_llama.base.tokenizer_spec,
                shapes, "F32", shapes_only=True)
    assert shapes.stat().st_size == full.stat().st_size
    assert shapes.stat().st_blocks * 512 < full.stat().st_size / 4  # a sparse hole, not zeros written


RANKED = (Candidate(0.0, "Q8_0", "none", "", 0.01), Candidate(0.0, "Q4_0", "generic", "", 0.2),
          Candidate(0.5, "Q4_0", "generic", "", 0.7))


def _sizes(tiny, tmp_path) -> dict[tuple, int]:
    from ppgguf.build.pipeline import exported_tokenizer_spec
    from ppgguf.inputs.persona import load_persona
    from ppgguf.inputs.tokenizer import ChatTokenizer

    persona = load_persona(CHARACTER)
    spec = exported_tokenizer_spec(tiny.base, ChatTokenizer(tiny.base.tokenizer_spec, tiny.base.vocab_gguf), persona.system_prompt)
    recipe = with_overrides(load_recipe(None), {"base": str(tiny.dir)})
    shape_files: dict = {}
    return {(c.ffn_sparsity, c.quant): sizing.predict_build_bytes(with_overrides(recipe, c.overrides()),
                                                                  tiny.base, spec, persona, tmp_path, shape_files)
            for c in RANKED}, (recipe, spec, persona)


def test_a_target_takes_the_lowest_measured_kl_that_fits_and_refuses_what_none_reaches(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(sizing, "CANDIDATES", RANKED)
    sizes, (recipe, spec, persona) = _sizes(tiny_llama, tmp_path)
    assert sizes[(0.0, "Q8_0")] > sizes[(0.0, "Q4_0")] > sizes[(0.5, "Q4_0")]

    def fit(mib):
        return fit_to_size(with_overrides(recipe, {"target_size_mib": mib}), tiny_llama.base, spec, persona, tmp_path)

    chosen, size = fit(sizes[(0.0, "Q8_0")] / 2**20)  # exactly the most faithful one's size
    assert (chosen.prune.ffn_sparsity, chosen.export.quant) == (0.0, "Q8_0") and size["predicted_bytes"] == sizes[(0.0, "Q8_0")]
    chosen, size = fit((sizes[(0.0, "Q8_0")] - 1) / 2**20)
    assert (chosen.prune.ffn_sparsity, chosen.export.quant, chosen.export.imatrix) == (0.0, "Q4_0", "generic")
    chosen, _ = fit((sizes[(0.0, "Q4_0")] - 1) / 2**20)
    assert chosen.prune.ffn_sparsity == 0.5
    smallest = sizes[(0.5, "Q4_0")] / 2**20
    with pytest.raises(UserError, match=rf"cannot be reached: the smallest file .* is {smallest:.1f} MiB"):
        fit(smallest * 0.9)


def test_auto_takes_the_lowest_measured_kl_smaller_than_the_source_at_the_recipes_sparsity(tiny_llama, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setattr(sizing, "CANDIDATES", RANKED)
    sizes, (recipe, spec, persona) = _sizes(tiny_llama, tmp_path)
    source = {}
    monkeypatch.setattr(sizing, "model_shape", lambda path: SimpleNamespace(source_bytes=source["bytes"]))

    def fit(source_bytes, **overrides):
        source["bytes"] = source_bytes
        auto = with_overrides(recipe, {"quant": "auto", **overrides})
        return fit_to_size(auto, tiny_llama.base, spec, persona, tmp_path)

    just_fits = math.ceil(sizes[(0.0, "Q8_0")] / sizing.AUTO_SHARE) + 1
    chosen, size = fit(just_fits)
    assert (chosen.export.quant, chosen.export.imatrix, chosen.prune.ffn_sparsity) == ("Q8_0", "none", 0.0)
    assert size["predicted_bytes"] == sizes[(0.0, "Q8_0")] and size["measured_kl"] == 0.01
    chosen, size = fit(sizes[(0.0, "Q8_0")] + 1)  # smaller than the source, but not by 5%
    assert (chosen.export.quant, chosen.export.imatrix) == ("Q4_0", "generic")
    chosen, size = fit(1)  # nothing is smaller: the smallest type, never a pruned candidate
    assert (chosen.export.quant, chosen.prune.ffn_sparsity) == ("Q4_0", 0.0) and size["predicted_bytes"] > 1
    chosen, _ = fit(sizes[(0.0, "Q8_0")] + 1, ffn_sparsity=0.5)  # the types only: the recipe's sparsity stays
    assert (chosen.export.quant, chosen.prune.ffn_sparsity) == ("Q8_0", 0.5)


def test_a_source_candidate_is_the_bases_own_type_and_is_skipped_where_there_is_none(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(sizing, "CANDIDATES", (Candidate(0.0, SOURCE, "none", "", 0.001),) + RANKED)
    sizes, (recipe, spec, persona) = _sizes(tiny_llama, tmp_path)
    monkeypatch.setattr(sizing, "model_shape", lambda path: SimpleNamespace(source_bytes=2 * sizes[(0.0, "Q8_0")]))
    own = {}
    monkeypatch.setattr(sizing, "source_quant", lambda path: own["type"])

    def fit():
        return fit_to_size(with_overrides(recipe, {"quant": "auto"}), tiny_llama.base, spec, persona, tmp_path)

    own["type"] = "Q4_0"
    chosen, size = fit()
    assert (chosen.export.quant, chosen.export.imatrix) == ("Q4_0", "none") and size["measured_kl"] == 0.001
    assert "Q4_0 (the base's own type)" in size["chosen"]
    own["type"] = None  # a checkpoint directory: nothing to round-trip, the next candidate
    chosen, size = fit()
    assert chosen.export.quant == "Q8_0" and size["measured_kl"] == 0.01


def test_the_source_type_is_the_type_of_most_layer_weights_and_requantizing_to_it_round_trips(tiny_llama, tmp_path):
    """A Q4_1 base read back (dequantized) and quantized to Q4_1 again keeps its layer matrices' blocks."""
    from ppgguf.inputs.base import load_base

    assert source_quant(tiny_llama.dir) is None
    f32, source = tmp_path / "m.f32.gguf", tmp_path / "m.q4_1.gguf"
    export_gguf(tiny_llama.fresh(), tiny_llama.base.family, tiny_llama.base.tokenizer_spec, f32, "F32")
    quantize(f32, source, "Q4_1")
    assert source_quant(source) == "Q4_1"
    reread, again = tmp_path / "again.f32.gguf", tmp_path / "again.q4_1.gguf"
    base = load_base(str(source), tmp_path)
    export_gguf(base.model, base.family, base.tokenizer_spec, reread, "F32")
    quantize(reread, again, "Q4_1", allow_requantize=True)
    block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_1][1]
    first, second = ({t.name: t.data.reshape(-1, block_bytes) for t in gguf.GGUFReader(path).tensors
                      if t.name.startswith("blk.") and len(t.shape) >= 2} for path in (source, again))
    blocks_kept = np.mean(np.concatenate([np.all(first[name] == second[name], axis=1) for name in first]))
    assert blocks_kept > 0.9
    assert source_quant(again) == "Q4_1"


def test_auto_refuses_the_knobs_it_chooses_unless_a_type_is_given(tiny_llama, tmp_path):
    with pytest.raises(UserError, match=r"^--imatrix, --embedding-quant say how a quant type is made: add --quant"):
        check_target_options(load_recipe(None), {"imatrix": "none", "embedding_quant": "Q4_0"})
    check_target_options(with_overrides(load_recipe(None), {"quant": "Q4_0"}), {"quant": "Q4_0", "imatrix": "none"})
    assert load_recipe(None).export.quant == "auto"


def test_without_a_target_or_auto_the_recipe_is_kept_and_its_size_predicted(tiny_llama, tmp_path):
    sizes, (recipe, spec, persona) = _sizes(tiny_llama, tmp_path)
    recipe = with_overrides(recipe, {"quant": "Q4_K_M"})
    work = tmp_path / "work"
    work.mkdir()
    chosen, size = fit_to_size(recipe, tiny_llama.base, spec, persona, work)
    assert chosen == recipe and size["predicted_bytes"] > 0 and "target_mib" not in size
    assert not list(work.iterdir())  # the shape files are gone


def test_a_target_with_the_knobs_it_chooses_is_refused(tiny_llama, tmp_path):
    with pytest.raises(UserError, match="--target-size chooses .* drop --quant, --embedding-quant, --per-layer"):
        build(BuildOptions(character=CHARACTER, out=tmp_path / "m.gguf", device="cpu", overrides={
            "base": str(tiny_llama.dir), "target_size_mib": 50.0, "quant": "Q4_0", "uniform": False,
            "embedding_quant": "Q4_0"}))
    with pytest.raises(UserError, match="--target-size must be a size in MiB"):
        with_overrides(load_recipe(None), {"target_size_mib": -1.0})


def _tiny_build(tiny_llama, tmp_path, quant: str) -> tuple[dict, list[str]]:
    """A build of the tiny recipe at `quant`: its report and progress messages."""
    from test_build import TINY_RECIPE

    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    messages: list[str] = []
    result = build(BuildOptions(character=CHARACTER, out=tmp_path / "m.gguf", recipe=str(recipe), device="cpu",
                                overrides={"base": str(tiny_llama.dir), "quant": quant}), progress=messages.append)
    return json.loads(result.report_path.read_text(encoding="utf-8")), [str(m) for m in messages]


def test_a_build_states_its_size_before_the_long_stages_and_meets_it(tiny_llama, tmp_path):
    report, messages = _tiny_build(tiny_llama, tmp_path, "Q4_K_M")
    predicted = [i for i, m in enumerate(messages) if m.startswith("Predicted file size")]
    calibrating = [i for i, m in enumerate(messages) if "calibration" in m]
    assert predicted and calibrating and predicted[0] < calibrating[0]
    assert report["size"]["predicted_bytes"] == report["file_bytes"]


def test_a_default_build_chooses_its_types_and_writes_a_file_smaller_than_the_base(tiny_llama, tmp_path):
    from ppgguf.inputs.shapes import model_shape

    report, messages = _tiny_build(tiny_llama, tmp_path, "auto")
    source = model_shape(tiny_llama.dir).source_bytes  # F32 safetensors: F16, the lowest measured KL, fits
    assert report["recipe"]["quant"] == "F16" and report["size"]["chosen"].startswith("FFN sparsity 0, F16")
    assert report["size"]["predicted_bytes"] == report["file_bytes"] < source == report["size"]["source_bytes"]
    assert any(m.startswith("Predicted file size") and "% of the base's" in m for m in messages)
