"""`ppgguf eval` and `ppgguf bench`: a pruned GGUF against its dense twin, from the files alone.

`evaluate` answers "did the character survive?" (KL to the dense model on the dense model's own
in-character answers, persona attribution, general knowledge); `bench` answers "is it faster?"
(prompt and decode speed, time to first token, memory, size, and the speed-up the bytes predict).
The measures themselves live in `ppgguf.measure`.
"""

from __future__ import annotations

import json
import os
import random
from importlib import resources
from pathlib import Path

from . import measure
from .errors import UserError
from .llama_io import open_gguf
from .tokenizer import ChatTokenizer

DEFAULT_QUESTIONS = 10
DEFAULT_MAX_TOKENS = 64
SAMPLES = 3
BENCH_QUESTION = "Tell me about yourself and what you do all day."


def load_questions(path: Path | None, n: int, seed: int = 0) -> list[str]:
    """`n` questions: a seeded subset of the package's question pool, or the first `n` of `path`
    (a .jsonl file with a "question" field per line, or plain text, one question per line)."""
    if path is None:
        text = (resources.files("ppgguf") / "data" / "questions.jsonl").read_text(encoding="utf-8")
        pool = [json.loads(line)["question"] for line in text.splitlines() if line.strip()]
        return random.Random(seed).sample(pool, min(n, len(pool)))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such questions file")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                questions.append(str(json.loads(line)["question"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a \"question\" field") from None
        else:
            questions.append(line)
    if not questions:
        raise UserError(f"{path}: no questions in the file")
    return questions[:n]


def _pair(npc_path: Path, dense_path: Path) -> tuple[measure.GGUFInfo, measure.GGUFInfo]:
    npc, dense = measure.read_info(npc_path), measure.read_info(dense_path)
    measure.check_same_tokenizer(npc, dense)
    return npc, dense


def _chat_tokenizer(path: Path) -> ChatTokenizer:
    return ChatTokenizer(measure.read_header(path).tokenizer_spec(), path)


def _system_prompt(npc: measure.GGUFInfo, given: str | None) -> str:
    prompt = given if given is not None else npc.system_prompt
    if not prompt:
        raise UserError(
            f"{npc.path.name} carries no ppgguf.system_prompt (not built by ppgguf?); give one with --system-prompt"
        )
    return prompt


def evaluate(
    npc_path: Path,
    dense_path: Path,
    questions_file: Path | None = None,
    n: int = DEFAULT_QUESTIONS,
    seed: int = 0,
    system_prompt: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threads: int | None = None,
    embed: measure.Embedder | None = None,
    general_knowledge: list[dict] | None = None,
) -> dict:
    npc, dense = _pair(Path(npc_path), Path(dense_path))
    system = _system_prompt(npc, system_prompt)
    questions = load_questions(questions_file, n, seed)
    items = measure.load_general_knowledge() if general_knowledge is None else general_knowledge
    tokenizer = _chat_tokenizer(npc.path)
    prompts = [
        tokenizer.chat_ids([{"role": "system", "content": system}, {"role": "user", "content": q}], True)
        for q in questions
    ]
    n_ctx = max(len(p) for p in prompts) + max_tokens + 8
    for item in items:
        for ids, _ in measure.choice_sequences(tokenizer, item["question"], item["choices"], system):
            n_ctx = max(n_ctx, len(ids) + 8)

    def load(path):
        try:
            return open_gguf(path, n_ctx=n_ctx, logits_all=True, threads=threads)
        except ValueError as err:
            raise UserError(f"{path}: does not load in llama.cpp ({err})") from None

    dense_llm = load(dense.path)
    npc_llm = load(npc.path)
    try:
        dense_answers = [measure.greedy_answer(dense_llm, p, max_tokens) for p in prompts]
        npc_answers = [measure.greedy_answer(npc_llm, p, max_tokens) for p in prompts]
        sequences = [p + a for p, a in zip(prompts, dense_answers)]
        spans = [(len(p), len(p) + len(a)) for p, a in zip(prompts, dense_answers)]
        kl = measure.teacher_forced_kl(dense_llm, npc_llm, sequences, spans)
        gk_dense = measure.general_knowledge_accuracy(dense_llm, tokenizer, items, system)
        gk_npc = measure.general_knowledge_accuracy(npc_llm, tokenizer, items, system)
    finally:
        dense_llm.close()
        npc_llm.close()

    def text(ids: list[int]) -> str:
        return tokenizer.decode([t for t in ids if t != tokenizer.eos_id]).replace("<|im_end|>", "").strip()

    dense_texts, npc_texts = [text(a) for a in dense_answers], [text(a) for a in npc_answers]
    description = npc.description or system
    others = measure.other_descriptions(npc.persona_name)
    embed = embed or measure.load_embedder()
    return {
        "npc": npc.to_json(),
        "dense": dense.to_json(),
        "character": npc.persona_name or npc.name,
        "questions": len(questions),
        "max_tokens": max_tokens,
        "kl": kl,
        "attribution": {
            "dense": measure.attribution(dense_texts, description, others, embed),
            "npc": measure.attribution(npc_texts, description, others, embed),
        },
        "general_knowledge": {
            "dense": gk_dense["accuracy"],
            "npc": gk_npc["accuracy"],
            "questions": gk_dense["questions"],
            "agreement": (
                sum(a == b for a, b in zip(gk_dense["picks"], gk_npc["picks"])) / len(items) if items else float("nan")
            ),
        },
        "samples": [
            {"question": q, "dense": d, "npc": s}
            for q, d, s in list(zip(questions, dense_texts, npc_texts))[:SAMPLES]
        ],
    }


