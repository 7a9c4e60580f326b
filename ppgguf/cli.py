"""The `ppgguf` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Turn a chat model plus one character description into a small, fast GGUF of that character.",
)
err_console = Console(stderr=True)
console = Console()


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# What Ctrl-C leaves behind: a build keeps its finished stages; the other commands keep nothing.
BUILD_INTERRUPTED = "interrupted; finished stages are kept in the run directory"


def _run(fn, debug: bool, interrupted: str = "interrupted"):
    """Call `fn`; a UserError or an OSError becomes a one-line error, Ctrl-C prints `interrupted`."""
    try:
        return fn()
    except UserError as err:
        if debug:
            raise
        _fail(str(err))
    except OSError as err:  # the machine's problem, not a bug: disk full, permission denied, file vanished
        if debug:
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        _fail(f"{err.strerror or err}{where} (--debug shows the traceback)")
    except KeyboardInterrupt:
        err_console.print(interrupted, markup=False, highlight=False)
        raise typer.Exit(130)


@app.command()
def build(
    characters: list[Path] = typer.Argument(..., metavar="CHARACTER...", help="Character files: .txt (first line or `Name:` line names it), card .json or .png. Several share one loaded base model."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output GGUF (default: CHARACTER with .gguf)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: `smollm2-135m`, a .gguf file or a Hugging Face checkpoint directory."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name (default, quick, tiny) or path to a .toml file."),
    method: Optional[str] = typer.Option(None, "--method", help="Importance scorer: persona (default), wanda-sp, magnitude, random."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="A larger GGUF that writes the in-voice calibration answers (default: the base model)."),
    ffn_sparsity: Optional[float] = typer.Option(None, "--ffn-sparsity", help="Fraction of FFN channels removed in each layer, in [0, 1)."),
    head_sparsity: Optional[float] = typer.Option(None, "--head-sparsity", help="Fraction of attention heads (whole KV groups) removed, in [0, 1)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="auto (default: the most faithful measured type at least 5% smaller than the base's weights), F32, F16, Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, Q4_1, Q4_0, IQ4_NL, Q3_K_M, IQ2_XXS ..."),
    imatrix: Optional[str] = typer.Option(None, "--imatrix", help="Importance matrix for the quantizer: none, persona (the character's calibration answers) or generic."),
    embedding_quant: Optional[str] = typer.Option(None, "--embedding-quant", help="Type of the token embedding and output matrices (one tensor where tied): Q8_0, Q5_1, Q5_0, IQ4_NL, Q4_0 ...; default: the quant mix's own."),
    target_size: Optional[float] = typer.Option(None, "--target-size", metavar="MIB", help="Largest file size in MiB: FFN sparsity, quant, imatrix and embedding type are chosen for the lowest measured KL within it."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    heal: Optional[bool] = typer.Option(None, "--heal/--no-heal", help="Recovery finetuning of the kept weights after pruning (the recipe decides; the default recipe heals)."),
    bake: Optional[bool] = typer.Option(None, "--bake/--no-bake", help="Train the character into the weights, so a conversation prefills a short prompt (the name and the description's first words) instead of the persona prompt (the recipe's bake knobs pick the mode and the words)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Let layers keep different widths (writes the `deci` architecture)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Build a quantized, validated GGUF of each character, pruned where a smaller file is asked for.

    Examples:

        ppgguf build examples/captain_mirela.txt

        ppgguf build mirela.txt --ffn-sparsity 0.5 --head-sparsity 0.33 --quant Q4_K_M -o npc.gguf

        ppgguf build mirela.txt --quant Q4_K_M --imatrix persona   # importance-weighted rounding

        ppgguf build mirela.txt --quant IQ4_NL --embedding-quant Q5_0   # a 5-bit embedding, not Q8_0

        ppgguf build mirela.txt --target-size 70   # the most faithful file of at most 70 MiB

        ppgguf build guard.txt smith.png innkeeper.json   # one base model load for all three

        ppgguf build mirela.txt --bake   # the character in the weights: a short prompt to prefill, not the persona

        ppgguf build mirela.txt --ffn-sparsity 0 --head-sparsity 0 --quant F16   # dense reference
    """
    from .llama.keys import BAKE_OFF
    from .pruning.bake import BAKE_FLAG_MODE
    from .build.pipeline import BuildOptions, build_many

    overrides = {
        "base": base, "method": method, "ffn_sparsity": ffn_sparsity, "head_sparsity": head_sparsity,
        "quant": quant, "imatrix": imatrix, "embedding_quant": embedding_quant, "seed": seed,
        "uniform": False if per_layer else None,
        "teacher": str(teacher) if teacher else None, "heal": heal, "target_size_mib": target_size,
        "bake": None if bake is None else (BAKE_FLAG_MODE if bake else BAKE_OFF),
    }
    if out and len(characters) > 1:
        _fail("--out names one file: with several characters each GGUF is written beside its character file")
    many = [BuildOptions(character=c, out=out, recipe=recipe, overrides=overrides, device=device) for c in characters]
    if quiet or json_out:
        results = _run(lambda: build_many(many), debug, BUILD_INTERRUPTED)
    else:
        results = _run(lambda: _build_with_status(build_many, many), debug, BUILD_INTERRUPTED)
    if json_out:
        reports = [result.report for result in results]
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
    elif quiet:
        print("\n".join(str(result.path) for result in results))
    else:
        for result in results:
            _print_build_summary(result)


