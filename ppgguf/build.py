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

import copy
import errno
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .answer_batches import answer_distributions
from .bake import bake_chat_template, sampling_metadata, write_companions
from .base import load_base, sha256_of
from .calibrate import answer_sequences, generic_sequences, persona_calibration, validation_sequences
from .errors import UserError
from .export import choose_arch, export_gguf
from .figure import write_build_figure
from .heal import heal
from .importance import DATA_NEEDED, ScoringInputs, get_scorer
from .persona import Persona, load_persona
from .plan import PruningPlan, check_sparsity, make_plan
from .quantize import check_quant_type, quantize
from .recipe import Recipe, load_recipe, recipe_path, with_overrides
from .runs import atomic_write_json, cache_root, key_of, read_json, run_dir
from .surgery import apply_plan, layer_widths, parameter_count
from .tokenizer import ChatTokenizer
from .validate import torch_logits, validate_gguf


HEAL_FIELDS = ("heal", "heal_steps", "heal_lr")


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
        if any(p.exists() and not p.is_dir() for p in (directory, *directory.parents)):
            raise UserError(
                f"output directory '{directory}' is not a directory (a file is in the way); choose another --out"
            )
        raise UserError(f"output directory '{directory}' does not exist; create it or choose another --out")
    if out.is_dir():
        raise UserError(f"output '{out}' is a directory; give a file name ending in .gguf")
    # os.access says yes to root whatever the permissions (and lies on some network file systems):
    # creating a file is the only test that tells.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".write-test", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"output directory '{directory}' is not writable ({err.strerror}); choose another --out") from None
    free = shutil.disk_usage(directory).free
    if expected_bytes and free < expected_bytes:
        raise UserError(
            f"not enough free disk in '{directory}': {_human_bytes(free)} free, about "
            f"{_human_bytes(expected_bytes)} needed; free some space or choose another --out"
        )


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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


class StepMessage(str):
    """A progress message from inside an iterative stage: a display may overwrite it with the next one."""


def _step_reporter(what: str, progress: Callable[[str], None]) -> Callable[[int, int, float], None]:
    """Progress of an iterative stage, with the time left estimated from the steps so far."""
    start = time.perf_counter()

    def report(step: int, steps: int, loss: float) -> None:
        left = (time.perf_counter() - start) / step * (steps - step)
        progress(StepMessage(f"{what}: step {step}/{steps}, loss {loss:.4f}, about {left / 60:.1f} min left"))

    return report


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


@dataclass
class _Run:
    """What the stages of one build share: its checked inputs, the loaded base and the run directory."""

    persona: Persona
    recipe: Recipe
    device: str
    out: Path
    work: Path
    base: Any
    tokenizer: ChatTokenizer
    prune_key: dict[str, Any]  # everything that decides the pruning plan
    stages: _Stages
    progress: Callable[[str], None]
    # Kept from mask learning (KL loss) for healing, which distils the same distributions.
    dense_answer_logprobs: list[torch.Tensor] | None = None

    def persona_sequences(self) -> list[tuple[list[int], int]]:
        examples = self.stages.run(
            "calibrate", "Building the persona calibration set",
            lambda: cached_persona_calibration(self.base, self.tokenizer, self.persona, self.recipe, self.progress),
        )
        return answer_sequences(self.tokenizer, self.persona.system_prompt, examples)


