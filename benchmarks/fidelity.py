"""Fidelity benchmark: does the pruned model keep the character? (Persona-Pruner, Table 1 shape)

For each of the paper's RoleBench characters (../shared/data/paper-eval/), build one pruned model per
method and sparsity from the same dense base, and compare it with the dense model on that
character's held-out questions (the paper's own questions, never used in calibration):

- KL: teacher-forced KL(dense || pruned) on the dense model's greedy in-voice answers;
- attribution: fraction of the pruned model's greedy answers whose nearest description
  (all-MiniLM-L6-v2) is the right character, among all ten RoleBench characters;
- general knowledge: multiple-choice accuracy by log-likelihood (ppgguf/data/general_knowledge.jsonl).

Every model is exported to an F16 GGUF and measured through llama.cpp with ppgguf.evaluation.fidelity, the
same code as `ppgguf eval`. Methods: random, magnitude, wanda-sp (generic calibration text),
wanda-sp on the persona calibration data (ablation: the data without mask learning), persona
(STE mask learning, KL to the dense model: what `ppgguf build` does) and optionally persona-ce
(STE, cross-entropy) and persona-mask (the persona mask without healing).

When the recipe heals (the default recipe does), persona, persona-ce and wanda-sp-persona are all
healed on the persona calibration data, so the ablation differs from persona in the mask alone;
the generic baselines are not (they have no persona data).

    python benchmarks/fidelity.py                     # 5 characters, 50% FFN, 40 questions each
    python benchmarks/fidelity.py --sparsities 0.25 0.5 --characters 3 --json out.json
    python benchmarks/fidelity.py --first 1 --characters 1 --methods wanda-sp persona
    python benchmarks/fidelity.py --set heal=false     # the masks alone
    python benchmarks/fidelity.py --tables benchmarks/results/a.json b.json   # one table from saved runs
    python benchmarks/fidelity.py --methods --sparsities 0 --bake mix --quant Q4_1 --embedding-quant Q5_1   # the persona
                                                      # in the weights, against the default build (SmolLM2)

`--bake MODE...` adds the baked condition (ppgguf.pruning.bake) per sparsity: the model trained without the
persona prompt, asked as the baked file is used (its short system prompt, "baked-MODE"), with
node-llama-cpp's default assistant prompt ("+generic", never trained on) and with the full persona
prompt ("+card"); every KL is to the dense model asked WITH the persona prompt. "dense-unprompted"
and "dense+generic" are the dense model asked the same ways: what baking has to close. With
`--quant`, every baked model and an unbaked one asked with the prompt ("prompted", today's build
at that sparsity) are quantized to that type with their persona importance matrix, as a build does,
and their token embedding to `--embedding-quant` where given.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ppgguf.build.pipeline import dense_teacher
from ppgguf.calibration.answers import answer_sequences, cached_persona_calibration
from ppgguf.calibration.followups import bake_conversations, cached_followups
from ppgguf.calibration.generic import generic_sequences
from ppgguf.evaluation import fidelity
from ppgguf.export.imatrix import collect_imatrix
from ppgguf.export.quantize import quantize
from ppgguf.export.writer import export_gguf
from ppgguf.inputs.base import load_base
from ppgguf.inputs.persona import persona_from_text
from ppgguf.inputs.tokenizer import ChatTokenizer
from ppgguf.llama.decode import greedy_answer
from ppgguf.llama.keys import BAKE_OFF, baked
from ppgguf.llama.runtime import open_gguf
from ppgguf.pruning.bake import NODE_LLAMA_CPP_SYSTEM_PROMPT, bake_pairs, short_prompt, template_system_prompt
from ppgguf.pruning.prune import Calibration, prune_model
from ppgguf.recipe import load_recipe, with_overrides
from ppgguf.stages import StageClock

EVAL_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "paper-eval"
ROLEBENCH_NAMES = ["Jack Torrance", "Violet Weston", "Twilight Sparkle", "Blair Waldorf", "James Brown",
                   "Jeff Spicoli", "Jim Morrison", "Gaston", "Alvy Singer", "James Bond"]
BASELINES = ["random", "magnitude", "wanda-sp"]
HEALED_WHEN_THE_RECIPE_HEALS = {"persona", "persona-ce", "wanda-sp-persona"}
NEEDS_PERSONA_CALIBRATION = {"persona", "persona-ce", "persona-mask", "wanda-sp-persona"}
METHOD_ORDER = BASELINES + ["wanda-sp-persona", "persona-mask", "persona-ce", "persona"]


def load_character(index: int, n_questions: int) -> dict:
    general = json.loads((EVAL_DIR / f"rolebench_general_user_{index}.json").read_text())
    specific = json.loads((EVAL_DIR / f"rolebench_specific_user_{index}.json").read_text())
    half = n_questions // 2
    return {
        "name": ROLEBENCH_NAMES[index],
        "description": general["persona_description"],
        "questions": specific["questions"][:half] + general["questions"][: n_questions - half],
    }


def held_out_answers(dense_llm, tokenizer, system_prompt: str, questions: list[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, the dense model's greedy answer ids) per held-out question, the persona prompt in context."""
    prompts = [tokenizer.chat_ids([{"role": "system", "content": system_prompt}, {"role": "user", "content": q}], True)
               for q in questions]
    return [(p, greedy_answer(dense_llm, p, 64).ids) for p in prompts]


