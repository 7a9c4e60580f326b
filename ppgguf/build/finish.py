"""The end of a build: quantize, validate, write every companion in the run directory, then place them.

A build that fails or is killed before the end leaves nothing beside the output, only temporary
files in the run directory: the GGUF and its companions (Modelfile, model card, figure, importance
matrix, report) are written there first and moved into place together, the GGUF last
(ppgguf.build.output).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..export.imatrix import read_imatrix_gguf
from ..export.quantize import quantize
from ..inputs.base import BaseModel
from ..inputs.persona import Persona
from ..inputs.tokenizer import ChatTokenizer
from ..llama.reader import read_header
from ..pruning.prune import Pruned
from ..pruning.surgery import parameter_count, predicted_parameters
from ..recipe import Recipe
from ..runs import atomic_write_json, atomic_write_text
from ..stages import StageClock
from .figure import write_build_figure
from .model_card import model_card_text
from .modelfile import modelfile_params, modelfile_text
from .output import companion_paths, place_files
from .provenance import input_hashes, versions
from .validate import (greedy_repetition, looping_warning, torch_logits, validate_gguf, validation_prompts,
                       validation_sequences)

if TYPE_CHECKING:
    from .pipeline import BuildOptions


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


def build_report(options: BuildOptions, out: Path, persona: Persona, recipe: Recipe, base: BaseModel, pruned: Pruned,
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
