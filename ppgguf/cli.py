"""The `ppgguf` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _run(fn, debug: bool):
    try:
        return fn()
    except UserError as err:
        if debug:
            raise
        _fail(str(err))
    except KeyboardInterrupt:
        err_console.print("interrupted; finished stages are kept in the run directory")
        raise typer.Exit(130)


@app.command()
def build(
    character: Path = typer.Argument(..., help="Character description: a .txt file (first line or `Name:` line names it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output GGUF (default: CHARACTER with .gguf)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: `smollm2-135m`, a .gguf file or a Hugging Face checkpoint directory."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name (default, quick, tiny) or path to a .toml file."),
    method: Optional[str] = typer.Option(None, "--method", help="Importance scorer: wanda-sp, magnitude, random."),
    ffn_sparsity: Optional[float] = typer.Option(None, "--ffn-sparsity", help="Fraction of FFN channels removed in each layer, in [0, 1)."),
    head_sparsity: Optional[float] = typer.Option(None, "--head-sparsity", help="Fraction of attention heads (whole KV groups) removed, in [0, 1)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="F32, F16, Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, Q4_0 ..."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Let layers keep different widths (writes the `deci` architecture)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Build a pruned, quantized, validated GGUF of one character.

    Examples:

        ppgguf build examples/captain_mirela.txt

        ppgguf build mirela.txt --ffn-sparsity 0.5 --head-sparsity 0.33 --quant Q4_K_M -o npc.gguf

        ppgguf build mirela.txt --ffn-sparsity 0 --head-sparsity 0 --quant F16   # dense reference
    """
    from .build import BuildOptions
    from .build import build as run_build

    overrides = {
        "base": base, "method": method, "ffn_sparsity": ffn_sparsity, "head_sparsity": head_sparsity,
        "quant": quant, "seed": seed, "uniform": False if per_layer else None,
    }
    options = BuildOptions(character=character, out=out, recipe=recipe, overrides=overrides, device=device)
    say = (lambda _: None) if (quiet or json_out) else (lambda msg: err_console.print(f"[dim]- {msg}[/]"))
    result = _run(lambda: run_build(options, progress=say), debug)
    if json_out:
        print(json.dumps(result.report, indent=2, ensure_ascii=False))
    elif quiet:
        print(result.path)
    else:
        _print_build_summary(result)


def _print_build_summary(result) -> None:
    r = result.report
    params, val = r["parameters"], r["validation"]
    console.print(f"[bold green]built[/] {result.path}  ({r['file_bytes'] / 2**20:.1f} MiB, {r['recipe']['quant']}, {r['architecture']})")
    console.print(f"parameters {params['dense']:,} -> {params['pruned']:,} ({params['kept_fraction']:.1%} kept)")
    console.print(f"llama.cpp vs PyTorch: top-1 {val['top1']:.1%}, mean KL {val['kl_mean']:.4f} over {val['positions']} positions")
    fallbacks = r["quantization"]["fallbacks"]
    if fallbacks:
        console.print(f"{len(fallbacks)} matrices stored in another type than {r['recipe']['quant']} (see report)")
    console.print(f"report: {result.report_path}")


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
    from .inspect import inspect_gguf

    info = _run(lambda: inspect_gguf(file), debug)
    if json_out:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    console.print(f"[bold]{file}[/]  {info['architecture']}, {info['parameters']:,} parameters, {info['file_bytes'] / 2**20:.1f} MiB")
    console.print(f"name: {info['name']}   file type: {info['file_type']}   layers: {info['layers']}")
    table = Table("layer", "n_ff", "n_head", "n_head_kv")
    for i, w in enumerate(info["widths"]):
        table.add_row(str(i), str(w["n_ff"]), str(w["n_head"]), str(w["n_head_kv"]))
    console.print(table)
    for key, value in info["ppgguf"].items():
        text = value if isinstance(value, str) else json.dumps(value)
        console.print(f"[cyan]{key}[/] = {text[:200] + ('...' if len(text) > 200 else '')}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