def asked_with(tokenizer, system: str, questions: list[str], held_out) -> dict:
    """The held-out questions and the dense model's answers, with `system` as the system message."""
    prompts = [tokenizer.chat_ids([{"role": "system", "content": system}, {"role": "user", "content": q}], True)
               for q in questions]
    return {"prompts": prompts, "sequences": [p + a for p, (_, a) in zip(prompts, held_out)],
            "spans": [(len(p), len(p) + len(a)) for p, (_, a) in zip(prompts, held_out)]}


def prune_for(method: str, base_model, persona_seqs, generic, recipe, sparsity: float, head_sparsity: float):
    """One pruned copy of the dense model by `method`, through ppgguf's own pruning stage (no run cache)."""
    scorer = {"wanda-sp-persona": "wanda-sp", "persona-ce": "persona", "persona-mask": "persona"}.get(method, method)
    recipe = with_overrides(recipe, {
        "method": scorer, "ffn_sparsity": sparsity, "head_sparsity": head_sparsity, "uniform": True,
        "loss": "ce" if method == "persona-ce" else recipe.train.loss,
        "heal": recipe.train.heal and method in HEALED_WHEN_THE_RECIPE_HEALS,
    })
    data = Calibration(persona=lambda: persona_seqs,
                       generic=lambda: [ids for ids, _ in persona_seqs] if method == "wanda-sp-persona" else generic)
    return prune_model(copy.deepcopy(base_model), recipe, data, "cpu", StageClock(lambda _: None)).model


def measure_model(path: Path, dense, tokenizer, system_prompt, sequences, spans, prompts, embed, desc, others, gk):
    """`dense`: the dense model, or its answer log-probabilities with the persona prompt (ppgguf.evaluation.fidelity)."""
    llm = open_gguf(path, n_ctx=2048, logits_all=True)
    try:
        kl = fidelity.teacher_forced_kl(dense, llm, sequences, spans)["kl_mean"]
        answers = [greedy_answer(llm, p, 64).text for p in prompts]
        attribution = fidelity.attribution(answers, desc, others, embed)
        knowledge = fidelity.general_knowledge_accuracy(llm, tokenizer, gk, None)["accuracy"]
    finally:
        llm.close()
    return {"kl": kl, "attribution": attribution["accuracy"], "attribution_margin": attribution["mean_margin"],
            "knowledge": knowledge, "answers": answers}


