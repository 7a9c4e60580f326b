"""Sweep of mask-learning and healing settings, fast on a GPU: held-out KL computed in PyTorch.

fidelity.py measures every model through llama.cpp and takes about ten minutes per character and
method on 2 CPU cores; this sweep ranks settings in seconds each on a GPU. Two steps, because the
GPU machine has no llama.cpp:

    python benchmarks/mask_sweep.py data sweep.json      # CPU, here: calibration sets + held-out answers
    python benchmarks/mask_sweep.py run sweep.json BASE.gguf [--only default,heal16] [--budget 500]

`data` writes, for the first five RoleBench characters, the default recipe's persona calibration
sequences (128 questions, and 192 for the `q192` settings), the dense model's greedy llama.cpp
answers to the 10 held-out questions fidelity.py uses, and the generic calibration text. `run`
prunes 50% of the FFN channels with each setting below and prints one JSON line per setting: the
teacher-forced KL(dense || pruned) on the held-out answers per character, its ratio to wanda-sp
(generic calibration) and to the default setting, and the seconds spent scoring and healing.
Settings run in the order listed, in fp32 unless marked bf16, until --budget seconds have passed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ppgguf.calibration.batches import answer_distributions, shared_prefix_length
from ppgguf.inputs.base import load_base
from ppgguf.pruning.heal import heal
from ppgguf.pruning.importance import SCORERS, ScoringInputs
from ppgguf.pruning.importance import persona as persona_scorer
from ppgguf.pruning.plan import make_plan
from ppgguf.pruning.surgery import apply_plan

# name -> changes from `default`: 32 mask steps of 8 at lr 0.05, 128 questions, no heal (healing at
# lr 5e-5 unless heal_lr says otherwise). The default recipe is now `steps24-heal24-lr2e-4`.
SETTINGS = {
    "wanda-sp": {"method": "wanda-sp"},
    "default": {},
    "heal16": {"heal": 16},
    "heal32": {"heal": 32},
    "steps64": {"steps": 64},
    "q192": {"questions": 192},
    "default-bf16": {"bf16": True},
    "default-bf16-again": {"bf16": True, "repeat": 1},  # same as above: is the GPU run reproducible?
    "question-positions": {"question_positions": True},  # KL on the question tokens too
    "steps48-heal16": {"steps": 48, "heal": 16},
    "steps96": {"steps": 96},
    "lr0.1": {"lr": 0.1},
    "q192-heal16": {"questions": 192, "heal": 16},
    "heal32-lr1e-4": {"heal": 32, "heal_lr": 1e-4},
    # The CPU time of heal16, or of 32 mask steps + 16 heal steps split differently:
    "heal16-lr1e-4": {"heal": 16, "heal_lr": 1e-4},
    "heal16-lr2e-4": {"heal": 16, "heal_lr": 2e-4},
    "heal16-lr4e-4": {"heal": 16, "heal_lr": 4e-4},
    "lr0.1-heal16": {"lr": 0.1, "heal": 16},
    "steps24-heal24": {"steps": 24, "heal": 24},
    "steps24-heal24-lr2e-4": {"steps": 24, "heal": 24, "heal_lr": 2e-4},
    "steps24-heal24-lr1e-4": {"steps": 24, "heal": 24, "heal_lr": 1e-4},
    "steps16-heal32-lr1e-4": {"steps": 16, "heal": 32, "heal_lr": 1e-4},
}
SPARSITY = 0.5


def write_data(path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from fidelity import held_out_answers, load_character

    from ppgguf.build.pipeline import dense_teacher
    from ppgguf.calibration.answers import answer_sequences, cached_persona_calibration
    from ppgguf.calibration.generic import generic_sequences
    from ppgguf.export.writer import export_gguf
    from ppgguf.inputs.persona import persona_from_text
    from ppgguf.inputs.tokenizer import ChatTokenizer
    from ppgguf.llama.runtime import open_gguf
    from ppgguf.recipe import load_recipe, with_overrides

    recipe = load_recipe("default")
    work = Path(tempfile.mkdtemp(prefix="ppgguf-sweep-"))
    base = load_base(recipe.base.model, work)
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    export_gguf(base.model, base.family, base.tokenizer_spec, work / "dense.f16.gguf", "F16")
    dense = open_gguf(work / "dense.f16.gguf", n_ctx=2048, logits_all=True)
    data = {"generic": generic_sequences(tokenizer, recipe.calibration.generic_sequences, recipe.calibration.sequence_length), "characters": []}
    for index in range(5):
        character = load_character(index, 10)
        persona = persona_from_text(f"Name: {character['name']}\n{character['description']}")
        row = {"name": character["name"]}
        for count in (128, 192):
            settings = with_overrides(recipe, {"selected_questions": count}).calibration
            examples = cached_persona_calibration(base, tokenizer, persona, settings, recipe.prune.seed, print,
                                                  dense_teacher(base, settings.teacher, print))
            row[f"train{count}"] = answer_sequences(tokenizer, persona.system_prompt, examples)
        answers = held_out_answers(dense, tokenizer, persona.system_prompt, character["questions"])
        row["held_out"] = [(p + a, len(p)) for p, a in answers]
        data["characters"].append(row)
    path.write_text(json.dumps(data))


def held_out_kl(dense, model, sequences, device) -> float:
    pruned = answer_distributions(model, sequences, device, dtype=torch.float32)
    per_token = [(d.exp() * (d - q)).sum(-1) for d, q in zip(dense, pruned)]
    return torch.cat(per_token).mean().item()


def run(data_path: Path, base_path: str, only: list[str] | None, budget: float) -> None:
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = json.loads(data_path.read_text())
    characters = data["characters"]
    for c in characters:
        for key in ("train128", "train192", "held_out"):
            c[key] = [(list(ids), int(start)) for ids, start in c[key]]
    model = load_base(base_path, Path(tempfile.mkdtemp())).model.to(device)
    for c in characters:
        c["dense"] = answer_distributions(model, c["held_out"], device, dtype=torch.float32)
    bf16_autocast = persona_scorer._autocast
    masks, teachers, results = {}, {}, {}

    def importance(c, setting):
        key = (c["name"], json.dumps({k: v for k, v in setting.items() if k not in ("heal", "heal_lr")}, sort_keys=True))
        if key in masks:
            return masks[key], 0.0
        train = c[f"train{setting.get('questions', 128)}"]
        if setting.get("question_positions"):
            first = shared_prefix_length(train) + 1
            train = [(ids, first) for ids, _ in train]
        persona_scorer._autocast = bf16_autocast if setting.get("bf16") else (lambda _device: contextlib.nullcontext())
        method = setting.get("method", "persona")
        inputs = ScoringInputs(
            model=model, ffn_sparsity=SPARSITY, seed=0, device=device, persona_sequences=train,
            calibration=data["generic"] if method == "wanda-sp" else [],
            settings={"steps": setting.get("steps", 32), "batch_size": 8, "lr": setting.get("lr", 0.05), "loss": "kl"},
        )
        t = time.time()
        masks[key] = SCORERS[method](inputs)
        return masks[key], time.time() - t

    for name, setting in SETTINGS.items():
        if only and name not in only:
            continue
        if time.time() - started > budget:
            print(f"budget reached; stopping before {name}", flush=True)
            break
        row = {"setting": name}
        for c in characters:
            imp, score_s = importance(c, setting)
            pruned = apply_plan(copy.deepcopy(model), make_plan(imp, SPARSITY, 0.0, True))
            if setting.get("heal"):
                t = time.time()
                questions = setting.get("questions", 128)
                if (c["name"], questions) not in teachers:
                    teachers[c["name"], questions] = answer_distributions(model, c[f"train{questions}"], device)
                heal(pruned, c[f"train{questions}"], teachers[c["name"], questions], setting["heal"], 8,
                     setting.get("heal_lr", 5e-5), 0, device)
                pruned.to(device)
                row.setdefault("heal_s", []).append(round(time.time() - t, 1))
            row[c["name"]] = round(held_out_kl(c["dense"], pruned, c["held_out"], device), 4)
            row.setdefault("score_s", []).append(round(score_s, 1))
        names = [c["name"] for c in characters]
        row["mean"] = round(sum(row[n] for n in names) / len(names), 4)
        for reference in ("wanda-sp", "default"):
            if reference in results and name != reference:
                ratios = [row[n] / results[reference][n] for n in names]
                row[f"ratio_to_{reference}"] = [round(r, 3) for r in ratios]
                row[f"mean_ratio_to_{reference}"] = round(sum(ratios) / len(ratios), 3)
        if setting.get("repeat"):
            first = json.dumps({k: v for k, v in setting.items() if k != "repeat"}, sort_keys=True)
            again = json.dumps(setting, sort_keys=True)
            row["same_scores_as_first_run"] = all(
                torch.equal(a, b) for n in names for a, b in zip(masks[n, first].ffn, masks[n, again].ffn))
        results[name] = row
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write the sweep's data (needs llama.cpp)")
    data.add_argument("path", type=Path)
    sweep = commands.add_parser("run", help="run the settings (a GPU when there is one)")
    sweep.add_argument("path", type=Path)
    sweep.add_argument("base", help="the base model: a GGUF file or a built-in name")
    sweep.add_argument("--only", help="comma-separated setting names")
    sweep.add_argument("--budget", type=float, default=float("inf"), help="seconds before no new setting starts")
    args = parser.parse_args()
    if args.command == "data":
        write_data(args.path)
    else:
        run(args.path, args.base, args.only.split(",") if args.only else None, args.budget)


if __name__ == "__main__":
    main()
