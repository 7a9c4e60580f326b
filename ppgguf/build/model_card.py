"""The Markdown model card of a built GGUF, written from the build report."""

from __future__ import annotations

from pathlib import Path

from ..llama.keys import BAKE_OFF, baked


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _span(xs: list[int]) -> str:
    return str(xs[0]) if len(xs) == 1 else f"{xs[0]}-{xs[-1]}"


def model_card_text(report: dict) -> str:
    """A Markdown model card for the build described by `report` (ppgguf.build.pipeline's report)."""
    out_name = Path(report["output"]).name
    stem = Path(out_name).stem
    name = report.get("character", stem)
    base = report.get("base", {})
    lines = [
        f"# {name}",
        "",
        f"A single-character chat model: **{base.get('name', 'the base model')}** pruned down to the one "
        f"character *{name}* by [ppgguf](https://github.com/) (Persona-Pruner style structured pruning), "
        f"then quantized with llama.cpp's own quantizer and validated against its PyTorch twin.",
        "",
        *_where_the_character_is(report, name),
        *_at_a_glance(report, out_name),
        *_fidelity(report.get("validation", {})),
        *_how_to_run(out_name, stem),
    ]
    persona = report.get("persona", {}) or {}
    if persona.get("system_prompt"):
        lines += ["## System prompt", "", "```text", persona["system_prompt"].replace("```", "`\u200b``"), "```", ""]
    versions = report.get("versions", {})
    if versions:
        lines += [
            "## Provenance",
            "",
            f"Built by ppgguf {versions.get('ppgguf', report.get('ppgguf_version', '?'))} with "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "ppgguf")
            + f". Base weights sha256 `{base.get('sha256', '?')}`.",
            "",
        ]
    return "\n".join(lines)


def _at_a_glance(report: dict, out_name: str) -> list[str]:
    base = report.get("base", {})
    recipe = report.get("recipe", {})
    params = report.get("parameters", {})
    quant = report.get("quantization", {})
    widths = report.get("widths", [])
    licence = base.get("license") or report.get("license") or "not stated by the base model"
    lines = [
        "## At a glance",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{out_name}` |",
        f"| base model | {base.get('name', '?')} |",
        f"| base licence | {licence} (this file is a derivative and carries the same licence) |",
        f"| architecture | `{report.get('architecture', '?')}` |",
    ]
    if params:
        lines.append(
            f"| parameters | {params.get('dense', 0):,} dense -> {params.get('pruned', 0):,} pruned "
            f"({_pct(params.get('kept_fraction', 0))} kept) |"
        )
    if "ffn_sparsity" in recipe or "head_sparsity" in recipe:
        lines.append(
            f"| sparsity | {_pct(recipe.get('ffn_sparsity', 0))} of FFN channels, "
            f"{_pct(recipe.get('head_sparsity', 0))} of attention heads removed "
            f"(method `{recipe.get('method', '?')}`, seed {recipe.get('seed', '?')}) |"
        )
    if "file_bytes" in report:
        lines.append(f"| file size | {_mib(report['file_bytes'])} ({report['file_bytes']:,} bytes) |")
    if quant:
        types = ", ".join(f"{k} x{v}" for k, v in quant.get("tensor_types", {}).items())
        embedding = f", embedding and output {quant['embedding_quant']}" if quant.get("embedding_quant") else ""
        lines.append(f"| quantization | {quant.get('quant', recipe.get('quant', '?'))}{embedding} (tensor types: {types}) |")
    if widths:
        ffn = sorted({w["n_ff"] for w in widths})
        heads = sorted({w["n_head"] for w in widths})
        kv = sorted({w["n_head_kv"] for w in widths})
        lines.append(
            f"| kept widths | {len(widths)} layers; FFN {_span(ffn)}, heads {_span(heads)}, "
            f"KV heads {_span(kv)} per layer |"
        )
    lines.append("")
    return lines


def _fidelity(val: dict) -> list[str]:
    if not val:
        return []
    lines = [
        "## Measured fidelity",
        "",
        "Before this file was written, ppgguf ran it in llama.cpp and compared its next-token "
        "predictions with the pruned PyTorch model it was exported from, on the same token ids "
        f"({val.get('positions', '?')} positions of fixed validation conversations):",
        "",
        f"- **top-1 agreement {_pct(val.get('top1', 0))}** (strict argmax {_pct(val.get('top1_strict', 0))}): "
        "how often llama.cpp's most likely next token is the PyTorch model's (near-ties count as agreement);",
        f"- **mean KL {val.get('kl_mean', 0):.4g}** (max {val.get('kl_max', 0):.4g}) nats: how far the "
        "file's next-token distribution is from the PyTorch model's; 0 is identical.",
    ]
    if val.get("gated"):
        lines.append("- this quantization type is gated: the build fails if the file disagrees with PyTorch.")
    else:
        lines.append("- this quantization type is measured, not gated: quantization error is expected here.")
    repetition = val.get("repetition")
    if repetition:
        lines.append(f"- greedy answers to {repetition['answers']} validation questions: {repetition['looping']} loop "
                     "(repeat the same words over and over); the file's sampling settings repeat less.")
    floor = val.get("f16_noise_floor")
    if floor:
        lines.append(
            f"- for comparison, rounding the PyTorch model's own weights to F16 gives mean KL "
            f"{floor.get('kl_mean', 0):.4g} and top-1 {_pct(floor.get('top1', 0))}."
        )
    return lines + [
        "",
        "These figures say the file computes what the pruned model computes. They do not measure how "
        "well the pruned model plays the character compared with the dense base model.",
        "",
    ]


def _where_the_character_is(report: dict, name: str) -> list[str]:
    bake = report.get("bake", {}) or {}
    if not baked(bake.get("mode", BAKE_OFF)):
        return [f"The character's system prompt is baked into the file: in any front end that uses the GGUF's "
                f"chat template (llama.cpp, LM Studio, llama-cpp-python) a conversation without a system message "
                f"talks to {name}. A system message of your own replaces it.", ""]
    return [f"The character is trained into the weights (`--bake`, mode {bake['mode']}): the persona prompt is "
            f"not prefilled. Without a system message the file's chat template sends only "
            f"`{bake['template_system_prompt'].replace('`', '')}`; a system message of your own replaces it. The "
            f"full persona prompt below still travels in the file (`ppgguf.system_prompt`).", ""]


def _how_to_run(gguf_file: str, stem: str) -> list[str]:
    model_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem.lower()).strip("-") or "npc"
    return [
        "## How to run it",
        "",
        "llama.cpp (recent builds apply the file's chat template, and with it the character, by default; "
        "older ones need `--jinja`):",
        "",
        "```bash",
        f"llama-cli -m {gguf_file} -cnv",
        "```",
        "",
        "Ollama (the Modelfile beside this card carries the system prompt, chat template and sampling):",
        "",
        "```bash",
        f"ollama create {model_name} -f {stem}.Modelfile",
        f"ollama run {model_name}",
        "```",
        "",
        f"LM Studio: copy `{gguf_file}` into your models folder (for example "
        f"`~/.lmstudio/models/ppgguf/{stem}/`) and load it; the baked chat template supplies the character.",
        "",
        "ppgguf's own REPL:",
        "",
        "```bash",
        f"ppgguf chat {gguf_file}",
        "```",
        "",
    ]
