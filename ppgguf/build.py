"""`ppgguf build`: one character description in, a smaller, quantized, validated GGUF out.

`build` tells the story; each stage is a module of its own, in the order data flows:

    persona      ppgguf.persona      the character and its system prompt
    base         ppgguf.base         the dense model and llama.cpp's tokenizer for it
    calibration  ppgguf.calibrate    the token sequences the scorers and healing read
    scores+plan  ppgguf.prune        which FFN channels and KV groups each layer keeps (ppgguf.importance, ppgguf.plan)
    surgery+heal ppgguf.prune        a physically smaller PyTorch model, finetuned back (ppgguf.surgery, ppgguf.heal)
                                     or trained to need no persona prompt (ppgguf.bake)
    export       ppgguf.export       F32 GGUF in the run directory, the persona baked into its template
    imatrix      ppgguf.imatrix      optional importance matrix of the pruned model, for the quantizer
    quantize     ppgguf.quantize     the requested type, with llama.cpp's quantizer
    validate     ppgguf.validate     loads in llama.cpp and agrees with PyTorch
    place        ppgguf.output       the GGUF and its companions, moved into place together

Finished stages are kept in a run directory keyed by their inputs (ppgguf.runs).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

import gguf
import torch

from . import __version__
from .base import BaseModel, LoadedBases, load_base, resolve_base
from .bake import bake_pairs, template_system_prompt
from .calibrate import (answer_sequences, bake_conversations, cached_followups, cached_persona_calibration,
                        check_teacher, generic_sequences, validation_prompts, validation_sequences)
from .chat_template import bake_chat_template, chat_format_of
from .errors import UserError
from .export import check_per_layer, choose_arch, export_gguf, gguf_metadata
from .figure import write_build_figure
from .gguf_file import read_header
from .imatrix import collect_imatrix, read_imatrix_gguf, write_imatrix_gguf
from .memory import check_memory
from .model_card import model_card_text
from .modelfile import modelfile_params, modelfile_text
from .output import check_output, companion_paths, output_path, place_files
from .persona import Persona, load_persona
from .provenance import input_hashes, versions
from .prune import Calibration, Pruned, RunCache, prune_model
from .quantize import quantize, uses_imatrix
from .recipe import Recipe, load_recipe, with_overrides
from .runs import atomic_write_json, atomic_write_text, base_dir, key_of, run_dir
from .sizing import check_target_options, fit_to_size
from .stages import StageClock
from .surgery import layer_widths, parameter_count, predicted_parameters
from .tokenizer import ChatTokenizer
from .validate import greedy_repetition, looping_warning, torch_logits, validate_gguf

# Knobs that decide the trained weights, not the plan.
HEAL_FIELDS = ("heal", "heal_steps", "heal_lr", "bake", "bake_steps", "bake_lr", "bake_trains", "bake_prompt_words",
               "train_embeddings", "adapter_rank")


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
    plan_key = {"ppgguf": __version__, "system_prompt": persona.system_prompt, **_pruning_settings(recipe)}
    work = run_dir({"base": recipe.base.model, **plan_key})
    plan_key["base_sha256"] = base.sha256
    if recipe.calibration.teacher:
        check_teacher(base, recipe.calibration.teacher)
    calibration = calibration_data(base, tokenizer, persona, recipe, clock)
    dense = {"parameters": parameter_count(base.model), "widths": layer_widths(base.model)}

    weights_key = [plan_key, {k: getattr(recipe.train, k) for k in HEAL_FIELDS}]
    pruned = prune_model(base.model, recipe, calibration, device, clock, RunCache(work, plan_key, weights_key))
    f32_path, written = export_f32(pruned.model, persona, base, spec, recipe, work, weights_key, clock)
    imatrix = importance_matrix(pruned.model, base, recipe, calibration, work, weights_key, clock)
    report = _report(options, out, persona, recipe, base, pruned, dense, written, work, warnings)
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
    examples = cache(lambda: clock.run("calibrate", "Building the persona calibration set", lambda: (
        cached_persona_calibration(base, tokenizer, persona, settings, seed, clock.progress))))

    def followups() -> list[dict]:
        return clock.run("calibrate", "Follow-up turns for baking", lambda: (
            cached_followups(base, tokenizer, persona, settings, seed, examples(), clock.progress)))

    return Calibration(
        persona=lambda: answer_sequences(tokenizer, persona.system_prompt, examples()),
        generic=lambda: clock.run("calibrate", "Preparing generic calibration text", lambda: generic_sequences(
            tokenizer, settings.generic_sequences, settings.sequence_length)),
        bake=lambda: bake_pairs(tokenizer, persona, bake_conversations(persona, examples(), followups()),
                                recipe.train.bake, seed, recipe.train.bake_prompt_words),
    )


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}'; choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pruning_settings(recipe: Recipe) -> dict[str, Any]:
    after_pruning = ("quant", "imatrix", "embedding_quant", "target_size_mib", "validation_prompts") + HEAL_FIELDS
    return {k: v for k, v in recipe.to_json().items() if k not in after_pruning}


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


def quantize_validate_and_place(model, f32_path: Path, imatrix: Path | None, report: dict, out: Path,
                                tokenizer: ChatTokenizer, persona: Persona, system: str, recipe: Recipe,
                                chat_format: str | None, work: Path, clock: StageClock) -> Path:
    """Quantize, validate and write every companion inside the run directory; then move them all into place.

    `system` is the system prompt the file's template inserts: the greedy answers checked for loops
    and the Modelfile's SYSTEM use it, as the file will be used.

    A build that fails or is killed before the end leaves nothing beside the output, only temporary
    files in the run directory. Completes `report`; returns the report's final path.
    """
    quant = recipe.export.quant
    staged = work / "staged"
    staged.mkdir(exist_ok=True)
    tmp_gguf = staged / f"{out.stem}.{quant}.gguf.partial"
    finals = companion_paths(out)
    if imatrix is None:
        del finals["imatrix"]
    ready = {kind: staged / path.name for kind, path in finals.items()}
    try:
        matrix = read_imatrix_gguf(imatrix) if imatrix else None
        report["quantization"] = clock.run(
            "quantize", f"Quantizing to {quant}",
            lambda: quantize(f32_path, tmp_gguf, quant, imatrix=matrix, embedding_quant=recipe.export.embedding_quant))
        report["quantization"]["imatrix"] = recipe.export.imatrix if imatrix else "none"
        sequences = validation_sequences(tokenizer, persona, recipe.validate.prompts)
        reference = clock.run("reference", "Computing PyTorch reference logits", lambda: torch_logits(model, sequences))
        report["validation"] = clock.run(
            "validate", "Validating in llama.cpp", lambda: validate_gguf(tmp_gguf, model, sequences, reference, quant))
        report["validation"]["repetition"] = repetition = clock.run(
            "validate", "Checking the greedy answers for loops",
            lambda: greedy_repetition(tmp_gguf, validation_prompts(tokenizer, system, recipe.validate.prompts)))
        loop_warning = looping_warning(repetition)
        if loop_warning:
            report["warnings"].append(loop_warning)
            clock.progress(f"Warning: {loop_warning}")
        report["file_bytes"] = tmp_gguf.stat().st_size
        report["seconds"] = clock.total()
        report["memory"]["peak_rss_bytes"] = clock.memory()
        write_build_figure(report, ready["figure"])
        if chat_format:
            header = read_header(tmp_gguf)
            metadata = {key: header.get(key) for key in header.fields}
            atomic_write_text(ready["modelfile"], modelfile_text(
                chat_format, out.name, system, modelfile_params(metadata)))
        else:
            del finals["modelfile"]
        atomic_write_text(ready["card"], model_card_text(report))
        if imatrix:  # beside the GGUF, so llama.cpp's own llama-quantize --imatrix can requantize it
            shutil.copyfile(imatrix, ready["imatrix"])
        report["companions"] = [str(finals[k]) for k in ("modelfile", "card", "figure", "imatrix") if k in finals]
        atomic_write_json(ready["report"], report)
        place_files([(ready[kind], finals[kind]) for kind in finals] + [(tmp_gguf, out)])
        # The F32 export is the largest file of a run and takes seconds to write again from the
        # plan and healed weights kept beside it, so a finished build does not keep it.
        f32_path.unlink(missing_ok=True)
    finally:
        for path in [tmp_gguf, *ready.values()]:
            path.unlink(missing_ok=True)
    return finals["report"]


def _report(options: BuildOptions, out: Path, persona: Persona, recipe: Recipe, base: BaseModel, pruned: Pruned,
            dense: dict[str, Any], written: dict[str, Any], work: Path, warnings: list[str]) -> dict[str, Any]:
    pruned_params = parameter_count(pruned.model)
    return {
        "ppgguf_version": __version__,
        "output": str(out),
        "character": persona.name,
        "persona": persona.to_json(),
        "recipe": recipe.to_json(),
        "base": {"name": base.name, "source": base.source, "sha256": base.sha256, "family": base.family.name},
        "architecture": written["architecture"],
        "parameters": {
            "dense": dense["parameters"],
            "pruned": pruned_params,
            "predicted_from_widths": predicted_parameters(pruned.model),
            "kept_fraction": round(pruned_params / dense["parameters"], 4),
        },
        "widths": written["widths"],
        "dense_widths": dense["widths"],
        "scoring": pruned.log,
        "warnings": warnings,
        "versions": versions(),
        "inputs": input_hashes(options.character, options.recipe, recipe, persona.system_prompt, base.sha256),
        "run_dir": str(work),
    }