def bake_rows(mode: str, sparsity: float, quant: str | None, embedding_quant: str, base, tokenizer, persona, examples,
              recipe, work: Path, reference, questions, held_out, measure, with_prompted: bool = True) -> dict:
    """The baked condition (module doc): rows keyed 'baked-MODE[+generic|+card]@SPARSITY' (and 'prompted@' with
    --quant); `reference`: the dense model's answer log-probabilities with the persona prompt."""
    followups = cached_followups(base, tokenizer, persona, recipe.calibration, recipe.prune.seed, examples,
                                 dense_teacher=dense_teacher(base, recipe.calibration.teacher))
    pairs = bake_pairs(tokenizer, persona, bake_conversations(persona, examples, followups), mode, recipe.prune.seed,
                       recipe.train.bake_prompt_words)
    persona_seqs = answer_sequences(tokenizer, persona.system_prompt, examples)
    rows = {}
    models = {"prompted": BAKE_OFF, f"baked-{mode}": mode} if quant and with_prompted else {f"baked-{mode}": mode}
    for label, bake in models.items():
        t0 = time.perf_counter()
        model = prune_model(copy.deepcopy(base.model), with_overrides(recipe, {
            "method": "persona", "ffn_sparsity": sparsity, "head_sparsity": 0.0, "bake": bake}),
            Calibration(persona=lambda: persona_seqs, generic=lambda: [], bake=lambda: pairs), "cpu",
            StageClock(lambda _: None)).model
        path = work / f"{label}.gguf"
        export_gguf(model, base.family, base.tokenizer_spec, path, "F32" if quant else "F16")
        if quant:
            matrix = collect_imatrix(model, base.family, [ids for ids, _ in persona_seqs])
            quantize(path, work / f"{label}.{quant}.gguf", quant, imatrix=matrix, embedding_quant=embedding_quant)
            path = work / f"{label}.{quant}.gguf"
        # Asked as the file's template asks it, and a baked file also with a foreign prompt and the card.
        systems = {"": template_system_prompt(persona, bake, recipe.train.bake_prompt_words)}
        if baked(bake):
            systems.update({"+generic": NODE_LLAMA_CPP_SYSTEM_PROMPT, "+card": persona.system_prompt})
        for suffix, system in systems.items():
            asked = asked_with(tokenizer, system, questions, held_out)
            rows[f"{label}{suffix}@{sparsity}"] = measure(path, reference, system, asked)
            print(f"  {label}{suffix}@{sparsity}: KL {rows[f'{label}{suffix}@{sparsity}']['kl']:.3f} attribution "
                  f"{rows[f'{label}{suffix}@{sparsity}']['attribution']:.2f} ({time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--characters", type=int, default=5)
    parser.add_argument("--first", type=int, default=0, help="index of the first RoleBench character")
    parser.add_argument("--questions", type=int, default=40,
                        help="held-out questions per character (the paper has 40: 20 specific, 20 general)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5])
    parser.add_argument("--head-sparsity", type=float, default=0.0)
    parser.add_argument("--methods", nargs="*", default=BASELINES + ["wanda-sp-persona", "persona"])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides, e.g. steps=32")
    parser.add_argument("--bake", nargs="*", default=[], metavar="MODE", help="baked conditions: name, mix (module doc)")
    parser.add_argument("--quant", help="with --bake: quantize the baked and prompted models to this type")
    parser.add_argument("--embedding-quant", default="", help="with --quant: the token embedding's type (the default "
                        "build of SmolLM2: Q4_1 with a Q5_1 embedding)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--tables", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="build nothing: print the tables of saved runs, merged per character")
    args = parser.parse_args()
    if args.tables:
        print_saved_tables(args.tables)
        return

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value) if value[:1] in "0123456789-tf[" else value
    recipe = with_overrides(load_recipe(args.recipe), overrides)
    work = Path(tempfile.mkdtemp(prefix="ppgguf-fidelity-"))
    base = load_base(recipe.base.model, work)
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    generic = generic_sequences(tokenizer, recipe.calibration.generic_sequences, recipe.calibration.sequence_length)
    embed = fidelity.load_embedder()
    gk = fidelity.load_general_knowledge()
    all_descriptions = {n: load_character(i, 2)["description"] for i, n in enumerate(ROLEBENCH_NAMES)}
    results = []
    for index in range(args.first, args.first + args.characters):
        character = load_character(index, args.questions)
        persona = persona_from_text(f"Name: {character['name']}\n{character['description']}")
        others = [d for n, d in all_descriptions.items() if n != character["name"]]
        persona_seqs, examples = [], []
        if NEEDS_PERSONA_CALIBRATION & set(args.methods) or args.bake:
            started = time.perf_counter()
            progress = lambda m: print(f"  {m}", file=sys.stderr)  # noqa: E731
            examples = cached_persona_calibration(base, tokenizer, persona, recipe.calibration, recipe.prune.seed,
                                                  progress, dense_teacher(base, recipe.calibration.teacher, progress))
            persona_seqs = answer_sequences(tokenizer, persona.system_prompt, examples)
            print(f"{character['name']}: {len(persona_seqs)} calibration examples in "
                  f"{time.perf_counter() - started:.0f}s", file=sys.stderr)

        dense_path = work / "dense.f16.gguf"
        export_gguf(base.model, base.family, base.tokenizer_spec, dense_path, "F16")
        dense_llm = open_gguf(dense_path, n_ctx=2048, logits_all=True)
        held_out = held_out_answers(dense_llm, tokenizer, persona.system_prompt, character["questions"])
        prompts = [p for p, _ in held_out]
        sequences = [p + a for p, a in held_out]
        spans = [(len(p), len(p) + len(a)) for p, a in held_out]
        row = {"character": character["name"], "dense": measure_model(
            dense_path, dense_llm, tokenizer, persona.system_prompt, sequences, spans, prompts, embed,
            character["description"], others, gk)}

        def measure(path, reference, system, asked):
            return measure_model(path, reference, tokenizer, system, asked["sequences"], asked["spans"],
                                 asked["prompts"], embed, character["description"], others, gk)
        reference = fidelity.answer_logprobs(dense_llm, sequences, spans) if args.bake else None
        if args.bake:
            for label, system in (("dense-unprompted", short_prompt(persona, recipe.train.bake_prompt_words)),
                                  ("dense+generic", NODE_LLAMA_CPP_SYSTEM_PROMPT)):
                row[label] = measure(dense_path, reference, system,
                                     asked_with(tokenizer, system, character["questions"], held_out))
                print(f"  {label}: KL {row[label]['kl']:.3f} attribution {row[label]['attribution']:.2f}",
                      file=sys.stderr)
        for sparsity in args.sparsities:
            for method in args.methods:
                t0 = time.perf_counter()
                pruned = prune_for(method, base.model, persona_seqs, generic, recipe, sparsity, args.head_sparsity)
                path = work / "pruned.f16.gguf"
                export_gguf(pruned, base.family, base.tokenizer_spec, path, "F16")
                scores = measure_model(path, dense_llm, tokenizer, persona.system_prompt, sequences, spans,
                                       prompts, embed, character["description"], others, gk)
                scores["seconds"] = round(time.perf_counter() - t0, 1)
                row[f"{method}@{sparsity}"] = scores
                print(f"  {method}@{sparsity}: KL {scores['kl']:.3f} attribution {scores['attribution']:.2f} "
                      f"(margin {scores['attribution_margin']:.3f}) knowledge {scores['knowledge']:.2f} "
                      f"({scores['seconds']}s)", file=sys.stderr)
                del pruned
            for mode in args.bake:
                row.update(bake_rows(mode, sparsity, args.quant, args.embedding_quant, base, tokenizer, persona,
                                     examples, recipe, work, reference, character["questions"], held_out, measure,
                                     with_prompted=mode == args.bake[0]))
        dense_llm.close()
        results.append(row)
        if args.json:
            # "run" says what this run measured; the recipe's own sparsities are not used here.
            run = {"methods": args.methods, "sparsities": args.sparsities, "head_sparsity": args.head_sparsity,
                   "questions": args.questions}
            args.json.write_text(json.dumps({"run": run, "recipe": recipe.to_json(), "results": results}, indent=2))
    print_tables(results, args.methods, args.sparsities)
    if args.bake:
        print_bake_table(results)


