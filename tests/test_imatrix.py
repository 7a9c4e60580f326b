"""Importance matrices: collection on tiny models, llama-imatrix's GGUF format, and quantizing with one."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppgguf.errors import UserError
from ppgguf.export.imatrix import ImportanceMatrix, collect_imatrix, read_imatrix_gguf, write_imatrix_gguf
from ppgguf.export.quantize import embedding_width, quantize
from ppgguf.export.writer import export_gguf
from ppgguf.llama.quant_types import QUANT_TYPES, check_imatrix_needed, check_quant_type
from ppgguf.llama.runtime import open_gguf
from ppgguf.pruning.surgery import apply_plan

from test_surgery import per_layer_plan, uniform_plan
from tiny_models import make_model


def test_collected_means_equal_a_direct_computation(tiny_llama, token_sequences):
    model = tiny_llama.fresh()
    imatrix = collect_imatrix(model, tiny_llama.base.family, token_sequences)

    mlp = model.model.layers[1].mlp
    captured = []
    handle = mlp.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    with torch.no_grad():
        for ids in token_sequences:
            model(torch.tensor([ids]))
        handle.remove()
        h = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).double()
        down_input = F.silu(h @ mlp.gate_proj.weight.double().T) * (h @ mlp.up_proj.weight.double().T)
    expected = (down_input.square().sum(0) / down_input.shape[0]).numpy()

    tokens = sum(len(s) for s in token_sequences)
    assert imatrix.counts["blk.1.ffn_down.weight"] == tokens
    np.testing.assert_allclose(imatrix.means()["blk.1.ffn_down.weight"], expected, rtol=1e-4)
    # Q, K and V read the same normalised input
    means = imatrix.means()
    np.testing.assert_array_equal(means["blk.0.attn_q.weight"], means["blk.0.attn_k.weight"])
    np.testing.assert_array_equal(means["blk.0.attn_q.weight"], means["blk.0.attn_v.weight"])
    assert imatrix.chunk_count == len(token_sequences) and imatrix.chunk_size == 24


def _model(tiny, kind):
    if kind == "tied":
        return make_model(tiny.family, tiny.vocab_size, seed=5, tied=True)
    model = tiny.fresh()
    if kind == "dense":
        return model
    return apply_plan(model, uniform_plan(model) if kind == "uniform" else per_layer_plan(model))


@pytest.mark.parametrize("kind", ["dense", "uniform", "per-layer", "tied"])
def test_every_quantized_matrix_has_an_entry(tiny, kind, token_sequences, tmp_path):
    model = _model(tiny, kind)
    path = tmp_path / "m.f32.gguf"
    written = export_gguf(model, tiny.base.family, tiny.base.tokenizer_spec, path, "F32")
    imatrix = collect_imatrix(model, tiny.base.family, token_sequences)

    # The token embedding is a matmul's input only where it is the output matrix too (tied).
    matrices = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(path).tensors
                if len(t.shape) >= 2 and (t.name != "token_embd.weight" or kind == "tied")}
    assert {name: len(v) for name, v in imatrix.means().items()} == matrices, written["architecture"]
    assert ("output.weight" in matrices) == (kind != "tied")
    assert not model.training


def test_a_tied_embedding_is_weighed_by_the_output_matmul_inputs(tiny, token_sequences):
    model = make_model(tiny.family, tiny.vocab_size, seed=5, tied=True)
    imatrix = collect_imatrix(model, tiny.base.family, token_sequences)
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda module, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for ids in token_sequences:
            model(torch.tensor([ids]))
    handle.remove()
    inputs = torch.cat(seen).double()
    np.testing.assert_allclose(imatrix.means()["token_embd.weight"], inputs.square().mean(0).numpy(), rtol=1e-5)


def test_write_read_round_trip_in_llama_imatrix_format(tiny_qwen2, token_sequences, tmp_path):
    imatrix = collect_imatrix(tiny_qwen2.fresh(), tiny_qwen2.base.family, token_sequences)
    path = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(imatrix, path, ["persona: Ada (3 sequences)"])

    reader = gguf.GGUFReader(path)
    assert reader.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in reader.fields
    assert reader.fields["imatrix.datasets"].contents() == ["persona: Ada (3 sequences)"]
    assert reader.fields["imatrix.chunk_count"].contents() == 3
    assert reader.fields["imatrix.chunk_size"].contents() == 24
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {n + s for n in imatrix.sums for s in (".in_sum2", ".counts")}
    sum2, counts = tensors["blk.0.ffn_down.weight.in_sum2"], tensors["blk.0.ffn_down.weight.counts"]
    assert sum2.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(sum2.shape) == [256, 1] and list(counts.shape) == [1, 1]  # ggml order: [columns, matrices]
    assert counts.data[0, 0] == 72

    back = read_imatrix_gguf(path)
    assert back.counts == imatrix.counts and back.datasets == ["persona: Ada (3 sequences)"]
    assert (back.chunk_count, back.chunk_size) == (3, 24)
    for name, mean in imatrix.means().items():
        np.testing.assert_allclose(back.means()[name], mean, rtol=1e-6)


def test_read_refuses_other_gguf(tiny_llama, tmp_path):
    path = tmp_path / "model.gguf"
    export_gguf(tiny_llama.fresh(), tiny_llama.base.family, tiny_llama.base.tokenizer_spec, path, "F32")
    with pytest.raises(UserError, match="not an importance matrix"):
        read_imatrix_gguf(path)


@pytest.fixture(scope="module")
def f32_llama(tiny_llama, token_sequences, tmp_path_factory):
    """The tiny llama as an F32 GGUF, and its importance matrix."""
    model = tiny_llama.fresh()
    path = tmp_path_factory.mktemp("imatrix") / "m.f32.gguf"
    export_gguf(model, tiny_llama.base.family, tiny_llama.base.tokenizer_spec, path, "F32")
    return path, collect_imatrix(model, tiny_llama.base.family, token_sequences)


def _matrix_bytes(path) -> dict[str, bytes]:
    return {t.name: t.data.tobytes() for t in gguf.GGUFReader(path).tensors if len(t.shape) >= 2}


def _constant(imatrix: ImportanceMatrix, value: float) -> ImportanceMatrix:
    sums = {name: np.full_like(s, value * imatrix.counts[name]) for name, s in imatrix.sums.items()}
    return ImportanceMatrix(sums, dict(imatrix.counts), imatrix.chunk_count, imatrix.chunk_size)


def test_imatrix_changes_q4_0_rounding_and_loads(f32_llama, tmp_path):
    src, imatrix = f32_llama
    plain, weighted, flat = tmp_path / "plain.gguf", tmp_path / "weighted.gguf", tmp_path / "flat.gguf"
    assert "imatrix_entries" not in quantize(src, plain, "Q4_0", threads=2)
    report = quantize(src, weighted, "Q4_0", threads=2, imatrix=imatrix)
    assert report["imatrix_entries"] == len(imatrix.sums) == 15  # 7 per layer and output
    quantize(src, flat, "Q4_0", threads=2, imatrix=_constant(imatrix, 1.0))

    plain_bytes, weighted_bytes, flat_bytes = (_matrix_bytes(p) for p in (plain, weighted, flat))
    for name in ("blk.0.ffn_down.weight", "blk.1.attn_q.weight"):
        assert plain_bytes[name] != weighted_bytes[name]
        assert flat_bytes[name] != weighted_bytes[name]  # the skew matters, not only its presence
    assert plain_bytes["token_embd.weight"] == weighted_bytes["token_embd.weight"]  # not measured
    assert report["fallbacks"] == quantize(src, plain, "Q4_0", threads=2)["fallbacks"]
    assert open_gguf(weighted, n_ctx=64, threads=2) is not None


def test_imatrix_of_other_widths_is_user_error(f32_llama, tmp_path):
    src, imatrix = f32_llama
    narrow = ImportanceMatrix({n: s[:32] for n, s in imatrix.sums.items()}, dict(imatrix.counts), 3, 24)
    with pytest.raises(UserError, match="imatrix size 32 is different from tensor size"):
        quantize(src, tmp_path / "x.gguf", "Q4_0", threads=2, imatrix=narrow)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("quant", ["IQ2_XXS", "IQ3_XS"])
def test_type_that_needs_an_imatrix_is_refused_without_one(f32_llama, tmp_path, quant):
    src, _ = f32_llama
    with pytest.raises(UserError) as err:
        quantize(src, tmp_path / "x.gguf", quant)
    message = str(err.value)
    assert message.startswith(f"{quant} needs an importance matrix") and "\n" not in message
    assert not list(tmp_path.iterdir())
    check_imatrix_needed(quant.lower(), has_imatrix=True)
    check_imatrix_needed("Q4_K_M", has_imatrix=False)
    assert check_quant_type(quant.lower()) == quant  # the recipe check alone still accepts it


@pytest.mark.parametrize("quant", ["IQ2_XXS", "IQ4_NL"])
def test_low_bit_type_with_an_imatrix_quantizes_and_loads(f32_llama, tmp_path, quant):
    src, imatrix = f32_llama
    dst = tmp_path / f"m.{quant}.gguf"
    report = quantize(src, dst, quant, threads=2, imatrix=imatrix)
    # ffn_down (256 columns) takes IQ2_XXS's 256-blocks; the 64-column matrices fall back to IQ4_NL, and
    # say so; output.weight (Q6_K in both mixes) falls back to Q8_0
    assert "IQ4_NL" in report["tensor_types"], report
    assert ("IQ2_XXS" in report["tensor_types"]) == (quant == "IQ2_XXS"), report
    fallbacks = {f["tensor"] for f in report["fallbacks"]}
    assert ("blk.0.ffn_gate.weight" in fallbacks) == (quant == "IQ2_XXS") and "output.weight" in fallbacks, report
    assert QUANT_TYPES[quant].needs_imatrix == (quant == "IQ2_XXS")
    assert open_gguf(dst, n_ctx=64, threads=2) is not None


@pytest.fixture(scope="module")
def f32_tied(tiny, token_sequences, tmp_path_factory):
    """A tiny llama whose output matrix is its token embedding, as an F32 GGUF, and its importance matrix."""
    model = make_model(tiny.family, tiny.vocab_size, seed=5, tied=True)
    path = tmp_path_factory.mktemp("tied") / "m.f32.gguf"
    export_gguf(model, tiny.base.family, tiny.base.tokenizer_spec, path, "F32")
    return path, collect_imatrix(model, tiny.base.family, token_sequences)


def test_the_embedding_type_is_set_and_weighed_by_its_output_entry(f32_tied, tmp_path):
    src, imatrix = f32_tied
    mix, low, unweighed = tmp_path / "mix.gguf", tmp_path / "low.gguf", tmp_path / "unweighed.gguf"
    quantize(src, mix, "IQ4_NL", threads=2, imatrix=imatrix)
    report = quantize(src, low, "IQ4_NL", threads=2, imatrix=imatrix, embedding_quant="q4_0")
    without = ImportanceMatrix({n: s for n, s in imatrix.sums.items() if n != "token_embd.weight"},
                               dict(imatrix.counts), imatrix.chunk_count, imatrix.chunk_size)
    quantize(src, unweighed, "IQ4_NL", threads=2, imatrix=without, embedding_quant="Q4_0")

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(low).tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert {t.name: t.tensor_type for t in gguf.GGUFReader(mix).tensors}["token_embd.weight"] != types["token_embd.weight"]
    assert report["embedding_quant"] == "Q4_0"
    assert "token_embd.weight" not in {f["tensor"] for f in report["fallbacks"]}  # asked for, not a fallback
    assert low.stat().st_size < mix.stat().st_size
    low_bytes, unweighed_bytes = _matrix_bytes(low), _matrix_bytes(unweighed)
    assert low_bytes["token_embd.weight"] != unweighed_bytes["token_embd.weight"]  # the output entry is used
    assert low_bytes["blk.0.ffn_down.weight"] == unweighed_bytes["blk.0.ffn_down.weight"]
    assert open_gguf(low, n_ctx=64, threads=2) is not None


def test_an_untied_output_matrix_takes_the_embedding_type_too(tiny, tmp_path):
    """Where the output matrix is not the embedding (Qwen2.5-0.5B), the mixes keep it at 8 bits as well."""
    src, out = tmp_path / "m.f32.gguf", tmp_path / "m.gguf"
    export_gguf(make_model(tiny.family, tiny.vocab_size, seed=5), tiny.base.family, tiny.base.tokenizer_spec, src, "F32")
    report = quantize(src, out, "Q4_1", threads=2, embedding_quant="Q5_1")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["token_embd.weight"] == types["output.weight"] == gguf.GGMLQuantizationType.Q5_1
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_1
    assert not report["fallbacks"]


def test_an_embedding_type_whose_blocks_do_not_divide_the_rows_is_refused(f32_tied, tmp_path):
    src, _ = f32_tied
    width = embedding_width(src)
    assert width % 256  # the tiny model's width: 256-blocks do not fit
    for bad, match in [("Q4_K", f"needs rows divisible by 256, but this model's embedding is {width} wide"),
                       ("Q9_0", "unknown embedding quant type 'Q9_0'")]:
        with pytest.raises(UserError, match=match) as err:
            quantize(src, tmp_path / "x.gguf", "IQ4_NL", embedding_quant=bad)
        assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())
