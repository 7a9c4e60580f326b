"""`ppgguf build`: one character description in, a smaller, quantized, validated GGUF out.

`build` tells the story; each stage is a module of its own, in the order data flows:

    persona      ppgguf.inputs.persona   the character and its system prompt
    base         ppgguf.inputs.base      the dense model and llama.cpp's tokenizer for it
    calibration  ppgguf.calibration      the token sequences the scorers and healing read
    scores+plan  ppgguf.pruning.prune    which FFN channels and KV groups each layer keeps (pruning.importance, .plan)
    surgery+heal ppgguf.pruning.prune    a physically smaller PyTorch model, finetuned back (pruning.surgery, .heal)
                                         or trained to need no persona prompt (pruning.bake)
    export       ppgguf.export.writer    F32 GGUF in the run directory, the persona baked into its template
    imatrix      ppgguf.export.imatrix   optional importance matrix of the pruned model, for the quantizer
    quantize     ppgguf.export.quantize  the requested type, with llama.cpp's quantizer
    validate     ppgguf.build.validate   loads in llama.cpp and agrees with PyTorch
    place        ppgguf.build.finish     the GGUF and its companions, moved into place together (build.output)

Finished stages are kept in a run directory keyed by their inputs (ppgguf.runs): the knobs that decide
the plan, then those that decide the trained weights (ppgguf.recipe declares which is which).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

import gguf
import torch

from .. import __version__
from ..calibration.answers import answer_sequences, cached_persona_calibration, check_teacher
from ..calibration.followups import bake_conversations, cached_followups
from ..calibration.generic import generic_sequences
from ..errors import UserError
from ..export.chat_template import bake_chat_template, chat_format_of
from ..export.imatrix import collect_imatrix, write_imatrix_gguf
from ..export.sizing import check_target_options, fit_to_size
from ..export.writer import check_per_layer, choose_arch, export_gguf, gguf_metadata
from ..inputs.base import BaseModel, LoadedBases, load_base, resolve_base
from ..inputs.persona import Persona, load_persona
from ..inputs.tokenizer import ChatTokenizer
from ..llama.quant_types import uses_imatrix
from ..pruning.bake import bake_pairs, template_system_prompt
from ..pruning.prune import Calibration, RunCache, prune_model
from ..pruning.surgery import layer_widths, parameter_count
from ..recipe import PLAN, WEIGHTS, Recipe, load_recipe, with_overrides
from ..runs import base_dir, cache_root, key_of, run_dir
from ..stages import StageClock
from .finish import build_report, quantize_validate_and_place
from .memory import check_memory
from .output import check_output, output_path


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


def build_many(characters: list[BuildOptions], progress: Callable[[str], None] = lambda _: None) -> list[BuildResult]:
    """Several characters on one base model, loaded once; each keeps its own run directory and files.

    Every character and output is checked before the first build starts.
    """
    outs = [output_path(options.character, options.out) for options in characters]
    for options in characters:
        load_persona(options.character)
    if len(set(outs)) < len(outs):
        raise UserError("two characters would be written to the same file; give each its own file name")
    bases = LoadedBases(len(characters))
    results = []
    for i, options in enumerate(characters):
        progress(f"Character {i + 1} of {len(characters)}: {options.character}")
        results.append(build(options, progress, bases))
    return results


def build(options: BuildOptions, progress: Callable[[str], None] = lambda _: None,
          bases: LoadedBases | None = None) -> BuildResult:
    clock = StageClock(progress)
    # Everything that can be checked without loading a model is checked first.
    persona = load_persona(options.character)
    recipe = with_overrides(load_recipe(options.recipe), options.overrides)
    device = resolve_device(options.device)
    out = output_path(options.character, options.out)
    check_target_options(recipe, options.overrides)

    memory = check_memory(resolve_base(recipe.base.model), recipe, f"building on {recipe.base.model}")
    if memory:
        progress(f"Predicted peak memory: {memory['total'] / 2**30:.1f} GiB")
    shared = base_dir(recipe.base.model)
    base = clock.run("load_base", f"Loading base model {recipe.base.model}",
                     lambda: bases.load(recipe.base.model, shared) if bases else load_base(recipe.base.model, shared))
    check_output(out, expected_bytes=parameter_count(base.model) * 4 // 2)
    if not recipe.prune.uniform:
        check_per_layer(base.family)
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    chat_format = chat_format_of(tokenizer.template)  # the base's own template, before the persona is baked in
    warnings = [] if chat_format else [_no_modelfile_warning(progress)]
    # Without a system message the file's template inserts the persona prompt, or the short prompt if baked.
    system = template_system_prompt(persona, recipe.train.bake, recipe.train.bake_prompt_words)
    spec = exported_tokenizer_spec(base, tokenizer, system)
    recipe, size = fit_to_size(recipe, base, spec, persona, shared)
    progress(_size_message(recipe, size))
    # The run key covers everything that decides the pruned weights; quant type and output do not.
    plan_key = {"ppgguf": __version__, "system_prompt": persona.system_prompt, **recipe.knobs(PLAN)}
    work = run_dir({"base": recipe.base.model, **plan_key})
    plan_key["base_sha256"] = base.sha256
    if recipe.calibration.teacher:
        check_teacher(base, recipe.calibration.teacher)
    calibration = calibration_data(base, tokenizer, persona, recipe, clock)
    dense = {"parameters": parameter_count(base.model), "widths": layer_widths(base.model)}

    weights_key = [plan_key, recipe.knobs(WEIGHTS)]
    pruned = prune_model(base.model, recipe, calibration, device, clock, RunCache(work, plan_key, weights_key))
    f32_path, written = export_f32(pruned.model, persona, base, spec, recipe, work, weights_key, clock)
    imatrix = importance_matrix(pruned.model, base, recipe, calibration, work, weights_key, clock)
    report = build_report(options, out, persona, recipe, base, pruned, dense, written, work, warnings)
    report["size"] = size
    report["memory"] = {"predicted_peak_bytes": memory}
    report["bake"] = {"mode": recipe.train.bake, "template_system_prompt": system}
    report_path = quantize_validate_and_place(
        pruned.model, f32_path, imatrix, report, out, tokenizer, persona, system, recipe, chat_format, work, clock)
    return BuildResult(path=out, report_path=report_path, report=report)


def calibration_data(base: BaseModel, tokenizer: ChatTokenizer, persona: Persona, recipe: Recipe,
                     clock: StageClock) -> Calibration:
    """The build's calibration sets, each computed when first asked for (and cached on disk)."""
    settings, seed = recipe.calibration, recipe.prune.seed

    def teacher() -> Path | None:
        return dense_teacher(base, settings.teacher, clock.progress)

    examples = cache(lambda: clock.run("calibrate", "Building the persona calibration set", lambda: (
        cached_persona_calibration(base, tokenizer, persona, settings, seed, clock.progress, teacher()))))

    def followups() -> list[dict]:
        return clock.run("calibrate", "Follow-up turns for baking", lambda: (
            cached_followups(base, tokenizer, persona, settings, seed, examples(), clock.progress, teacher())))

    return Calibration(
        persona=lambda: answer_sequences(tokenizer, persona.system_prompt, examples()),
        generic=lambda: clock.run("calibrate", "Preparing generic calibration text", lambda: generic_sequences(
            tokenizer, settings.generic_sequences, settings.sequence_length)),
        bake=lambda: bake_pairs(tokenizer, persona, bake_conversations(persona, examples(), followups()),
                                recipe.train.bake, seed, recipe.train.bake_prompt_words),
    )