def build(options: BuildOptions, progress: Callable[[str], None] = lambda _: None) -> BuildResult:
    stages = _Stages(progress)
    build_start = time.perf_counter()

    # Everything that can be checked without loading a model is checked first.
    persona: Persona = load_persona(options.character)
    recipe: Recipe = with_overrides(load_recipe(options.recipe), options.overrides)
    recipe.quant = check_quant_type(recipe.quant)
    check_sparsity("--ffn-sparsity", recipe.ffn_sparsity)
    check_sparsity("--head-sparsity", recipe.head_sparsity)
    get_scorer(recipe.method)
    if recipe.loss not in ("kl", "ce"):
        raise UserError(f"recipe loss '{recipe.loss}' is unknown; use \"kl\" or \"ce\"")
    device = resolve_device(options.device)
    out = Path(options.out) if options.out else default_output(Path(options.character))
    if out.suffix.lower() != ".gguf":
        raise UserError(f"output '{out}' must end in .gguf")
    check_output(out)

    # The run key covers everything that decides the pruned weights; quant type and output do not.
    prune_key = {
        "ppgguf": __version__,
        "system_prompt": persona.system_prompt,
        **{k: v for k, v in recipe.to_json().items() if k not in ("quant", "validation_prompts") + HEAL_FIELDS},
    }
    work = run_dir({"base": recipe.base, **prune_key})
    base = stages.run("load_base", f"Loading base model {recipe.base}", lambda: load_base(recipe.base, work))
    prune_key["base_sha256"] = base.sha256
    dense_params = parameter_count(base.model)
    check_output(out, expected_bytes=dense_params * 4 // 2)
    run = _Run(persona, recipe, device, out, work, base, ChatTokenizer(base.tokenizer_spec, base.vocab_gguf),
               prune_key, stages, progress)

    plan, scorer_log = pruning_plan(run)
    weights_key = [prune_key, {k: getattr(recipe, k) for k in HEAL_FIELDS}]
    model, heal_log = pruned_model(run, plan, weights_key)
    if heal_log is not None:
        scorer_log["heal_loss_history"] = heal_log
    f32_path, written = export_f32(run, model, weights_key)
    pruned_params = parameter_count(model)
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
        "scoring": scorer_log,
        "versions": versions(),
        "inputs": input_hashes(options, persona, recipe, base),
        "run_dir": str(work),
    }
    report_path = quantize_validate_and_place(run, model, f32_path, report, build_start)
    return BuildResult(path=out, report_path=report_path, report=report)


def pruning_plan(run: _Run) -> tuple[PruningPlan, dict[str, Any]]:
    """Score channels and heads and choose what to keep; reused from the run directory when its key matches."""
    recipe, base = run.recipe, run.base
    plan_file = run.work / "plan.json"
    plan_data = read_json(plan_file)
    if plan_data is not None and plan_data.get("key") == key_of(run.prune_key):
        run.progress("Reusing the pruning plan from the run directory")
        return PruningPlan.from_json(plan_data["plan"]), plan_data.get("log", {})

    inputs = ScoringInputs(
        model=base.model.to(run.device), ffn_sparsity=recipe.ffn_sparsity, head_sparsity=recipe.head_sparsity,
        seed=recipe.seed, device=run.device,
        settings={"steps": recipe.steps, "batch_size": recipe.batch_size, "lr": recipe.lr, "loss": recipe.loss},
        on_step=_step_reporter("Learning masks", run.progress),
    )
    if DATA_NEEDED[recipe.method] == "generic":
        inputs.calibration = run.stages.run(
            "calibrate", "Preparing generic calibration text",
            lambda: generic_sequences(run.tokenizer, recipe.generic_sequences, recipe.sequence_length),
        )
    elif DATA_NEEDED[recipe.method] == "persona":
        inputs.persona_sequences = run.persona_sequences()
    scorer = get_scorer(recipe.method)
    importance = run.stages.run("score", f"Scoring channels and heads ({recipe.method})", lambda: scorer(inputs))
    base.model.to("cpu")
    run.dense_answer_logprobs = inputs.dense_answer_logprobs
    plan = make_plan(importance, recipe.ffn_sparsity, recipe.head_sparsity, recipe.uniform)
    atomic_write_json(plan_file, {"key": key_of(run.prune_key), "plan": plan.to_json(), "log": inputs.log})
    return plan, inputs.log


