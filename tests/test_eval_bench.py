"""`ppgguf eval` / `ppgguf bench` and the measures behind them, on tiny random GGUFs that carry the
real default model's tokenizer (hidden 64, 2 layers: they load and run in milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path
import zlib

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from ppgguf import evaluate as evaluate_mod
from ppgguf import measure
from ppgguf.base import resolve_base
from ppgguf.cli import app
from ppgguf.errors import UserError
from ppgguf.export import export_gguf
from ppgguf.families import FAMILIES
from ppgguf.tokenizer import TokenizerSpec

SYSTEM = "You are Captain Mirela Voss. Stay in character.\n\nMirela commands a cargo airship and loves storms."
DESCRIPTION = "Mirela commands a patched-up cargo airship over a steampunk harbor city and loves storms."


@pytest.fixture(scope="module")
def spec() -> TokenizerSpec:
    path = resolve_base(None)
    return measure.read_header(path, full=True).tokenizer_spec()


def _tiny(path: Path, spec: TokenizerSpec, n_ff: int, seed: int, persona: bool = True) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(spec.tokens), hidden_size=64, intermediate_size=n_ff, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
        tie_word_embeddings=True, rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).eval()
    extra = {"ppgguf.system_prompt": SYSTEM, "ppgguf.persona.name": "Captain Mirela Voss",
             "ppgguf.persona.description": DESCRIPTION} if persona else {}
    export_gguf(model, FAMILIES["llama"], spec, path, "F32", general={"name": path.stem}, extra=extra)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, spec) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("evalbench")
    other = TokenizerSpec(dict(spec.fields))
    tokens = list(spec.tokens)
    tokens[1000] = tokens[1000] + "x"
    other.set(gguf.Keys.Tokenizer.LIST, tokens, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    return {
        "dense": _tiny(d / "dense.gguf", spec, 128, 0, persona=False),
        "npc": _tiny(d / "npc.gguf", spec, 64, 1),
        "other": _tiny(d / "other.gguf", other, 64, 2),
    }


def fake_embed(texts: list[str]) -> np.ndarray:
    """Bag of hashed words, L2-normalized: similar texts share words.

    crc32, not hash(): Python salts str hashes per process, so colliding buckets changed run to run.
    """
    out = np.zeros((len(texts), 4096))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.strip(".,!?").encode()) % 4096] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_bound_on_known_sizes():
    untied = [
        ("token_embd.weight", [64, 1000], 64000),  # a lookup: one row per token, not counted
        ("output.weight", [64, 1000], 64000),
        ("blk.0.attn_q.weight", [64, 64], 4096),
        ("blk.0.ffn_up.weight", [64, 128], 8192),
        ("blk.0.attn_norm.weight", [64], 256),  # 1-D: not a matrix
        ("rope_freqs.weight", [8, 1], 32),
    ]
    assert measure.matrix_bytes_per_token(untied) == 64000 + 4096 + 8192
    tied = [t for t in untied if t[0] != "output.weight"]  # token_embd doubles as the output matrix
    assert measure.matrix_bytes_per_token(tied) == 64000 + 4096 + 8192
    pruned = [("token_embd.weight", [64, 1000], 64000), ("blk.0.attn_q.weight", [64, 32], 2048),
              ("blk.0.ffn_up.weight", [64, 64], 4096)]
    dense_info = measure.GGUFInfo(Path("d"), "d", None, None, None, "h", 0, measure.matrix_bytes_per_token(tied))
    npc_info = measure.GGUFInfo(Path("n"), "n", None, None, None, "h", 0, measure.matrix_bytes_per_token(pruned))
    assert measure.bound_speedup(dense_info, npc_info) == pytest.approx(76288 / 70144)


def test_bound_from_gguf(files):
    header = measure.read_header(files["dense"])
    vocab = len(header.get(gguf.Keys.Tokenizer.LIST))
    # tied, F32: embedding/output once + per layer q(64x64) k,v(64x32) o(64x64) + 3 FFN (64x128)
    per_layer = 4 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)
    assert measure.gguf_matrix_bytes(files["dense"]) == 4 * vocab * 64 + 2 * per_layer


def test_tokenizer_mismatch_refused(files):
    with pytest.raises(UserError, match="different tokenizers"):
        evaluate_mod.evaluate(files["other"], files["dense"], embed=fake_embed)
    result = CliRunner().invoke(app, ["bench", str(files["other"]), "--against", str(files["dense"]), "--reps", "1", "--threads", "1"])
    assert result.exit_code == 2
    assert "different tokenizers" in result.output
    assert measure.read_info(files["npc"]).tokenizer_hash == measure.read_info(files["dense"]).tokenizer_hash


def test_attribution_with_fake_embedder():
    others = ["A dwarven blacksmith who hammers iron at a mountain forge.", "A court wizard who studies old books."]
    answers = ["The airship sails into the storms over the harbor city.", "Iron and the forge, hammer it well."]
    result = measure.attribution(answers, DESCRIPTION, others, embed=fake_embed)
    assert result["accuracy"] == 0.5 and result["answers"] == 2 and result["candidates"] == 3
    # The margin is graded: positive when the own description leads, negative when another one does.
    assert measure.attribution(answers[:1], DESCRIPTION, others, embed=fake_embed)["mean_margin"] > 0
    assert measure.attribution(answers[1:], DESCRIPTION, others, embed=fake_embed)["mean_margin"] < 0


def test_eval_json(files, monkeypatch):
    monkeypatch.setattr(measure, "load_embedder", lambda: fake_embed)
    gk = measure.load_general_knowledge()
    assert len(gk) >= 40 and all(0 <= q["answer"] < len(q["choices"]) for q in gk)
    monkeypatch.setattr(measure, "load_general_knowledge", lambda path=None: gk[:2])
    result = CliRunner().invoke(
        app, ["eval", str(files["npc"]), "--against", str(files["dense"]), "-n", "3", "--max-tokens", "4", "--threads", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["questions"] == 3
    assert report["kl"]["kl_mean"] > 0 and report["kl"]["tokens"] > 0
    assert set(report["attribution"]) == {"dense", "npc"}
    assert 0 <= report["attribution"]["npc"]["accuracy"] <= 1
    assert set(report["general_knowledge"]) >= {"dense", "npc", "questions"}
    assert report["general_knowledge"]["questions"] == 2
    assert len(report["samples"]) == 3 and {"question", "dense", "npc"} <= set(report["samples"][0])


def test_eval_needs_system_prompt(files):
    with pytest.raises(UserError, match="system_prompt"):
        evaluate_mod.evaluate(files["dense"], files["npc"], embed=fake_embed)


def test_kl_of_a_model_with_itself_is_zero(files):
    from ppgguf.llama_io import open_gguf

    a = open_gguf(files["npc"], n_ctx=64, logits_all=True)
    b = open_gguf(files["npc"], n_ctx=64, logits_all=True)
    try:
        seqs = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]]
        same = measure.teacher_forced_kl(a, b, seqs, [(3, 6), (3, 5)])
        assert same["tokens"] == 5 and abs(same["kl_mean"]) < 1e-6
    finally:
        a.close()
        b.close()


def test_bench_json(files):
    result = CliRunner().invoke(
        app, ["bench", str(files["npc"]), "--against", str(files["dense"]), "--reps", "2", "--tokens", "8", "--threads", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["models"]) == {"dense", "npc"}
    for row in report["models"].values():
        for key in ("pp_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_memory_bytes", "file_bytes"):
            assert row[key] >= 0
        assert len(row["decode_tokens_per_s_runs"]) == 2
    assert set(report["speedup"]) >= {"decode", "pp", "bound", "size"}
    assert report["speedup"]["bound"] > 1  # the npc has the narrower FFN
    alone = CliRunner().invoke(app, ["bench", str(files["npc"]), "--reps", "1", "--tokens", "4", "--threads", "1", "--json"])
    assert alone.exit_code == 0, alone.output
    assert "speedup" not in json.loads(alone.stdout)


def test_build_figure(tmp_path):
    from ppgguf.figure import write_build_figure

    report = {
        "character": "Mirela", "widths": [{"n_ff": 768, "n_head": 6, "n_head_kv": 2}] * 4,
        "parameters": {"dense": 1000, "pruned": 600}, "file_bytes": 2**20,
        "recipe": {"method": "magnitude", "ffn_sparsity": 0.5, "head_sparsity": 0.33, "quant": "Q8_0"},
    }
    out = write_build_figure(report, tmp_path / "fig.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