def dense_teacher(base: BaseModel, teacher: str, progress: Callable[[str], None] = lambda _: None) -> Path | None:
    """The dense teacher of a checkpoint-directory base without a `teacher` of its own: the base written as
    an F16 GGUF once and cached per base model. None where the teacher is `teacher` or the base's own GGUF
    (ppgguf.calibration.answers.choose_teacher)."""
    if teacher or base.source.lower().endswith(".gguf"):
        return None
    dense = cache_root() / "teachers" / f"{base.sha256[:16]}.f16.gguf"
    if dense.is_file():
        progress("Reusing the dense teacher GGUF (cached per base model)")
    else:
        dense.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(base.model, base.family, base.tokenizer_spec, dense, "F16")
    return dense


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}'; choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _no_modelfile_warning(progress: Callable[[str], None]) -> str:
    warning = ("the base model's chat template is neither ChatML nor Llama 3, so no Ollama Modelfile is "
               "written (llama.cpp and LM Studio use the template inside the GGUF)")
    progress(f"Warning: {warning}")
    return warning


def exported_tokenizer_spec(base: BaseModel, tokenizer: ChatTokenizer, system_prompt: str):
    """The base's tokenizer metadata, its chat template inserting `system_prompt` where a conversation has none."""
    spec = copy.deepcopy(base.tokenizer_spec)
    spec.set(gguf.Keys.Tokenizer.CHAT_TEMPLATE, bake_chat_template(tokenizer.template, system_prompt),
             gguf.GGUFValueType.STRING)
    return spec


