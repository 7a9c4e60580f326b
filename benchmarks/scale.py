"""Time and memory of `ppgguf build` per base model and recipe, against ppgguf.build.memory's prediction.

Each build runs alone in a fresh process (`ppgguf build --json`) and reports its seconds and peak
resident memory per stage; the table puts the measured peak beside the one `ppgguf build` predicted
before loading anything. Run it with nothing else on the machine: two jobs on 2 cores double the times.

    .venv/bin/python benchmarks/scale.py --base smollm2-135m qwen-0.5b.gguf --recipe default quick
    .venv/bin/python benchmarks/scale.py --cold ...      # an empty PPGGUF_HOME per build: calibration included
    .venv/bin/python benchmarks/scale.py --predict       # the memory model alone, on published shapes

`--predict` needs no weights: it prints the predicted peak of the default recipe and of a pruning
build (FFN 0.5, healed; then with top-64 targets; then also without training the embedding and
output matrices; then top-64 with rank-16 LoRA adapters instead of the weights) for Llama-3.2-3B, Llama-3.1-8B and the Qwen2.5 sizes, from their config.json
values, with the source taken as a Q4_K_M GGUF (4.85 bits a weight).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ppgguf.build.memory import GiB, predicted_peak
from ppgguf.inputs.shapes import ModelShape
from ppgguf.recipe import load_recipe, with_overrides

ROOT = Path(__file__).resolve().parent.parent
CHARACTER = ROOT / "examples" / "captain_mirela.txt"
Q4_K_M_BYTES_PER_WEIGHT = 4.85 / 8

# config.json values of published checkpoints: hidden, layers, heads, KV heads, head dim, FFN width, vocabulary, tied.
PUBLISHED = {
    "SmolLM2-135M": (576, 30, 9, 3, 64, 1536, 49152, True),
    "Qwen2.5-0.5B": (896, 24, 14, 2, 64, 4864, 151936, True),
    "Qwen2.5-1.5B": (1536, 28, 12, 2, 128, 8960, 151936, True),
    "Llama-3.2-3B": (3072, 28, 24, 8, 128, 8192, 128256, True),
    "Llama-3.1-8B": (4096, 32, 32, 8, 128, 14336, 128256, False),
}


def published_shape(name: str) -> ModelShape:
    hidden, layers, heads, kv_heads, head_dim, ffn, vocab, tied = PUBLISHED[name]
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * ffn + 2 * hidden
    parameters = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
    return ModelShape(parameters=parameters, embedding_parameters=vocab * hidden * (1 if tied else 2), vocab=vocab,
                      hidden=hidden, layers=layers, kv_width=kv_heads * head_dim, heads=heads, ffn=ffn,
                      source_bytes=int(parameters * Q4_K_M_BYTES_PER_WEIGHT))


def predict_table() -> Table:
    default = load_recipe(None)
    pruning = with_overrides(default, {"ffn_sparsity": 0.5})
    top_k = with_overrides(pruning, {"teacher_top_k": 64})
    layers_only = with_overrides(top_k, {"train_embeddings": False})
    adapters = with_overrides(top_k, {"adapter_rank": 16})
    recipes = (default, pruning, top_k, layers_only, adapters)
    table = Table("model", "parameters", "default GiB", "FFN 0.5 healed GiB", "+ top-64 targets GiB",
                  "+ embeddings not trained GiB", "top-64 + rank-16 adapters GiB",
                  title="Predicted peak resident memory of ppgguf build (ppgguf.build.memory)")
    for name in PUBLISHED:
        shape = published_shape(name)
        peaks = [predicted_peak(shape, recipe)["total"] / GiB for recipe in recipes]
        table.add_row(name, f"{shape.parameters / 1e9:.2f}B", *(f"{p:.1f}" for p in peaks))
    return table


def run_build(base: str, recipe: str, out_dir: Path, home: Path) -> dict:
    """One `ppgguf build` in its own process; its report plus the wall time seen from outside."""
    out = out_dir / f"{Path(base).stem}-{recipe}.gguf"
    command = [sys.executable, "-m", "ppgguf.cli", "build", str(CHARACTER), "--base", base, "--recipe", recipe,
               "--out", str(out), "--json", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PPGGUF_HOME": str(home)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"build of {base} ({recipe}) failed:\n{done.stderr[-2000:]}")
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    return {"base": base, "recipe": recipe, "wall_s": round(wall, 1), "parameters": report["parameters"]["dense"],
            "seconds": report["seconds"], "memory": report["memory"], "file_bytes": report["file_bytes"]}


def measured_table(rows: list[dict]) -> Table:
    table = Table("base", "recipe", "params", "predicted GiB", "measured GiB", "measured/predicted", "peak stage",
                  "wall s", "seconds per stage", title="ppgguf build: peak resident memory and time (one build at a time)")
    for row in rows:
        measured, predicted = row["memory"]["peak_rss_bytes"], row["memory"]["predicted_peak_bytes"]
        stage = max((k for k in measured if k != "total"), key=measured.get)
        stages = ", ".join(f"{k} {v:.0f}" for k, v in row["seconds"].items() if k != "total" and v >= 1)
        table.add_row(Path(row["base"]).name, row["recipe"], f"{row['parameters'] / 1e6:.0f}M",
                      f"{predicted['total'] / GiB:.2f}", f"{measured['total'] / GiB:.2f}",
                      f"{measured['total'] / predicted['total']:.2f}", stage, f"{row['wall_s']:.0f}", stages)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", default=["smollm2-135m"], help="built-in names, GGUF files or checkpoint directories")
    parser.add_argument("--recipe", nargs="+", default=["default", "quick"])
    parser.add_argument("--cold", action="store_true", help="an empty PPGGUF_HOME per build (calibration included)")
    parser.add_argument("--predict", action="store_true", help="print the memory model on published shapes and stop")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the built files here (default: deleted)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    console = Console(width=200)  # a table, not a terminal's width
    if args.predict:
        console.print(predict_table())
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.out_dir or Path(scratch) / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        for base in args.base:
            for recipe in args.recipe:
                home = Path(scratch) / f"home-{len(rows)}" if args.cold else Path(os.environ.get(
                    "PPGGUF_HOME", Path.home() / ".cache" / "ppgguf"))
                Console(stderr=True).print(f"[dim]- building on {base} with the {recipe} recipe[/]")
                rows.append(run_build(base, recipe, out_dir, home))
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    console.print(measured_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
