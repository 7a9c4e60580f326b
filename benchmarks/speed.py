"""Speed of pruned GGUFs against the dense one, per quant type: a table, not a test.

Builds examples/captain_mirela.txt on the default base model, dense (sparsity 0) and pruned
(FFN sparsity 0.25 / 0.5, each with and without head sparsity 0.33), for each quant type, with the
data-free `magnitude` scorer (speed does not depend on which channels are kept), then measures each
pruned file against the dense one of the same type with `ppgguf.use.bench.bench` (interleaved runs,
medians) and prints decode tok/s, prompt tok/s, size, speed-up and the bytes-moved bound.

    .venv/bin/python benchmarks/speed.py                         # everything (slow on 2 cores)
    .venv/bin/python benchmarks/speed.py --quant Q8_0 --ffn 0.5 --heads 0.33 --reps 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ppgguf.build.pipeline import BuildOptions, build
from ppgguf.use.bench import bench

ROOT = Path(__file__).resolve().parent.parent
CHARACTER = ROOT / "examples" / "captain_mirela.txt"


def build_one(out_dir: Path, quant: str, ffn: float, heads: float, say) -> Path:
    out = out_dir / f"mirela-{quant}-ffn{ffn:g}-heads{heads:g}.gguf"
    if out.is_file() and out.with_name(out.name + ".report.json").is_file():
        return out
    say(f"building {out.name}")
    overrides = {"method": "magnitude", "ffn_sparsity": ffn, "head_sparsity": heads, "quant": quant}
    return build(BuildOptions(character=CHARACTER, out=out, overrides=overrides, device="cpu")).path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", nargs="+", default=["F16", "Q8_0", "Q4_K_M"])
    parser.add_argument("--ffn", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--heads", nargs="+", type=float, default=[0.0, 0.33])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per repetition")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    args = parser.parse_args(argv)

    err = Console(stderr=True)
    say = lambda msg: err.print(f"[dim]- {msg}[/]")  # noqa: E731
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = Table("quant", "FFN", "heads", "decode tok/s", "prompt tok/s", "size MiB", "decode speed-up", "bound",
                  "pp speed-up", title="Captain Mirela, SmolLM2-135M, pruned vs dense (medians)")
    results = []
    for quant in args.quant:
        dense = build_one(args.out_dir, quant, 0.0, 0.0, say)
        for ffn in args.ffn:
            for heads in args.heads:
                npc = build_one(args.out_dir, quant, ffn, heads, say)
                say(f"benchmarking {npc.name} against {dense.name} ({args.reps} interleaved reps)")
                r = bench(npc, dense, reps=args.reps, n_decode=args.tokens, threads=args.threads)
                d, p, s = r["models"]["dense"], r["models"]["npc"], r["speedup"]
                if not results or results[-1]["quant"] != quant:
                    table.add_row(quant, "0", "0", f"{d['decode_tokens_per_s']:.1f}", f"{d['pp_tokens_per_s']:.0f}",
                                  f"{d['file_bytes'] / 2**20:.1f}", "1.00x", "1.00x", "1.00x")
                table.add_row(quant, f"{ffn:g}", f"{heads:g}", f"{p['decode_tokens_per_s']:.1f}",
                              f"{p['pp_tokens_per_s']:.0f}", f"{p['file_bytes'] / 2**20:.1f}",
                              f"{s['decode']:.2f}x", f"{s['bound']:.2f}x", f"{s['pp']:.2f}x")
                results.append({"quant": quant, "ffn_sparsity": ffn, "head_sparsity": heads, **r})
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