def _build_with_status(run_build, options):
    """Each stage as a line; steps of an iterative stage update one live status line instead."""
    from .stages import StepMessage

    with err_console.status("Starting") as status:
        def say(message: str) -> None:
            if isinstance(message, StepMessage):
                status.update(escape(message))
            else:
                err_console.print(f"[dim]- {escape(message)}[/]")
                status.update(escape(message))

        return run_build(options, progress=say)


def _print_build_summary(result) -> None:
    from .llama.keys import baked

    r = result.report
    params, val = r["parameters"], r["validation"]
    embedding = f", embedding and output {r['recipe']['embedding_quant']}" if r["recipe"].get("embedding_quant") else ""
    console.print(f"[bold green]built[/] {escape(str(result.path))}  "
                  f"({r['file_bytes'] / 2**20:.1f} MiB, {r['recipe']['quant']}{embedding}, {r['architecture']})")
    console.print(f"parameters {params['dense']:,} -> {params['pruned']:,} ({params['kept_fraction']:.1%} kept)")
    console.print(f"llama.cpp vs PyTorch: top-1 {val['top1']:.1%}, mean KL {val['kl_mean']:.4f} over {val['positions']} positions")
    if baked(r["bake"]["mode"]):
        console.print(f"persona baked into the weights ({r['bake']['mode']}): the template sends "
                      f"{escape(repr(r['bake']['template_system_prompt']))} in place of the persona prompt")
    repetition = val.get("repetition")
    if repetition:
        console.print(f"greedy answers looping: {repetition['looping']} of {repetition['answers']}")
    for warning in r.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    fallbacks = r["quantization"]["fallbacks"]
    if fallbacks:
        console.print(f"{len(fallbacks)} matrices stored in another type than {r['recipe']['quant']} (see report)")
    peak, predicted = r["memory"]["peak_rss_bytes"]["total"], r["memory"]["predicted_peak_bytes"]
    console.print(f"{r['seconds']['total'] / 60:.1f} min, peak memory {peak / 2**30:.2f} GiB"
                  + (f" (predicted {predicted['total'] / 2**30:.2f} GiB)" if predicted else ""))
    console.print(f"report: {escape(str(result.report_path))}")


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A GGUF file."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Show a GGUF's architecture, parameters, widths per layer and persona keys.

    Example:

        ppgguf inspect captain_mirela.gguf
    """
    from .use.inspect import inspect_gguf

    info = _run(lambda: inspect_gguf(file), debug)
    if json_out:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    console.print(f"[bold]{escape(str(file))}[/]  {escape(str(info['architecture']))}, {info['parameters']:,} parameters, {info['file_bytes'] / 2**20:.1f} MiB")
    console.print(f"name: {escape(str(info['name']))}   file type: {info['file_type']}   layers: {info['layers']}")
    if info["ppgguf"]:
        console.print("persona: " + ("baked into the weights (the template sends a short prompt, not the persona prompt)" if info["baked"] else
                                     "in the chat template (prefilled in every conversation)"))
    table = Table("layer", "n_ff", "n_head", "n_head_kv")
    for i, w in enumerate(info["widths"]):
        table.add_row(str(i), str(w["n_ff"]), str(w["n_head"]), str(w["n_head_kv"]))
    console.print(table)
    for key, value in info["ppgguf"].items():
        text = value if isinstance(value, str) else json.dumps(value)
        console.print(f"[cyan]{escape(key)}[/] = {escape(text[:200] + ('...' if len(text) > 200 else ''))}", highlight=False)


@app.command("eval")
def eval_command(
    npc: Path = typer.Argument(..., help="The pruned GGUF."),
    against: Path = typer.Option(..., "--against", help="The dense GGUF it was built from (same tokenizer)."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="Questions file (.jsonl with \"question\", or one per line)."),
    n: int = typer.Option(10, "-n", help="Number of questions."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per greedy answer."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="Persona system prompt (default: the NPC file's ppgguf.system_prompt)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the default question subset."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Compare a pruned GGUF with its dense model: KL on in-character answers, persona attribution,
    general knowledge, sample answers.

    Example:

        ppgguf eval npc.gguf --against dense.gguf
    """
    from .use.evaluate import evaluate
    from .use.render import render_eval

    report = _run(lambda: evaluate(npc, against, questions, n=n, seed=seed, system_prompt=system_prompt,
                                   max_tokens=max_tokens, threads=threads), debug)
    if json_out:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        render_eval(report, console)


