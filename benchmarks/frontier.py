"""Frontier benchmark: is a ppgguf file the best file at its size?

A user who wants a smaller NPC can take the dense model at a lower quant instead, so every ppgguf
file is compared with the dense files of the same size. For each RoleBench character
(../shared/data/paper-eval/), the dense model and the model pruned by ppgguf's own pruning stage
(persona method, the recipe's training) at each sparsity are each quantized to every type with each
importance matrix (none; the generic calibration text; the persona calibration answers, which is
what `ppgguf build --imatrix persona` uses), and every file is measured through llama.cpp:

- KL: teacher-forced KL(dense F16 || file) on the dense model's greedy in-voice answers to the
  character's 40 held-out questions (never used in calibration), the persona prompt in context;
- MiB: the file's size; with `--answers TYPE ...`, for those types also
- attribution and repetition: the file's own greedy answers to the held-out questions, nearest
  character description (all-MiniLM-L6-v2) and the share of answers that loop;
- knowledge: 42 general questions asked in character, as 4-choice log-likelihood and free-form
  (the greedy answer names the right choice); decode tok/s of one 64-token run (time it alone).

The default base is a Q4_1 GGUF: its "dense" model is the dequantized 4-bit one, so requantizing to
4-5 bits is nearly free and KL measures the cost of requantizing, not of quantizing bf16 weights.

    python benchmarks/frontier.py --json out.json                   # dense only, KL of every type
    python benchmarks/frontier.py --sparsities 0 0.375 --answers F16 Q4_0:none --png frontier.png
    python benchmarks/frontier.py --tables out.json --png frontier.png   # from a saved run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fidelity import ROLEBENCH_NAMES, held_out_answers, load_character, prune_for

from ppgguf.build.pipeline import dense_teacher
from ppgguf.calibration.answers import answer_sequences, cached_persona_calibration
from ppgguf.calibration.generic import generic_sequences
from ppgguf.evaluation import fidelity
from ppgguf.evaluation.speed import speed_sample
from ppgguf.export.imatrix import collect_imatrix, read_imatrix_gguf, write_imatrix_gguf
from ppgguf.export.quantize import quantize
from ppgguf.export.writer import export_gguf
from ppgguf.inputs.base import load_base
from ppgguf.inputs.persona import persona_from_text
from ppgguf.inputs.tokenizer import ChatTokenizer
from ppgguf.llama.decode import greedy_answer
from ppgguf.llama.quant_types import QUANT_TYPES, uses_imatrix
from ppgguf.llama.runtime import open_gguf
from ppgguf.recipe import load_recipe

# The types whose SmolLM2 files differ in size; IQ3_M, Q3_K_S, IQ2_M and others land within 2 MiB of
# these (its 576-wide rows fall back from 256-blocks, and the Q8_0 token embedding is a third of the file).
QUANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_1", "IQ4_NL", "Q4_0", "IQ4_XS", "IQ3_S", "Q2_K", "IQ2_XXS"]
# A faster sweep: the types at the sizes where the dense curve bends, and the smallest one.
QUICK_QUANTS = ["F16", "Q8_0", "Q5_0", "Q4_K_M", "IQ4_NL", "Q4_0", "IQ4_XS", "IQ2_XXS"]


def files_to_make(quants: list[str], kinds: list[str], embeddings: list[str]) -> list[tuple[str, str, str]]:
    """(quant, imatrix kind, token embedding type) triples that give distinct files; embedding
    "auto" is the type llama.cpp's mix picks."""
    triples = []
    for quant in quants:
        for kind in kinds:
            for embedding in embeddings:
                weighed = uses_imatrix(quant, kind, "" if embedding == "auto" else embedding)
                if kind != "none" and not weighed:  # the same file as without one
                    continue
                if kind == "none" and QUANT_TYPES[quant].needs_imatrix:
                    continue
                triples.append((quant, kind, embedding))
    return triples