def print_saved_tables(paths: list[Path]) -> None:
    """One table from several saved runs: each character's models merged across files.

    Each model (and dense) comes from the first file that has it for the character, so list the
    files in order of preference. Dense is deterministic on one machine, but llama.cpp's kernels
    differ between CPUs, so a near-tie can turn a greedy answer elsewhere: a note says when two
    files' dense answers differ.
    """
    rows: dict[str, dict] = {}
    for path in paths:
        for row in json.loads(path.read_text())["results"]:
            merged = rows.setdefault(row["character"], {"dense": row["dense"]})
            dense_answers = [merged["dense"].get("answers"), row["dense"].get("answers")]
            if None not in dense_answers and dense_answers[0] != dense_answers[1]:
                same = sum(a == b for a, b in zip(*dense_answers))
                print(f"note: {row['character']}: {path.name}'s dense answers differ from the first file's "
                      f"({same} of {len(dense_answers[0])} the same; another machine?)", file=sys.stderr)
            for key, value in row.items():
                merged.setdefault(key, value)
    keys = {key for row in rows.values() for key in row if "@" in key}
    methods = [m for m in METHOD_ORDER if any(k.startswith(f"{m}@") for k in keys)]
    sparsities = sorted({float(k.split("@")[1]) for k in keys})
    for s in sparsities:
        for m in methods:
            have = sum(f"{m}@{s}" in row for row in rows.values())
            if have < len(rows):
                print(f"note: {m}@{s * 100:g}% measured on {have} of {len(rows)} characters", file=sys.stderr)
    print_tables(list(rows.values()), methods, sparsities)


