"""The tables `ppgguf eval` and `ppgguf bench` print, from their reports.

Text that comes from a model or a file (answers, questions, names, paths) is data, never Rich
markup: it goes in as `Text` or escaped.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.text import Text


def render_eval(report: dict, console) -> None:
    att, gk, kl = report["attribution"], report["general_knowledge"], report["kl"]
    console.print(
        f"[bold]{escape(str(report['character']))}[/]: {escape(report['npc']['path'])} "
        f"against {escape(report['dense']['path'])}"
    )
    table = Table("measure", "dense", "npc", "note")
    table.add_row("KL(dense || npc)", "0", f"{kl['kl_mean']:.4f}",
                  f"mean over {kl['tokens']} answer tokens of {kl['sequences']} answers")
    table.add_row("persona attribution", f"{att['dense']['accuracy']:.0%}", f"{att['npc']['accuracy']:.0%}",
                  f"nearest of {att['npc']['candidates']} characters")
    table.add_row("general knowledge", f"{gk['dense']:.0%}", f"{gk['npc']:.0%}",
                  f"{gk['questions']} multiple-choice questions")
    rep = report.get("repetition")
    if rep:
        table.add_row("answers that loop", f"{rep['dense']:.0%}", f"{rep['npc']:.0%}",
                      "greedy answers repeating their own words")
    console.print(table)
    for sample in report["samples"]:
        side = Table(show_header=True, title=Text(sample["question"]), title_justify="left", expand=True)
        side.add_column("dense", ratio=1)
        side.add_column("npc", ratio=1)
        side.add_row(Text(sample["dense"]), Text(sample["npc"]))
        console.print(side)


def render_bench(report: dict, console) -> None:
    models = report["models"]
    table = Table("model", "prompt tokens", "prompt KV", "decode tok/s", "prompt tok/s", "first token", "memory", "file",
                  "matrix bytes/token")
    for label, row in models.items():
        table.add_row(
            label, str(row["prompt_tokens"]), f"{row['prompt_kv_bytes'] / 2**20:.2f} MiB",
            f"{row['decode_tokens_per_s']:.1f}", f"{row['pp_tokens_per_s']:.0f}", f"{row['ttft_s'] * 1000:.0f} ms",
            f"{row['peak_memory_bytes'] / 2**20:.0f} MiB", f"{row['file_bytes'] / 2**20:.1f} MiB",
            f"{row['matrix_bytes_per_token'] / 2**20:.1f} MiB",
        )
    speed = report.get("speedup")
    if speed:
        table.add_row(
            "speed-up", "", "", f"{speed['decode']:.2f}x", f"{speed['pp']:.2f}x", f"{speed['ttft']:.2f}x", "",
            f"{speed['size']:.2f}x", f"bound {speed['bound']:.2f}x",
        )
    console.print(table)
    console.print(
        f"[dim]{report['reps']} interleaved repetitions, medians; each file asked as it is used (a baked file "
        f"without the persona prompt); prompt KV: the cache its prompt holds per NPC (F16); "
        f"{report['decode_tokens']} decoded, {report['threads']} threads[/]"
    )