def bench(
    npc_path: Path,
    dense_path: Path | None = None,
    reps: int = 5,
    n_decode: int = 64,
    threads: int | None = None,
    system_prompt: str | None = None,
    question: str = BENCH_QUESTION,
) -> dict:
    """Speed of `npc_path` (and `dense_path`), runs interleaved dense, npc, dense, npc...; medians."""
    if reps < 1:
        raise UserError("--reps must be at least 1")
    npc = measure.read_info(Path(npc_path))
    models = {"npc": npc}
    if dense_path is not None:
        npc, dense = _pair(Path(npc_path), Path(dense_path))
        models = {"dense": dense, "npc": npc}
    system = system_prompt if system_prompt is not None else (npc.system_prompt or "")
    tokenizer = _chat_tokenizer(npc.path)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    prompt = tokenizer.chat_ids(messages, add_generation_prompt=True)
    n_ctx = len(prompt) + n_decode + 16
    threads = threads or os.cpu_count()

    llms, memory = {}, {}
    try:
        for label, info in models.items():
            before = measure.current_rss_bytes()
            exact = measure.reset_peak_rss()
            try:
                llms[label] = open_gguf(info.path, n_ctx=n_ctx, threads=threads)
            except ValueError as err:
                raise UserError(f"{info.path}: does not load in llama.cpp ({err})") from None
            measure.speed_sample(llms[label], prompt, n_decode)  # warm-up: touches every weight
            after = measure.peak_rss_bytes() if exact else measure.current_rss_bytes()
            memory[label] = max(after - before, 0)
        samples: dict[str, list[measure.SpeedSample]] = {label: [] for label in models}
        for _ in range(reps):
            for label in models:
                samples[label].append(measure.speed_sample(llms[label], prompt, n_decode))
    finally:
        for llm in llms.values():
            llm.close()

    rows = {}
    for label, info in models.items():
        runs = samples[label]
        rows[label] = {
            **info.to_json(),
            "pp_tokens_per_s": measure.median([r.pp_tokens_per_s for r in runs]),
            "decode_tokens_per_s": measure.median([r.decode_tokens_per_s for r in runs]),
            "ttft_s": measure.median([r.ttft_s for r in runs]),
            "peak_memory_bytes": memory[label],
            "decode_tokens_per_s_runs": [round(r.decode_tokens_per_s, 2) for r in runs],
        }
    result = {
        "reps": reps, "threads": threads, "prompt_tokens": len(prompt), "decode_tokens": n_decode,
        "models": rows,
    }
    if "dense" in rows:
        d, p = rows["dense"], rows["npc"]
        result["speedup"] = {
            "decode": p["decode_tokens_per_s"] / d["decode_tokens_per_s"],
            "pp": p["pp_tokens_per_s"] / d["pp_tokens_per_s"],
            "ttft": d["ttft_s"] / p["ttft_s"],
            "size": d["file_bytes"] / p["file_bytes"],
            "bound": measure.bound_speedup(models["dense"], models["npc"]),
        }
    return result


# --------------------------------------------------------------------------------------------
# readable tables (the CLI prints these)


def render_eval(report: dict, console) -> None:
    from rich.table import Table

    att, gk, kl = report["attribution"], report["general_knowledge"], report["kl"]
    console.print(f"[bold]{report['character']}[/]: {report['npc']['path']} against {report['dense']['path']}")
    table = Table("measure", "dense", "npc", "note")
    table.add_row("KL(dense || npc)", "0", f"{kl['kl_mean']:.4f}",
                  f"mean over {kl['tokens']} answer tokens of {kl['sequences']} answers")
    table.add_row("persona attribution", f"{att['dense']['accuracy']:.0%}", f"{att['npc']['accuracy']:.0%}",
                  f"nearest of {att['npc']['candidates']} characters")
    table.add_row("general knowledge", f"{gk['dense']:.0%}", f"{gk['npc']:.0%}",
                  f"{gk['questions']} multiple-choice questions")
    console.print(table)
    for sample in report["samples"]:
        side = Table(show_header=True, title=sample["question"], title_justify="left", expand=True)
        side.add_column("dense", ratio=1)
        side.add_column("npc", ratio=1)
        side.add_row(sample["dense"], sample["npc"])
        console.print(side)


def render_bench(report: dict, console) -> None:
    from rich.table import Table

    models = report["models"]
    table = Table("model", "decode tok/s", "prompt tok/s", "first token", "memory", "file", "matrix bytes/token")
    for label, row in models.items():
        table.add_row(
            label, f"{row['decode_tokens_per_s']:.1f}", f"{row['pp_tokens_per_s']:.0f}", f"{row['ttft_s'] * 1000:.0f} ms",
            f"{row['peak_memory_bytes'] / 2**20:.0f} MiB", f"{row['file_bytes'] / 2**20:.1f} MiB",
            f"{row['matrix_bytes_per_token'] / 2**20:.1f} MiB",
        )
    speed = report.get("speedup")
    if speed:
        table.add_row(
            "speed-up", f"{speed['decode']:.2f}x", f"{speed['pp']:.2f}x", f"{speed['ttft']:.2f}x", "",
            f"{speed['size']:.2f}x", f"bound {speed['bound']:.2f}x",
        )
    console.print(table)
    console.print(
        f"[dim]{report['reps']} interleaved repetitions, medians; {report['prompt_tokens']} prompt tokens, "
        f"{report['decode_tokens']} decoded, {report['threads']} threads[/]"
    )
