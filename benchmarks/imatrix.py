"""Importance-matrix benchmark: does an imatrix of the character's own calibration text quantize better?

For each RoleBench character (../shared/data/paper-eval/) and each model (dense, and pruned at the
given sparsities with the recipe), quantize the same F32 export to each type three ways: no
importance matrix, one taken on the generic calibration text, and one taken on the persona
calibration sequences (what `ppgguf build --imatrix persona` uses). Each file is measured through
llama.cpp by teacher-forced KL to the dense F16 model on the character's held-out questions (never
used in calibration), with the persona prompt in context, as in benchmarks/fidelity.py.

The default base is a 4-bit GGUF: its "dense" model is the dequantized 4-bit one, so KL here is the
cost of requantizing it, not of quantizing an original bf16 checkpoint.

    python benchmarks/imatrix.py                                   # 5 characters, dense, Q4_0 and Q4_K_M
    python benchmarks/imatrix.py --characters 2 --sparsities 0 0.375 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

from fidelity import held_out_answers, load_character

from ppgguf.base import load_base
from ppgguf.calibrate import answer_sequences, cached_persona_calibration, generic_sequences
from ppgguf.export import export_gguf
from ppgguf.fidelity import teacher_forced_kl
from ppgguf.imatrix import collect_imatrix
from ppgguf.llama_io import open_gguf
from ppgguf.persona import persona_from_text
from ppgguf.prune import Calibration, prune_model
from ppgguf.quantize import quantize
from ppgguf.recipe import load_recipe, with_overrides
from ppgguf.stages import StageClock
from ppgguf.tokenizer import ChatTokenizer

KINDS = ("none", "generic", "persona")


def kl_of(path: Path, dense_llm, sequences, spans) -> float:
    llm = open_gguf(path, n_ctx=2048, logits_all=True)
    try:
        return teacher_forced_kl(dense_llm, llm, sequences, spans)["kl_mean"]
    finally:
        llm.close()


def measure_character(index: int, args, recipe, base, tokenizer, generic, work: Path) -> list[dict]:
    character = load_character(index, args.questions)
    persona = persona_from_text(f"Name: {character['name']}\n{character['description']}")
    examples = cached_persona_calibration(base, tokenizer, persona, recipe.calibration, recipe.prune.seed,
                                          lambda m: print(f"  {m}", file=sys.stderr))
    persona_seqs = answer_sequences(tokenizer, persona.system_prompt, examples)
    dense_path = work / "dense.f16.gguf"
    export_gguf(base.model, base.family, base.tokenizer_spec, dense_path, "F16")
    dense_llm = open_gguf(dense_path, n_ctx=2048, logits_all=True)
    held_out = held_out_answers(dense_llm, tokenizer, persona.system_prompt, character["questions"])
    sequences = [p + a for p, a in held_out]
    spans = [(len(p), len(p) + len(a)) for p, a in held_out]
    rows = []
    for sparsity in args.sparsities:
        model = copy.deepcopy(base.model)
        if sparsity:
            model = prune_model(model, with_overrides(recipe, {"ffn_sparsity": sparsity}),
                                Calibration(lambda: persona_seqs, lambda: generic), "cpu",
                                StageClock(lambda _: None)).model
        f32 = work / "model.f32.gguf"
        export_gguf(model, base.family, base.tokenizer_spec, f32, "F32")
        matrices = {"none": None,
                    "generic": collect_imatrix(model, base.family, generic),
                    "persona": collect_imatrix(model, base.family, [ids for ids, _ in persona_seqs])}
        for quant in args.quants:
            row = {"character": character["name"], "sparsity": sparsity, "quant": quant}
            for kind in KINDS:
                out = work / f"{quant}-{kind}.gguf"
                quantize(f32, out, quant, imatrix=matrices[kind])
                row[kind] = kl_of(out, dense_llm, sequences, spans)
                row["mib"] = round(out.stat().st_size / 2**20, 1)
            print(f"  {character['name']} sparsity {sparsity} {quant} ({row['mib']} MiB): "
                  + ", ".join(f"{k} {row[k]:.4f}" for k in KINDS), file=sys.stderr)
            rows.append(row)
    dense_llm.close()
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"| model | quant | MiB | {' | '.join(f'KL {k}' for k in KINDS)} | persona / none |")
    print("|---|---|---|" + "---|" * (len(KINDS) + 1))
    keys = sorted({(r["sparsity"], r["quant"]) for r in rows})
    for sparsity, quant in keys:
        group = [r for r in rows if (r["sparsity"], r["quant"]) == (sparsity, quant)]
        means = {k: sum(r[k] for r in group) / len(group) for k in KINDS}
        model = "dense" if sparsity == 0 else f"ppgguf {sparsity:.3g}"
        print(f"| {model} | {quant} | {group[0]['mib']} | " + " | ".join(f"{means[k]:.4f}" for k in KINDS)
              + f" | {means['persona'] / means['none']:.2f} |")
    print(f"\nmeans over {len({r['character'] for r in rows})} characters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--characters", type=int, default=5)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--quants", nargs="+", default=["Q4_0", "Q4_K_M"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    work = Path(tempfile.mkdtemp(prefix="ppgguf-imatrix-"))
    base = load_base(recipe.base.model, work)
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    generic = generic_sequences(tokenizer, recipe.calibration.generic_sequences, recipe.calibration.sequence_length)
    rows = []
    for index in range(args.first, args.first + args.characters):
        started = time.perf_counter()
        rows += measure_character(index, args, recipe, base, tokenizer, generic, work)
        print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                             "recipe": recipe.to_json(), "rows": rows}, indent=2))
    print_table(rows)


if __name__ == "__main__":
    main()