def pruned_model(run: _Run, plan: PruningPlan, weights_key: list) -> tuple[torch.nn.Module, list[float] | None]:
    """Surgery, then healing when the recipe asks for it (healed weights are kept in the run directory).

    Returns the model and the healing loss per step (None without healing).
    """
    recipe, device = run.recipe, run.device
    # Healing changes the weights, not the plan: its settings key only what comes after surgery.
    healed_file = run.work / f"healed-{key_of(weights_key)}.safetensors"
    if recipe.heal and not healed_file.is_file():
        # The dense model's answer distributions are the healing target: mask learning computed them
        # already, unless its loss was cross-entropy or the plan came from the run directory.
        heal_sequences = run.persona_sequences()
        teacher = run.dense_answer_logprobs
        if teacher is None:
            teacher = run.stages.run(
                "heal", "Dense answer distributions for healing",
                lambda: answer_distributions(run.base.model.to(device), heal_sequences, device),
            )
            run.base.model.to("cpu")

    model = run.stages.run("surgery", "Removing pruned channels and heads", lambda: apply_plan(run.base.model, plan))
    if not recipe.heal:
        return model, None
    if healed_file.is_file():
        run.progress("Reusing the healed weights from the run directory")
        model.load_state_dict(load_file(str(healed_file)), strict=False)
        return model, read_json(healed_file.with_suffix(".json"))
    history = run.stages.run(
        "heal", f"Healing the kept weights ({recipe.heal_steps} steps)",
        lambda: heal(model, heal_sequences, teacher, recipe.heal_steps, recipe.batch_size, recipe.heal_lr,
                     recipe.seed, device, on_step=_step_reporter("Healing", run.progress)),
    )
    tmp = healed_file.with_name(healed_file.name + ".partial")
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"
               or not model.config.tie_word_embeddings}, str(tmp))
    atomic_write_json(healed_file.with_suffix(".json"), history)
    tmp.replace(healed_file)
    return model, history


def export_f32(run: _Run, model: torch.nn.Module, weights_key: list) -> tuple[Path, dict[str, Any]]:
    """The F32 GGUF in the run directory, with the persona baked into its metadata and chat template."""
    persona, base = run.persona, run.base
    # Keyed by everything written into it, so a finished export is reused after a crash or for another quant.
    f32_path = run.work / f"model-{key_of([weights_key, persona.to_json()])}.f32.gguf"
    if f32_path.is_file():
        run.progress("Reusing the exported GGUF from the run directory")
        widths = layer_widths(model)
        arch = choose_arch(base.family, widths, model.config.hidden_size, model.config.head_dim)
        return f32_path, {"architecture": gguf.MODEL_ARCH_NAMES[arch], "widths": widths}
    # The exported file's chat template falls back to the character's system prompt.
    export_spec = copy.deepcopy(base.tokenizer_spec)
    export_spec.set(
        gguf.Keys.Tokenizer.CHAT_TEMPLATE,
        bake_chat_template(run.tokenizer.template, persona.system_prompt),
        gguf.GGUFValueType.STRING,
    )
    metadata = gguf_metadata(persona, base, run.recipe, model)
    written = run.stages.run(
        "export", "Writing GGUF", lambda: export_gguf(model, base.family, export_spec, f32_path, "F32", **metadata)
    )
    return f32_path, written


def quantize_validate_and_place(run: _Run, model, f32_path: Path, report: dict, build_start: float) -> Path:
    """Quantize and validate inside the run directory; only a file that passed is moved to the output.

    A build killed before the gate leaves nothing beside the output, only a temporary file in the
    run directory. Completes `report` and writes it with the companion files; returns its path.
    """
    recipe, out = run.recipe, run.out
    tmp_out = run.work / f"{out.stem}.{recipe.quant}.gguf.partial"
    try:
        report["quantization"] = run.stages.run(
            "quantize", f"Quantizing to {recipe.quant}", lambda: quantize(f32_path, tmp_out, recipe.quant)
        )
        sequences = validation_sequences(run.tokenizer, run.persona, recipe.validation_prompts)
        reference = run.stages.run(
            "reference", "Computing PyTorch reference logits", lambda: torch_logits(model, sequences)
        )
        report["validation"] = run.stages.run(
            "validate", "Validating in llama.cpp",
            lambda: validate_gguf(tmp_out, model, sequences, reference, recipe.quant),
        )
        report["file_bytes"] = tmp_out.stat().st_size
        report["seconds"] = {**run.stages.seconds, "total": round(time.perf_counter() - build_start, 3)}
        report_path = out.with_name(out.name + ".report.json")
        place_file(tmp_out, out)
        figure = out.with_name(out.name + ".png")
        write_build_figure(report, figure)
        report["companions"] = [str(p) for p in write_companions(out, report)] + [str(figure)]
        atomic_write_json(report_path, report)
        # The F32 export is the largest file of a run and takes seconds to write again from the
        # plan and healed weights kept beside it, so a finished build does not keep it.
        f32_path.unlink(missing_ok=True)
    finally:
        tmp_out.unlink(missing_ok=True)
    return report_path


