"""`ppgguf eval` / `ppgguf bench` and the measures behind them, on tiny random GGUFs that carry the
real default model's tokenizer (hidden 64, 2 layers: they load and run in milliseconds)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from ppgguf.cli import app
from ppgguf.errors import UserError
from ppgguf.evaluation import fidelity, speed
from ppgguf.export.writer import export_gguf
from ppgguf.inputs.base import resolve_base
from ppgguf.inputs.families import FAMILIES
from ppgguf.llama.reader import read_header
from ppgguf.llama.tokenizer_spec import TokenizerSpec
from ppgguf.use import evaluate as evaluate_mod
from tiny_models import make_model

SYSTEM = "You are Captain Mirela Voss. Stay in character.\n\nMirela commands a cargo airship and loves storms."
DESCRIPTION = "Mirela commands a patched-up cargo airship over a steampunk harbor city and loves storms."


@pytest.fixture(scope="module")
def spec() -> TokenizerSpec:
    path = resolve_base(None)
    return read_header(path, full=True).tokenizer_spec()


def _tiny(path: Path, spec: TokenizerSpec, n_ff: int, seed: int, persona: bool = True) -> Path:
    model = make_model("llama", len(spec.tokens), seed, tied=True, intermediate=n_ff, bos_token_id=1, eos_token_id=2)
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
    assert speed.matrix_bytes_per_token(untied) == 64000 + 4096 + 8192
    tied = [t for t in untied if t[0] != "output.weight"]  # token_embd doubles as the output matrix
    assert speed.matrix_bytes_per_token(tied) == 64000 + 4096 + 8192
    pruned = [("token_embd.weight", [64, 1000], 64000), ("blk.0.attn_q.weight", [64, 32], 2048),
              ("blk.0.ffn_up.weight", [64, 64], 4096)]
    bound = speed.bound_speedup(speed.matrix_bytes_per_token(tied), speed.matrix_bytes_per_token(pruned))
    assert bound == pytest.approx(76288 / 70144)


def test_bound_from_gguf(files):
    header = read_header(files["dense"])
    vocab = len(header.get(gguf.Keys.Tokenizer.LIST))
    # tied, F32: embedding/output once + per layer q(64x64) k,v(64x32) o(64x64) + 3 FFN (64x128)
    per_layer = 4 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)
    assert speed.matrix_bytes_per_token(header.tensors) == 4 * vocab * 64 + 2 * per_layer


def test_tokenizer_mismatch_refused(files):
    with pytest.raises(UserError, match="different tokenizers"):
        evaluate_mod.evaluate(files["other"], files["dense"], embed=fake_embed)
    result = CliRunner().invoke(app, ["bench", str(files["other"]), "--against", str(files["dense"]), "--reps", "1", "--threads", "1"])
    assert result.exit_code == 2
    assert "different tokenizers" in result.output
    assert evaluate_mod.read_info(files["npc"]).tokenizer_hash == evaluate_mod.read_info(files["dense"]).tokenizer_hash


def test_attribution_with_fake_embedder():
    others = ["A dwarven blacksmith who hammers iron at a mountain forge.", "A court wizard who studies old books."]
    answers = ["The airship sails into the storms over the harbor city.", "Iron and the forge, hammer it well."]
    result = fidelity.attribution(answers, DESCRIPTION, others, embed=fake_embed)
    assert result["accuracy"] == 0.5 and result["answers"] == 2 and result["candidates"] == 3
    # The margin is graded: positive when the own description leads, negative when another one does.
    assert fidelity.attribution(answers[:1], DESCRIPTION, others, embed=fake_embed)["mean_margin"] > 0
    assert fidelity.attribution(answers[1:], DESCRIPTION, others, embed=fake_embed)["mean_margin"] < 0


def test_eval_json(files, monkeypatch):
    monkeypatch.setattr(fidelity, "load_embedder", lambda: fake_embed)
    gk = fidelity.load_general_knowledge()
    assert len(gk) >= 40 and all(0 <= q["answer"] < len(q["choices"]) for q in gk)
    monkeypatch.setattr(fidelity, "load_general_knowledge", lambda path=None: gk[:2])
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
    assert set(report["repetition"]) == {"dense", "npc"} and all(0 <= r <= 1 for r in report["repetition"].values())
    assert len(report["samples"]) == 3 and {"question", "dense", "npc"} <= set(report["samples"][0])


def test_eval_needs_system_prompt(files):
    with pytest.raises(UserError, match="system_prompt"):
        evaluate_mod.evaluate(files["dense"], files["npc"], embed=fake_embed)


def test_kl_of_a_model_with_itself_is_zero(files):
    from ppgguf.llama.runtime import open_gguf

    a = open_gguf(files["npc"], n_ctx=64, logits_all=True)
    b = open_gguf(files["npc"], n_ctx=64, logits_all=True)
    try:
        seqs = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]]
        same = fidelity.teacher_forced_kl(a, b, seqs, [(3, 6), (3, 5)])
        assert same["tokens"] == 5 and abs(same["kl_mean"]) < 1e-6
    finally:
        a.close()
        b.close()


def test_kl_against_stored_dense_distributions_is_the_kl_against_the_dense_model(files):
    from ppgguf.llama.runtime import open_gguf

    dense = open_gguf(files["dense"], n_ctx=64, logits_all=True)
    npc = open_gguf(files["npc"], n_ctx=64, logits_all=True)
    try:
        seqs, spans = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]], [(3, 6), (2, 5)]
        direct = fidelity.teacher_forced_kl(dense, npc, seqs, spans)
        stored = fidelity.teacher_forced_kl(fidelity.answer_logprobs(dense, seqs, spans), npc, seqs, spans)
        assert direct == stored and direct["kl_mean"] > 1e-3  # two different models: not trivially zero
    finally:
        dense.close()
        npc.close()


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
    from ppgguf.build.figure import write_build_figure

    report = {
        "character": "Mirela", "widths": [{"n_ff": 768, "n_head": 6, "n_head_kv": 2}] * 4,
        "parameters": {"dense": 1000, "pruned": 600}, "file_bytes": 2**20,
        "recipe": {"method": "magnitude", "ffn_sparsity": 0.5, "head_sparsity": 0.33, "quant": "Q8_0"},
    }
    out = write_build_figure(report, tmp_path / "fig.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_figure_with_dense_widths(tmp_path):
    from ppgguf.build.figure import write_build_figure

    report = {
        "character": "Mirela $5 [bold]", "widths": [{"n_ff": 768, "n_head": 6, "n_head_kv": 2}] * 3,
        "dense_widths": [{"n_ff": 1536, "n_head": 9, "n_head_kv": 3}] * 2 + [{"n_ff": 1024, "n_head": 9, "n_head_kv": 3}],
        "parameters": {"dense": 1000, "pruned": 600}, "file_bytes": 2**20,
        "recipe": {"method": "magnitude", "ffn_sparsity": 0.5, "head_sparsity": 0.33, "quant": "Q8_0", "base": "$HOME/m"},
    }
    out = write_build_figure(report, tmp_path / "fig.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_draws_the_reported_dense_width_not_a_guess():
    from ppgguf.build.figure import layer_widths

    kept_rows = [{"n_ff": 1024, "n_head": 9, "n_head_kv": 3}] * 30
    report = {"widths": kept_rows, "dense_widths": [{"n_ff": 1536, "n_head": 9, "n_head_kv": 3}] * 30,
              "recipe": {"ffn_sparsity": 0.375, "head_sparsity": 0.0}}
    kept, dense = layer_widths(report)
    assert kept["n_ff"] == [1024] * 30
    assert dense["n_ff"] == [1536] * 30 and dense["n_head"] == [9] * 30  # kept / (1 - 0.375) would be 1632
    # a report from before builds recorded the dense widths: kept widths only, no guessed dense line
    del report["dense_widths"]
    assert layer_widths(report) == (kept, None)


def _eval_report(answer_dense: str, answer_npc: str) -> dict:
    return {
        "npc": {"path": "npc [v2].gguf"}, "dense": {"path": "dense.gguf"}, "character": "[bold]Mirela[/bold]",
        "kl": {"kl_mean": 0.1, "tokens": 10, "sequences": 2},
        "attribution": {"dense": {"accuracy": 1.0}, "npc": {"accuracy": 0.5, "candidates": 10}},
        "general_knowledge": {"dense": 0.8, "npc": 0.7, "questions": 5},
        "samples": [{"question": "What do you say [/x]?", "dense": answer_dense, "npc": answer_npc}],
    }


def test_model_text_is_printed_as_text_not_markup():
    import io

    from rich.console import Console

    from ppgguf.use.render import render_eval

    out = io.StringIO()
    render_eval(_eval_report("Ha! [laughs] The storm comes.", "Closing [/x] tags [red]everywhere"), Console(file=out, width=200))
    text = out.getvalue()
    for literal in ("[laughs]", "[/x]", "[red]everywhere", "[bold]Mirela[/bold]", "npc [v2].gguf", "What do you say [/x]?"):
        assert literal in text


def test_ctrl_c_in_eval_says_interrupted_only(files, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_mod, "evaluate", interrupted)
    result = CliRunner().invoke(app, ["eval", str(files["npc"]), "--against", str(files["dense"])])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "run directory" not in result.output


def test_greedy_answer_gives_ids_and_their_text(files):
    from ppgguf.llama.decode import greedy_answer, is_end
    from ppgguf.llama.runtime import open_gguf

    llm = open_gguf(files["npc"], n_ctx=64)
    try:
        answer = greedy_answer(llm, [1, 2, 3], 5)
        assert 1 <= len(answer.ids) <= 5 and not any(is_end(llm, t) for t in answer.ids[:-1])
        kept = [t for t in answer.ids if not is_end(llm, t)]
        assert answer.text == llm.detokenize(kept).decode("utf-8", errors="replace")
        assert greedy_answer(llm, [1, 2, 3], 5) == answer  # from an empty context each time
    finally:
        llm.close()