@app.command()
def bench(
    npc: Path = typer.Argument(..., help="The pruned GGUF."),
    against: Optional[Path] = typer.Option(None, "--against", help="The dense GGUF, for speed-ups."),
    reps: int = typer.Option(5, "--reps", help="Repetitions (interleaved dense, npc, ...; medians)."),
    tokens: int = typer.Option(64, "--tokens", help="Tokens decoded per repetition."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Measure prompt and decode speed, time to first token, memory and size in llama.cpp.

    Example:

        ppgguf bench npc.gguf --against dense.gguf --reps 10
    """
    from .use.bench import bench as run_bench
    from .use.render import render_bench

    report = _run(lambda: run_bench(npc, against, reps=reps, n_decode=tokens, threads=threads), debug)
    if json_out:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        render_bench(report, console)


@app.command()
def chat(
    npc: Path = typer.Argument(..., help="A GGUF built by ppgguf (any chat GGUF works)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (default: the one baked into the file)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (default: the file's general.sampling.temp, else 0.7)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling (default: the file's, else 0.9)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest reply, in tokens."),
    ctx: int = typer.Option(2048, "--ctx", help="Context window in tokens; the oldest turns are dropped to fit."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per reply."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No greeting; replies only."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Talk to a character. Reads lines from the terminal or from piped input (exits at its end).

    Commands: /reset, /system TEXT, /stats, /save FILE, /help, /quit.

    Example:

        ppgguf chat captain_mirela.gguf

        printf 'Who are you?\\n' | ppgguf chat captain_mirela.gguf --json
    """
    from .use.chat import ChatSession
    from .use.repl import run_repl

    session = _run(lambda: ChatSession(npc, system=system, n_ctx=ctx, max_tokens=max_tokens,
                                       temperature=temperature, top_p=top_p, seed=seed), debug)
    try:
        code = _run(lambda: run_repl(session, json_mode=json_out, quiet=quiet), debug)
    finally:
        session.close()
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
