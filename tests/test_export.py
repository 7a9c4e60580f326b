"""Export to GGUF, quantize with llama.cpp, and the validation gate, on tiny random models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ppgguf.export.writer
from ppgguf.build.validate import ValidationError, agreement, gguf_logits_all, torch_logits, validate_gguf
from ppgguf.cli import app
from ppgguf.errors import UserError
from ppgguf.export.quantize import quantize
from ppgguf.export.writer import export_gguf
from ppgguf.inputs.families import FAMILIES
from ppgguf.llama.quant_types import QUANT_TYPES, check_quant_type
from ppgguf.llama.reader import read_header
from ppgguf.pruning.surgery import apply_plan, layer_widths

from tiny_models import make_model
from test_surgery import per_layer_plan, uniform_plan

# (family, plan kind) -> the architecture llama.cpp must be given
CASES = {
    ("llama", "uniform"): "llama",
    ("llama", "per-layer"): "deci",
    ("qwen2", "dense-heads"): "qwen2",  # FFN pruned, every head kept: qwen2's own graph
    ("qwen2", "uniform"): "llama",  # qwen2's graph cannot take pruned heads (see export.choose_arch)
    ("qwen2", "per-layer"): "deci",
    ("qwen3", "uniform"): "qwen3",  # qwen3's graph reads the head count: pruned heads stay qwen3
}


def pruned(tiny, kind):
    from ppgguf.pruning.importance import SCORERS, ScoringInputs
    from ppgguf.pruning.plan import make_plan

    model = tiny.fresh()
    if kind == "uniform":
        plan = uniform_plan(model)
    elif kind == "per-layer":
        plan = per_layer_plan(model)
    else:
        plan = make_plan(SCORERS["magnitude"](ScoringInputs(model=model)), 0.5, 0.0)
    return apply_plan(model, plan)


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory, token_sequences):
    """Lazily built F32 exports: (family, kind) -> (path, pruned model, PyTorch logits, written)."""
    cache = {}
    root = tmp_path_factory.mktemp("export")

    def get(family, kind):
        if (family, kind) not in cache:
            tiny = request.getfixturevalue(f"tiny_{family}")
            model = pruned(tiny, kind)
            path = root / f"{family}-{kind}.f32.gguf"
            written = export_gguf(model, tiny.base.family, tiny.base.tokenizer_spec, path, "F32")
            cache[family, kind] = (path, model, torch_logits(model, token_sequences), written)
        return cache[family, kind]

    return get


@pytest.mark.parametrize("family,kind", list(CASES))
def test_export_f32_agrees_with_pytorch(exported, family, kind, token_sequences):
    path, model, reference, written = exported(family, kind)
    assert written["architecture"] == CASES[family, kind]
    assert written["widths"] == layer_widths(model)
    assert not list(path.parent.glob("*.partial"))

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    assert arch == CASES[family, kind]
    assert reader.fields[f"{arch}.attention.key_length"].contents() == 16
    ffn = reader.fields[f"{arch}.feed_forward_length"].contents()
    widths = [w["n_ff"] for w in written["widths"]]
    assert (ffn == widths) if kind == "per-layer" else (ffn == widths[0])
    names = {t.name for t in reader.tensors}
    assert "output.weight" in names  # untied output
    if family == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names

    result = agreement(reference, gguf_logits_all(path, token_sequences))
    assert result.positions == sum(len(s) for s in token_sequences)
    assert result.top1_strict >= 0.99, result
    assert result.kl_mean < 1e-4 and result.kl_max < 1e-3, result


def test_qwen3_query_key_norms_reach_llama_cpp(exported, token_sequences):
    """Without the per-head Q/K norms in the file the logits would differ: flattening them shows it."""
    path, model, reference, _ = exported("qwen3", "uniform")
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= {t.name for t in gguf.GGUFReader(path).tensors}
    flat = copy.deepcopy(model)
    with torch.no_grad():
        for layer in flat.model.layers:
            layer.self_attn.q_norm.weight.fill_(1.0)
            layer.self_attn.k_norm.weight.fill_(1.0)
    without = agreement(torch_logits(flat, token_sequences), gguf_logits_all(path, token_sequences))
    assert without.kl_mean > 100 * agreement(reference, gguf_logits_all(path, token_sequences)).kl_mean + 1e-3


def test_qwen3_per_layer_widths_are_refused(tiny_qwen3, tmp_path):
    model = pruned(tiny_qwen3, "per-layer")
    with pytest.raises(UserError, match="deci graph.*qwen3.*uniform widths"):
        export_gguf(model, tiny_qwen3.base.family, tiny_qwen3.base.tokenizer_spec, tmp_path / "m.gguf", "F32")


def test_qwen3_gguf_loads_back_as_a_base_model(exported, tiny_qwen3, token_sequences, tmp_path):
    """A Qwen3 GGUF as `--base`: the weights read back are the ones written."""
    from ppgguf.inputs.base import load_base

    path, model, reference, _ = exported("qwen3", "uniform")
    loaded = load_base(str(path), tmp_path).model
    assert loaded.config.model_type == "qwen3"
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_qwen2_biases_reach_llama_cpp(exported, token_sequences):
    """Per-layer qwen2 (deci) and head-pruned qwen2 (llama) use the Q/K/V biases: without them the logits differ."""
    for kind in ("per-layer", "uniform"):
        path, model, reference, _ = exported("qwen2", kind)
        no_bias = copy.deepcopy(model)
        with torch.no_grad():
            for layer in no_bias.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.zero_()
        without = agreement(torch_logits(no_bias, token_sequences), gguf_logits_all(path, token_sequences))
        assert without.kl_mean > 100 * agreement(reference, gguf_logits_all(path, token_sequences)).kl_mean + 1e-3


def test_export_f16_halves_matrices(exported, tmp_path):
    path32, model, _, _ = exported("llama", "uniform")
    spec = read_header(path32, full=True).tokenizer_spec()
    path16 = tmp_path / "m.f16.gguf"
    export_gguf(model, FAMILIES["llama"], spec, path16, "F16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path16).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


# ---------------------------------------------------------------- quantization


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    src = exported("llama", "uniform")[0]
    cache = {}

    def get(quant):
        if quant not in cache:
            dst = root / f"m.{quant}.gguf"
            cache[quant] = (dst, quantize(src, dst, quant, threads=2))
        return cache[quant]

    return get


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q5_0", "Q4_0", "Q4_K_M"])
def test_quantized_types_load_in_llama_cpp(quantized, exported, quant, token_sequences):
    dst, report = quantized(quant)
    assert report["quant"] == quant
    assert not list(dst.parent.glob("*.partial"))
    assert dst.stat().st_size < exported("llama", "uniform")[0].stat().st_size
    reference = exported("llama", "uniform")[2]
    result = agreement(reference, gguf_logits_all(dst, token_sequences))
    assert np.isfinite(result.kl_mean)
    if quant in ("F16", "Q8_0"):
        assert result.top1 >= 0.95 and result.kl_mean < 0.01, result
    requested = {t.name for t in QUANT_TYPES[quant][1]}
    if quant != "Q4_K_M":  # every Q4_K_M matrix falls back at hidden 64 (test_quant_report_lists_fallbacks)
        assert requested & set(report["tensor_types"]), report


def test_quant_report_lists_fallbacks(quantized):
    # hidden 64 is not a multiple of 256: llama.cpp cannot store K-quant blocks and falls back
    _, report = quantized("Q4_K_M")
    assert report["fallbacks"], report
    assert all(f["type"] not in ("Q4_K", "Q6_K") for f in report["fallbacks"])
    assert all(f["row"] % 256 != 0 for f in report["fallbacks"])
    assert "Q4_K" not in report["tensor_types"]
    # F16 needs nothing outside its type
    assert quantized("F16")[1]["fallbacks"] == []
    assert quantized("Q8_0")[1]["fallbacks"] == []


def test_unknown_quant_type_is_user_error(exported, tmp_path):
    with pytest.raises(UserError, match="unknown quant type"):
        quantize(exported("llama", "uniform")[0], tmp_path / "x.gguf", "Q3_XYZ")
    assert check_quant_type("q4_k_m") == "Q4_K_M"
    assert not (tmp_path / "x.gguf").exists()


def test_quantize_unreadable_source_is_user_error(tmp_path):
    src = tmp_path / "bad.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(UserError, match="could not quantize"):
        quantize(src, tmp_path / "out.gguf", "Q8_0")
    assert not list(tmp_path.glob("out.gguf*"))


# ---------------------------------------------------------------- validation gate


def test_validate_passes_correct_f16(quantized, exported, token_sequences):
    _, model, reference, _ = exported("llama", "uniform")
    report = validate_gguf(quantized("F16")[0], model, token_sequences, reference, "F16")
    assert report["gated"] and report["top1"] >= 0.99 and report["kl_mean"] < 1e-3


def test_validate_fails_against_other_model(quantized, tiny_llama, token_sequences):
    other = make_model("llama", tiny_llama.vocab_size, seed=99)
    reference = torch_logits(other, token_sequences)
    with pytest.raises(ValidationError, match="disagrees"):
        validate_gguf(quantized("F16")[0], other, token_sequences, reference, "F16")
    # quantized types below the gate are measured, not failed
    report = validate_gguf(quantized("Q4_0")[0], other, token_sequences, reference, "Q4_0")
    assert report["gated"] is False and report["top1"] < 0.9


def test_validate_fails_for_wrong_permutation(tiny_llama, token_sequences, tmp_path, monkeypatch):
    model = pruned(tiny_llama, "uniform")
    monkeypatch.setattr(ppgguf.export.writer, "permute_for_gguf", lambda w, n_head: w)
    path = tmp_path / "broken.gguf"
    export_gguf(model, tiny_llama.base.family, tiny_llama.base.tokenizer_spec, path, "F16")
    with pytest.raises(ValidationError):
        validate_gguf(path, model, token_sequences, torch_logits(model, token_sequences), "F16")


def test_validate_fails_for_truncated_file(quantized, exported, tmp_path, token_sequences):
    _, model, reference, _ = exported("llama", "uniform")
    data = quantized("F16")[0].read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationError, match="does not load"):
        validate_gguf(path, model, token_sequences, reference, "F16")


# ---------------------------------------------------------------- ppgguf inspect


def test_cli_inspect(exported):
    path, model, _, written = exported("llama", "per-layer")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["architecture"] == "deci"
    assert info["layers"] == 2
    assert info["widths"] == written["widths"]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["file_type"] == "ALL_F32"

    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0 and "deci" in result.stdout

    missing = runner.invoke(app, ["inspect", str(Path(path).with_name("nope.gguf"))])
    assert missing.exit_code == 2
    assert "no such file" in missing.output


def test_agreement_in_blocks_equals_the_direct_formula():
    generator = np.random.default_rng(0)
    reference = [generator.normal(size=(n, 50)).astype(np.float32) for n in (5, 300)]  # 300 spans 3 blocks
    other = [r + generator.normal(scale=0.5, size=r.shape).astype(np.float32) for r in reference]
    ref, oth = (torch.from_numpy(np.concatenate(x)).double() for x in (reference, other))
    kl = (ref.softmax(-1) * (ref.log_softmax(-1) - oth.log_softmax(-1))).sum(-1)
    result = agreement(reference, other)
    assert result.positions == 305
    assert result.kl_mean == pytest.approx(float(kl.mean()), rel=1e-12)
    assert result.kl_max == pytest.approx(float(kl.max()), rel=1e-12)
    assert result.top1_strict == pytest.approx(float((ref.argmax(-1) == oth.argmax(-1)).double().mean()))
    assert 0 < result.top1_strict < 1
