"""`ppgguf bench`: is a pruned GGUF faster than its dense twin, from the files alone.

Prompt and decode speed, time to first token, memory, size, and the speed-up the bytes predict;
runs interleaved, medians. The measures live in `ppgguf.evaluation.speed` and `ppgguf.stages`
(resident memory), the table in `ppgguf.use.render`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..evaluation import speed
from ..stages import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from .evaluate import GGUFInfo, chat_tokenizer_of, open_llm, read_info, read_pair

BENCH_QUESTION = "Tell me about yourself and what you do all day."


def bench(
    npc_path: Path,
    dense_path: Path | None = None,
    reps: int = 5,
    n_decode: int = 64,
    threads: int | None = None,
    system_prompt: str | None = None,
    question: str = BENCH_QUESTION,
) -> dict:
    """Speed of `npc_path` (and `dense_path`), runs interleaved dense, npc, dense, npc...; medians.

    Each file is asked as it is used: the npc with no system message (its template inserts the
    persona prompt, or a baked file's short prompt), the dense file with the npc's persona prompt.
    A baked npc is also asked with the full persona prompt ("npc prompted"), so the table shows
    what baking saves per conversation: prompt tokens, time to first token and KV-cache bytes.
    `system_prompt` replaces every one of these.
    """
    if reps < 1:
        raise UserError("--reps must be at least 1")
    npc = read_info(Path(npc_path))
    models = {"npc": npc}
    if dense_path is not None:
        npc, dense = read_pair(Path(npc_path), Path(dense_path))
        models = {"dense": dense, "npc": npc}
    tokenizer = chat_tokenizer_of(npc.path)
    user = [{"role": "user", "content": question}]
    system = system_prompt if system_prompt is not None else npc.system_prompt
    prompted = ([{"role": "system", "content": system}] if system else []) + user
    conditions = {label: (info, prompted if label != "npc" or system_prompt is not None else user)
                  for label, info in models.items()}
    if npc.baked and system_prompt is None and npc.system_prompt:
        conditions["npc prompted"] = (npc, prompted)
    prompts = {label: tokenizer.chat_ids(messages, add_generation_prompt=True) for label, (_, messages) in conditions.items()}
    threads = threads or os.cpu_count()
    samples, memory = _timed_runs({label: info for label, (info, _) in conditions.items()}, prompts, n_decode, reps, threads)
    rows = {}
    for label, (info, _) in conditions.items():
        runs = samples[label]
        rows[label] = {
            **info.to_json(),
            "prompt_tokens": len(prompts[label]),
            "prompt_kv_bytes": len(prompts[label]) * info.kv_bytes_per_token,  # held per NPC for its conversation
            "pp_tokens_per_s": speed.median([r.pp_tokens_per_s for r in runs]),
            "decode_tokens_per_s": speed.median([r.decode_tokens_per_s for r in runs]),
            "ttft_s": speed.median([r.ttft_s for r in runs]),
            "peak_memory_bytes": memory[label],
            "decode_tokens_per_s_runs": [round(r.decode_tokens_per_s, 2) for r in runs],
        }
    result = {"reps": reps, "threads": threads, "decode_tokens": n_decode, "question": question, "models": rows}
    if "dense" in rows:
        d, p = rows["dense"], rows["npc"]
        result["speedup"] = {
            "decode": p["decode_tokens_per_s"] / d["decode_tokens_per_s"],
            "pp": p["pp_tokens_per_s"] / d["pp_tokens_per_s"],
            "ttft": d["ttft_s"] / p["ttft_s"],
            "size": d["file_bytes"] / p["file_bytes"],
            "bound": speed.bound_speedup(models["dense"].matrix_bytes, models["npc"].matrix_bytes),
        }
    return result


def _timed_runs(models: dict[str, GGUFInfo], prompts: dict[str, list[int]], n_decode: int, reps: int, threads: int):
    """Speed samples per label (`reps` interleaved runs after a warm-up) and the memory each load took.

    Labels that name the same file share one loaded model.
    """
    llms, memory = {}, {}
    try:
        for label, info in models.items():
            if info.path in llms:  # loaded for an earlier label: its memory is that load's
                memory[label] = memory[next(k for k, other in models.items() if other.path == info.path)]
                continue
            before = current_rss_bytes()
            exact = reset_peak_rss()
            llms[info.path] = open_llm(info.path, max(map(len, prompts.values())) + n_decode + 16, threads)
            speed.speed_sample(llms[info.path], prompts[label], n_decode)  # warm-up: touches every weight
            after = peak_rss_bytes() if exact else current_rss_bytes()
            memory[label] = max(after - before, 0)
        samples: dict[str, list[speed.SpeedSample]] = {label: [] for label in models}
        for _ in range(reps):
            for label, info in models.items():
                samples[label].append(speed.speed_sample(llms[info.path], prompts[label], n_decode))
    finally:
        for llm in llms.values():
            llm.close()
    return samples, memory