def place_file(src: Path, dst: Path) -> None:
    """Move `src` to `dst` atomically: a rename, or across file systems a copy to a temporary name beside `dst`
    and a rename, so `dst` is never seen half-written."""
    try:
        os.replace(src, dst)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.ppgguf-partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    src.unlink(missing_ok=True)


def teacher_model(base, recipe: Recipe, progress: Callable[[str], None] = lambda _: None) -> Path:
    """The GGUF that answers in the persona's voice: the recipe's teacher, else the dense base itself
    (a base that is not a GGUF is converted once and cached beside the reference states)."""
    if recipe.teacher:
        teacher = Path(recipe.teacher).expanduser()
        if not teacher.is_file() or teacher.suffix.lower() != ".gguf":
            raise UserError(f"--teacher '{recipe.teacher}' is not a GGUF file")
        return teacher
    if base.source.lower().endswith(".gguf"):
        return Path(base.source)
    dense = cache_root() / "teachers" / f"{base.sha256[:16]}.f16.gguf"
    if dense.is_file():
        progress("Reusing the dense teacher GGUF (cached per base model)")
    else:
        dense.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(base.model, base.family, base.tokenizer_spec, dense, "F16")
    return dense


def cached_persona_calibration(base, tokenizer, persona: Persona, recipe: Recipe, progress) -> list[dict]:
    """Stage 1, reused from the cache when the base, persona and calibration settings are unchanged."""
    settings = {k: getattr(recipe, k) for k in (
        "candidate_questions", "reference_personas", "selected_questions", "answer_tokens", "teacher_temperature")}
    teacher = teacher_model(base, recipe, progress)
    key = key_of({"base": base.sha256, "system_prompt": persona.system_prompt, "teacher": str(teacher),
                  "seed": recipe.seed, "ppgguf": __version__, **settings})
    path = cache_root() / "calibration" / f"{key}.json"
    cached = read_json(path)
    if cached is not None:
        progress("Reusing the persona calibration set")
        return cached
    refs_key = key_of({"base": base.sha256, "n": settings["candidate_questions"], "refs": settings["reference_personas"],
                       "ppgguf": __version__})
    examples = persona_calibration(
        base.model, tokenizer, persona, teacher, settings, cache_root() / "references" / f"{refs_key}.safetensors",
        recipe.seed, progress,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, examples)
    return examples


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
    extra.update(sampling_metadata())
    return {"general": general, "extra": extra}


def input_hashes(options: BuildOptions, persona: Persona, recipe: Recipe, base) -> dict[str, str | None]:
    """sha256 of everything a build reads: base weights, character file, recipe file and resolved recipe."""
    recipe_file = recipe_path(options.recipe or "default")
    resolved = json.dumps(recipe.to_json(), sort_keys=True).encode()
    return {
        "base_sha256": base.sha256,
        "character_sha256": sha256_of([Path(options.character)]),
        "system_prompt_sha256": hashlib.sha256(persona.system_prompt.encode("utf-8")).hexdigest(),
        "recipe_file": str(recipe_file),
        "recipe_file_sha256": sha256_of([recipe_file]),
        "recipe_sha256": hashlib.sha256(resolved).hexdigest(),  # after command-line overrides
    }


def versions() -> dict[str, str]:
    import llama_cpp
    import transformers

    return {
        "ppgguf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": _package_version("gguf"),
        "llama_cpp_python": llama_cpp.__version__,
        **_llama_cpp_build(),
    }


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _llama_cpp_build() -> dict[str, str]:
    """llama.cpp's and ggml's own versions and ggml's commit, read from the loaded libraries."""
    import ctypes

    import llama_cpp

    info = {}
    try:
        info["llama_cpp"] = llama_cpp.llama_version().decode()
    except Exception:  # an older binding without llama_version()
        info["llama_cpp"] = "unknown"
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for lib_name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll", "libggml.so", "libggml.dylib"):
        if not (lib_dir / lib_name).is_file():
            continue
        try:
            lib = ctypes.CDLL(str(lib_dir / lib_name))
            for key, symbol in (("ggml", "ggml_version"), ("ggml_commit", "ggml_commit")):
                fn = getattr(lib, symbol)
                fn.restype = ctypes.c_char_p
                info[key] = fn().decode()
        except (OSError, AttributeError):
            continue
        break
    info.setdefault("ggml", "unknown")
    info.setdefault("ggml_commit", "unknown")
    return info