class Judge:
    """One character's references: the dense F16 model, its held-out answers and the measures."""

    def __init__(self, dense_path: Path, tokenizer, persona, character, embed, knowledge):
        self.dense = open_gguf(dense_path, n_ctx=2048, logits_all=True)
        self.tokenizer, self.persona, self.character = tokenizer, persona, character
        held_out = held_out_answers(self.dense, tokenizer, persona.system_prompt, character["questions"])
        self.prompts = [p for p, _ in held_out]
        self.sequences = [p + a for p, a in held_out]
        self.spans = [(len(p), len(p) + len(a)) for p, a in held_out]
        # Computed once: every file is compared with the same dense distributions (about 1 GB in float64).
        self.reference = fidelity.answer_logprobs(self.dense, self.sequences, self.spans)
        self.embed, self.knowledge = embed, knowledge
        self.others = [load_character(i, 2)["description"] for i, name in enumerate(ROLEBENCH_NAMES)
                       if name != character["name"]]

    def measure(self, path: Path, answers: bool) -> dict:
        llm = open_gguf(path, n_ctx=2048, logits_all=True)
        try:
            row = {"mib": round(path.stat().st_size / 2**20, 2), "bytes": path.stat().st_size,
                   "kl": fidelity.teacher_forced_kl(self.reference, llm, self.sequences, self.spans)["kl_mean"]}
            if answers:
                row.update(self._answer_measures(llm))
        finally:
            llm.close()
        return row

    def _answer_measures(self, llm) -> dict:
        texts = [greedy_answer(llm, p, 64).text for p in self.prompts]
        system = self.persona.system_prompt
        free = fidelity.free_form_knowledge(llm, self.tokenizer, self.knowledge, system)
        return {
            "attribution": fidelity.attribution(texts, self.character["description"], self.others, self.embed)["accuracy"],
            "repetition": fidelity.repetition_rate(texts),
            "knowledge_choice": fidelity.general_knowledge_accuracy(llm, self.tokenizer, self.knowledge, system)["accuracy"],
            "knowledge_free": free["accuracy"],
            "decode_tok_s": speed_sample(llm, self.prompts[0], 64).decode_tokens_per_s,
            "answers": texts,
        }

    def close(self) -> None:
        self.dense.close()


def measure_character(index: int, args, recipe, base, tokenizer, generic, embed, knowledge, work: Path, save) -> None:
    character = load_character(index, args.questions)
    persona = persona_from_text(f"Name: {character['name']}\n{character['description']}")
    persona_seqs = []
    kinds = args.imatrix + args.pruned_imatrix + [f.split(":")[1] for f in args.files or []]
    if any(kind.startswith("persona") for kind in kinds) or any(args.sparsities):
        progress = lambda m: print(f"  {m}", file=sys.stderr)  # noqa: E731
        examples = cached_persona_calibration(base, tokenizer, persona, recipe.calibration, recipe.prune.seed, progress,
                                              dense_teacher(base, recipe.calibration.teacher, progress))
        persona_seqs = answer_sequences(tokenizer, persona.system_prompt, examples)
    dense_path = work / "dense.f16.gguf"
    if not dense_path.is_file():
        export_gguf(base.model, base.family, base.tokenizer_spec, dense_path, "F16")
    judge = Judge(dense_path, tokenizer, persona, character, embed, knowledge)
    slug = character["name"].lower().replace(" ", "-")
    for sparsity in args.sparsities:
        started = time.perf_counter()
        # The F32 export and importance matrices stay in the work directory, so a rerun skips pruning.
        f32 = work / f"{slug}-{sparsity}.f32.gguf"
        quants, kinds = (args.quants, args.imatrix) if sparsity == 0 else (args.pruned_quants, args.pruned_imatrix)
        if args.files and sparsity == 0:
            kinds = sorted({f.split(":")[1] for f in args.files})
        imatrix_files = {kind: work / f"{slug}-{sparsity}-{kind}.imatrix.gguf" for kind in kinds if kind != "none"}
        if not (f32.is_file() and all(path.is_file() for path in imatrix_files.values())):
            model = base.model if sparsity == 0 else prune_for("persona", base.model, persona_seqs, generic, recipe,
                                                                sparsity, 0.0)
            export_gguf(model, base.family, base.tokenizer_spec, f32, "F32")
            persona_ids = [ids for ids, _ in persona_seqs]
            # persona+generic (an experiment, not a build option): does general text in the matrix keep knowledge?
            calibration = {"generic": generic, "persona": persona_ids, "persona+generic": persona_ids + generic}
            for kind, path in imatrix_files.items():
                write_imatrix_gguf(collect_imatrix(model, base.family, calibration[kind]), path, [kind])
            del model
        matrices = {kind: read_imatrix_gguf(path) for kind, path in imatrix_files.items()}
        print(f"  {character['name']} sparsity {sparsity}: model ready in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        files = ([tuple(f.split(":")) for f in args.files] if args.files and sparsity == 0
                 else files_to_make(quants, kinds, args.embedding_quants))
        for quant, kind, embedding in files:
            out = work / f"{sparsity}-{quant}-{kind}-{embedding}.gguf"
            started = time.perf_counter()
            quantize(f32, out, quant, allow_requantize=True, imatrix=matrices.get(kind),
                     embedding_quant="" if embedding == "auto" else embedding)
            named = [quant, f"{quant}:{kind}", f"{quant}:{kind}:{embedding}"]
            row = {"character": character["name"], "sparsity": sparsity, "quant": quant, "imatrix": kind,
                   "embedding": embedding, **judge.measure(out, any(n in args.answers for n in named)),
                   "seconds": round(time.perf_counter() - started, 1)}
            out.unlink()
            print(f"  {character['name']} {sparsity} {quant} {kind} {embedding}: {row['mib']} MiB KL {row['kl']:.4f}"
                  + "".join(f" {k} {row[k]:.2f}" for k in ANSWER_METRICS if k in row), file=sys.stderr)
            save(row)
    judge.close()