def _size_message(recipe: Recipe, size: dict[str, Any]) -> str:
    export = recipe.export
    chosen = size.get("chosen") or export.quant + (f", embedding and output {export.embedding_quant}"
                                                   if export.embedding_quant else "")
    if "target_mib" in size:
        rule = f" (target {size['target_mib']:g} MiB)"
    elif "source_bytes" in size:
        share = size["predicted_bytes"] / size["source_bytes"]
        rule = f" ({share:.0%} of the base's {size['source_bytes'] / 2**20:.1f} MiB)"
    else:
        rule = ""
    return f"Predicted file size: {size['predicted_bytes'] / 2**20:.1f} MiB{rule}: {chosen}"


def export_f32(model: torch.nn.Module, persona: Persona, base: BaseModel, spec, recipe: Recipe,
               work: Path, weights_key: list, clock: StageClock) -> tuple[Path, dict[str, Any]]:
    """The F32 GGUF in the run directory, with the persona baked into its metadata and chat template (`spec`)."""
    # Keyed by everything written into it, so a finished export is reused after a crash or for another quant.
    f32_path = work / f"model-{key_of([weights_key, persona.to_json()])}.f32.gguf"
    if f32_path.is_file():
        clock.progress("Reusing the exported GGUF from the run directory")
        widths = layer_widths(model)
        arch = choose_arch(base.family, widths, model.config.hidden_size, model.config.head_dim)
        return f32_path, {"architecture": gguf.MODEL_ARCH_NAMES[arch], "widths": widths}
    metadata = gguf_metadata(persona, base, recipe, model)
    written = clock.run(
        "export", "Writing GGUF", lambda: export_gguf(model, base.family, spec, f32_path, "F32", **metadata))
    return f32_path, written


def importance_matrix(model: torch.nn.Module, base: BaseModel, recipe: Recipe, calibration: Calibration, work: Path,
                      weights_key: list, clock: StageClock) -> Path | None:
    """The recipe's importance matrix of the pruned model, as llama-imatrix's GGUF in the run directory."""
    kind = recipe.export.imatrix
    if not uses_imatrix(recipe.export.quant, kind, recipe.export.embedding_quant):  # nothing to weigh
        return None
    # "tied-output": the entry for a tied token embedding, absent from matrices of earlier versions.
    path = work / f"imatrix-{kind}-{key_of([weights_key, 'tied-output'])}.gguf"
    if path.is_file():
        clock.progress("Reusing the importance matrix from the run directory")
        return path
    sequences = [ids for ids, _ in calibration.persona()] if kind == "persona" else calibration.generic()
    matrix = clock.run("imatrix", f"Importance matrix on the {kind} calibration text ({len(sequences)} sequences)",
                       lambda: collect_imatrix(model, base.family, sequences))
    write_imatrix_gguf(matrix, path, [f"ppgguf {kind} calibration"])
    return path
