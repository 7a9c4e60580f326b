"""`ppgguf build`: character description -> smaller, quantized, validated GGUF.

The stages, in the order data flows (each one a module of its own):

    persona      ppgguf.persona      the character and its system prompt
    base         ppgguf.base         the dense model and llama.cpp's tokenizer for it
    calibrate    ppgguf.calibrate    token sequences the scorers look at
    score+plan   ppgguf.importance   which FFN channels and KV groups each layer keeps
    surgery      ppgguf.surgery      physically smaller PyTorch model
    export       ppgguf.export       F32 GGUF in the run directory
    quantize     ppgguf.quantize     the requested type, with llama.cpp's quantizer
    validate     ppgguf.validate     loads in llama.cpp, agrees with PyTorch; only then renamed into place

Finished stages are kept in a run directory keyed by their inputs (ppgguf.runs).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .base import load_base
from .calibrate import generic_sequences, validation_sequences
from .errors import UserError
from .export import export_gguf
from .importance import ScoringInputs, get_scorer
from .persona import Persona, load_persona
from .plan import PruningPlan, check_sparsity, make_plan
from .quantize import check_quant_type, quantize
from .recipe import Recipe, load_recipe, with_overrides
from .runs import atomic_write_json, key_of, read_json, run_dir
from .surgery import apply_plan, layer_widths, parameter_count
from .tokenizer import ChatTokenizer
from .validate import torch_logits, validate_gguf


@dataclass
class BuildOptions:
    character: Path
    out: Path | None = None
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # recipe fields set on the command line
    device: str = "auto"


@dataclass
class BuildResult:
    path: Path
    report_path: Path
    report: dict


def default_output(character: Path) -> Path:
    return character.with_suffix(".gguf")


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}'; choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_output(out: Path, expected_bytes: int = 0) -> None:
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise UserError(f"output directory '{directory}' does not exist; create it or choose another --out")
    if not os.access(directory, os.W_OK):
        raise UserError(f"output directory '{directory}' is not writable; choose another --out")
    free = shutil.disk_usage(directory).free
    if expected_bytes and free < expected_bytes:
        raise UserError(
            f"not enough free disk in '{directory}': {free / 2**20:.0f} MiB free, about "
            f"{expected_bytes / 2**20:.0f} MiB needed; free some space or choose another --out"
        )


class _Stages:
    """Times each stage and tells the caller what is happening."""

    def __init__(self, progress: Callable[[str], None]):
        self.seconds: dict[str, float] = {}
        self.progress = progress

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        self.progress(what)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
        return result


def predicted_parameters(model: torch.nn.Module) -> int:
    """Parameter count implied by the layer widths alone, to check that surgery removed what it should."""
    config = model.config
    hidden, head_dim = config.hidden_size, config.head_dim
    layer0 = model.model.layers[0].self_attn
    has_bias = layer0.q_proj.bias is not None
    total = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2) + hidden
    for w in layer_widths(model):
        q, kv = w["n_head"] * head_dim, w["n_head_kv"] * head_dim
        total += 2 * hidden * q + 2 * hidden * kv + 3 * hidden * w["n_ff"] + 2 * hidden
        total += (q + 2 * kv) if has_bias else 0
    return total


def build(options: BuildOptions, progress: Callable[[str], None] = lambda _: None) -> BuildResult:
    stages = _Stages(progress)
    build_start = time.perf_counter()

    # Everything that can be checked without loading a model is checked first.
    persona: Persona = load_persona(options.character)
    recipe: Recipe = with_overrides(load_recipe(options.recipe), options.overrides)
    recipe.quant = check_quant_type(recipe.quant)
    check_sparsity("--ffn-sparsity", recipe.ffn_sparsity)
    check_sparsity("--head-sparsity", recipe.head_sparsity)
    scorer = get_scorer(recipe.method)
    device = resolve_device(options.device)
    out = Path(options.out) if options.out else default_output(Path(options.character))
    if out.suffix.lower() != ".gguf":
        raise UserError(f"output '{out}' must end in .gguf")
    check_output(out)

    # The run key covers everything that decides the pruned weights; quant type and output do not.
    prune_key = {
        "ppgguf": __version__,
        "system_prompt": persona.system_prompt,
        **{k: v for k, v in recipe.to_json().items() if k not in ("quant", "validation_prompts")},
    }
    work = run_dir({"base": recipe.base, **prune_key})
    base = stages.run("load_base", f"Loading base model {recipe.base}", lambda: load_base(recipe.base, work))
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    prune_key["base_sha256"] = base.sha256
    dense_params = parameter_count(base.model)
    model_bytes_f32 = dense_params * 4
    check_output(out, expected_bytes=model_bytes_f32 // 2)

    plan_file = work / "plan.json"
    plan_data = read_json(plan_file)
    if plan_data is not None and plan_data.get("key") == key_of(prune_key):
        plan = PruningPlan.from_json(plan_data["plan"])
        stages.seconds["score"] = 0.0
        progress("Reusing the pruning plan from the run directory")
    else:
        calibration = stages.run(
            "calibrate",
            "Preparing calibration text",
            lambda: generic_sequences(tokenizer, recipe.generic_sequences, recipe.sequence_length),
        )
        inputs = ScoringInputs(model=base.model.to(device), calibration=calibration, seed=recipe.seed, device=device)
        importance = stages.run("score", f"Scoring channels and heads ({recipe.method})", lambda: scorer(inputs))
        base.model.to("cpu")
        plan = make_plan(importance, recipe.ffn_sparsity, recipe.head_sparsity, recipe.uniform)
        atomic_write_json(plan_file, {"key": key_of(prune_key), "plan": plan.to_json()})

    model = stages.run("surgery", "Removing pruned channels and heads", lambda: apply_plan(base.model, plan))
    pruned_params = parameter_count(model)

    f32_path = work / f"model-{key_of(prune_key)}.f32.gguf"
    metadata = gguf_metadata(persona, base, recipe, model)
    written = stages.run(
        "export",
        "Writing GGUF",
        lambda: export_gguf(model, base.family, base.tokenizer_spec, f32_path, "F32", **metadata),
    )

    tmp_out = out.with_name(f".{out.name}.ppgguf-partial")
    try:
        quant_report = stages.run(
            "quantize", f"Quantizing to {recipe.quant}", lambda: quantize(f32_path, tmp_out, recipe.quant)
        )
        sequences = validation_sequences(tokenizer, persona, recipe.validation_prompts)
        reference = stages.run("reference", "Computing PyTorch reference logits", lambda: torch_logits(model, sequences))
        validation = stages.run(
            "validate",
            "Validating in llama.cpp",
            lambda: validate_gguf(tmp_out, model, sequences, reference, recipe.quant),
        )
        report = {
            "ppgguf_version": __version__,
            "output": str(out),
            "character": persona.name,
            "persona": persona.to_json(),
            "recipe": recipe.to_json(),
            "base": {"name": base.name, "source": base.source, "sha256": base.sha256, "family": base.family.name},
            "architecture": written["architecture"],
            "parameters": {
                "dense": dense_params,
                "pruned": pruned_params,
                "predicted_from_widths": predicted_parameters(model),
                "kept_fraction": round(pruned_params / dense_params, 4),
            },
            "widths": written["widths"],
            "file_bytes": tmp_out.stat().st_size,
            "quantization": quant_report,
            "validation": validation,
            "seconds": {**stages.seconds, "total": round(time.perf_counter() - build_start, 3)},
            "versions": versions(),
            "run_dir": str(work),
        }
        report_path = out.with_name(out.name + ".report.json")
        tmp_out.replace(out)
        atomic_write_json(report_path, report)
    finally:
        tmp_out.unlink(missing_ok=True)
    return BuildResult(path=out, report_path=report_path, report=report)


def gguf_metadata(persona: Persona, base, recipe: Recipe, model) -> dict[str, dict[str, Any]]:
    widths = layer_widths(model)
    general = {
        "name": persona.name,
        "description": f"{persona.name}: a persona-pruned {base.name} built by ppgguf",
        "license": base.license,
        "base_model.count": 1,
        "base_model.0.name": base.name,
    }
    extra = {
        "ppgguf.version": __version__,
        "ppgguf.system_prompt": persona.system_prompt,
        "ppgguf.persona.name": persona.name,
        "ppgguf.persona.description": persona.description,
        "ppgguf.persona.source_kind": persona.source_kind,
        "ppgguf.method": recipe.method,
        "ppgguf.ffn_sparsity": float(recipe.ffn_sparsity),
        "ppgguf.head_sparsity": float(recipe.head_sparsity),
        "ppgguf.seed": recipe.seed,
        "ppgguf.base.sha256": base.sha256,
        "ppgguf.ffn_widths": [w["n_ff"] for w in widths],
        "ppgguf.head_counts": [w["n_head"] for w in widths],
        "ppgguf.kv_head_counts": [w["n_head_kv"] for w in widths],
    }
    if persona.greeting:
        extra["ppgguf.persona.greeting"] = persona.greeting
    return {"general": general, "extra": extra}


def versions() -> dict[str, str]:
    import gguf
    import llama_cpp
    import transformers

    return {
        "ppgguf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": getattr(gguf, "__version__", "unknown"),
        "llama_cpp_python": llama_cpp.__version__,
    }