def print_tables(results, methods, sparsities) -> None:
    def mean(key, metric):
        values = [r[key][metric] for r in results if metric in r.get(key, {})]
        return float(np.mean(values)) if values else float("nan")

    print(f"\n{len(results)} characters: mean over characters (dense: KL 0, attribution "
          f"{mean('dense', 'attribution'):.2f}, knowledge {mean('dense', 'knowledge'):.2f})\n")
    header = "| method | " + " | ".join(f"KL @{s * 100:g}% | attribution @{s * 100:g}% | knowledge @{s * 100:g}%" for s in sparsities) + " |"
    print(header)
    print("|" + "---|" * (1 + 3 * len(sparsities)))
    for method in methods:
        cells = []
        for s in sparsities:
            key = f"{method}@{s}"
            cells += [f"{mean(key, metric):.{digits}f}".replace("nan", "-")
                      for metric, digits in (("kl", 3), ("attribution", 2), ("knowledge", 2))]
        print(f"| {method} | " + " | ".join(cells) + " |")
    for s in sparsities:
        baselines = [m for m in methods if m in BASELINES and np.isfinite(mean(f"{m}@{s}", "kl"))]
        if not np.isfinite(mean(f"persona@{s}", "kl")) or not baselines:
            continue
        best = min(baselines, key=lambda m: mean(f"{m}@{s}", "kl"))
        kl_ratio = mean(f"persona@{s}", "kl") / mean(f"{best}@{s}", "kl")
        best_attr = max(baselines, key=lambda m: mean(f"{m}@{s}", "attribution"))
        dense_attr, base_attr = mean("dense", "attribution"), mean(f"{best_attr}@{s}", "attribution")
        persona_attr = mean(f"persona@{s}", "attribution")
        reduction = (persona_attr - base_attr) / (dense_attr - base_attr) if dense_attr != base_attr else float("nan")
        print(f"\n@{s * 100:g}%: persona KL / best baseline KL ({best}) = {kl_ratio:.2f}; attribution drop reduced by "
              f"{reduction:.1%} over the best baseline ({best_attr}): (persona - baseline) / (dense - baseline)")
    if "persona" in methods:  # the rule for the default sparsity: attribution within 10% of dense
        print()
        for s in sparsities:
            print(f"@{s * 100:g}%: persona keeps {mean(f'persona@{s}', 'attribution') / mean('dense', 'attribution'):.0%} "
                  f"of dense's attribution; margin {mean(f'persona@{s}', 'attribution_margin'):+.4f} "
                  f"against dense's {mean('dense', 'attribution_margin'):+.4f}")


def print_bake_table(results) -> None:
    """Mean KL (to the dense model asked with the persona prompt), attribution and knowledge per baked condition."""
    labels = [k for k in results[0] if k.startswith(("dense-", "dense+", "baked-", "prompted"))]
    dense_attr = float(np.mean([r["dense"]["attribution"] for r in results]))
    print(f"\n{len(results)} characters, asked as each file is used; dense with the persona prompt: attribution "
          f"{dense_attr:.2f}\n")
    print("| model, asked with | KL | attribution | of dense's | knowledge |")
    print("|---|---|---|---|---|")
    for label in labels:
        kl, attr, know = (float(np.mean([r[label][m] for r in results if label in r]))
                          for m in ("kl", "attribution", "knowledge"))
        print(f"| {label} | {kl:.3f} | {attr:.2f} | {attr / dense_attr:.0%} | {know:.2f} |")


if __name__ == "__main__":
    main()