ANSWER_METRICS = ["attribution", "repetition", "knowledge_choice", "knowledge_free", "decode_tok_s"]


def configurations(rows: list[dict]) -> list[dict]:
    """Mean over characters per (sparsity, quant, imatrix, embedding type), smallest file first."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["sparsity"], row["quant"], row["imatrix"], row.get("embedding", "auto")), []).append(row)
    out = []
    for (sparsity, quant, kind, embedding), group in groups.items():
        mean = {"sparsity": sparsity, "quant": quant, "imatrix": kind, "embedding": embedding, "characters": len(group),
                "mib": float(np.mean([r["mib"] for r in group])), "kl": float(np.mean([r["kl"] for r in group]))}
        for metric in ANSWER_METRICS:
            values = [r[metric] for r in group if metric in r]
            if values:
                mean[metric] = float(np.mean(values))
        out.append(mean)
    return sorted(out, key=lambda c: (c["mib"], c["kl"]))


def on_frontier(configs: list[dict]) -> list[dict]:
    """The configurations no smaller-or-equal file beats on KL."""
    best, frontier = float("inf"), []
    for config in configs:  # smallest first
        if config["kl"] < best:
            best = config["kl"]
            frontier.append(config)
    return frontier


def print_table(rows: list[dict]) -> None:
    configs = configurations(rows)
    frontier = {id(c) for c in on_frontier(configs)}
    names = ", ".join(sorted({r["character"] for r in rows}))
    print(f"\nmeans over {len({r['character'] for r in rows})} characters ({names}); * = on the frontier "
          "(no file of no greater size has a lower KL)\n")
    metrics = [m for m in ANSWER_METRICS if any(m in c for c in configs)]
    print("| model | quant | imatrix | embedding | MiB | KL | " + " | ".join(metrics) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(metrics))
    for c in configs:
        model = "dense" if c["sparsity"] == 0 else f"ppgguf {c['sparsity']:g}"
        cells = [f"{c[m]:.2f}" if m in c else "-" for m in metrics]
        star = "*" if id(c) in frontier else ""
        print(f"| {model} | {c['quant']} | {c['imatrix']} | {c['embedding']} | {c['mib']:.1f} | {c['kl']:.4f}{star} | " + " | ".join(cells) + " |")


def write_png(rows: list[dict], path: Path) -> None:
    """KL against MiB, both log scale: every file as a point, each (model, imatrix) series' own frontier
    as a line; the reference (KL 0) is left out. Pillow, no plotting library."""
    from PIL import Image, ImageDraw

    configs = [c for c in configurations(rows) if c["kl"] > 0]
    width, height, pad = 900, 600, 70
    xs, ys = [np.log10(c["mib"]) for c in configs], [np.log10(c["kl"]) for c in configs]
    x_of = lambda m: pad + (np.log10(m) - min(xs)) / max(max(xs) - min(xs), 1e-9) * (width - 2 * pad)  # noqa: E731
    y_of = lambda k: height - pad - (np.log10(k) - min(ys)) / max(max(ys) - min(ys), 1e-9) * (height - 2 * pad)  # noqa: E731
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(pad, pad), (pad, height - pad), (width - pad, height - pad)], fill="black")
    draw.text((width // 2 - 60, height - pad + 30), "file size (MiB, log scale)", fill="black")
    draw.text((5, pad - 30), "KL to dense F16 (log scale)", fill="black")
    for c in configs:
        draw.text((x_of(c["mib"]) - 10, height - pad + 8), f"{c['mib']:.0f}", fill="#999999")
    for kl in sorted({min(c["kl"] for c in configs), max(c["kl"] for c in configs)}):
        draw.text((8, y_of(kl) - 6), f"{kl:.3g}", fill="black")
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    series = sorted({(c["sparsity"], c["imatrix"], c["embedding"]) for c in configs})
    for i, (sparsity, kind, embedding) in enumerate(series):
        mine = [c for c in configs if (c["sparsity"], c["imatrix"], c["embedding"]) == (sparsity, kind, embedding)]
        colour = colours[i % len(colours)]
        line = [(x_of(c["mib"]), y_of(c["kl"])) for c in on_frontier(mine)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for c in mine:
            x, y = x_of(c["mib"]), y_of(c["kl"])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.text((x + 4, y - 12), c["quant"], fill=colour)
        label = (("dense" if sparsity == 0 else f"ppgguf FFN {sparsity:g}") + f", imatrix {kind}"
                 + ("" if embedding == "auto" else f", embedding {embedding}"))
        draw.text((width - pad - 210, pad + 16 * i), label, fill=colour)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--characters", type=int, default=5)
    parser.add_argument("--first", type=int, default=0, help="index of the first RoleBench character")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0], help="FFN sparsities; 0 is dense")
    parser.add_argument("--quants", nargs="+", default=QUANTS)
    parser.add_argument("--imatrix", nargs="+", default=["none", "generic", "persona"], choices=["none", "generic", "persona"])
    parser.add_argument("--pruned-quants", nargs="+", default=["Q8_0", "Q4_K_M", "IQ4_NL"], help="types of the pruned models")
    parser.add_argument("--pruned-imatrix", nargs="+", default=["none", "persona"], choices=["none", "generic", "persona"])
    parser.add_argument("--embedding-quants", nargs="+", default=["auto"], metavar="TYPE",
                        help="token embedding types (auto: the mix's own); each file is made with each")
    parser.add_argument("--files", nargs="+", metavar="TYPE:IMATRIX:EMBEDDING",
                        help="the dense files to make, instead of every --quants x --imatrix x --embedding-quants")
    parser.add_argument("--answers", nargs="*", default=[], metavar="TYPE[:IMATRIX[:EMBEDDING]]",
                        help="files that also get the greedy-answer measures (two minutes a file), e.g. F16 Q4_0:none")
    parser.add_argument("--recipe", default="default", help="calibration and pruning recipe")
    parser.add_argument("--work", type=Path, help="keeps each model's F32 export and importance matrices for reruns")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--tables", type=Path, nargs="+", metavar="RESULTS_JSON", help="measure nothing: merge saved runs")
    args = parser.parse_args()
    if args.tables:
        rows = [row for path in args.tables for row in json.loads(path.read_text())["rows"]]
    else:
        rows = run(args)
    print_table(rows)
    if args.png:
        write_png(rows, args.png)


def run(args) -> list[dict]:
    recipe = load_recipe(args.recipe)
    work = args.work or Path(tempfile.mkdtemp(prefix="ppgguf-frontier-"))
    work.mkdir(parents=True, exist_ok=True)
    base = load_base(recipe.base.model, work)
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    generic = generic_sequences(tokenizer, recipe.calibration.generic_sequences, recipe.calibration.sequence_length)
    embed = fidelity.load_embedder() if args.answers else None
    knowledge = fidelity.load_general_knowledge()
    rows: list[dict] = []

    def save(row: dict) -> None:  # after every file, so a stopped run keeps what it measured
        rows.append(row)
        if args.json:
            saved = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "tables"}
            args.json.write_text(json.dumps({"args": saved, "recipe": recipe.to_json(), "rows": rows}, indent=2))

    for index in range(args.first, args.first + args.characters):
        started = time.perf_counter()
        measure_character(index, args, recipe, base, tokenizer, generic, embed, knowledge, work, save)
        print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
