"""Build recipes: TOML files naming a base model and every knob of a build, as typed settings.

`recipes/default.toml` is the default and sets every knob; `--recipe NAME` picks
`recipes/NAME.toml`, `--recipe PATH` any file, and either changes only the knobs it names on top of
the default. So each default value lives in one place. Command-line flags override the recipe.
Each TOML table is one frozen dataclass below, and every name, type and value is checked when the
recipe loads or an option overrides it, so a typo never passes silently or fails mid-build.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from .errors import UserError
from .importance import check_method
from .plan import check_sparsity
from .quantize import AUTO, check_embedding_type, check_imatrix_needed, check_quant_type

LOSSES = ("kl", "ce")
IMATRIX_KINDS = ("none", "persona", "generic")  # which calibration text the importance matrix is taken on
BAKE_MODES = ("off", "name", "mix")  # the persona in the weights: not, with the short prompt, or a mix of prompts (ppgguf.bake)
BAKE_TRAINS = ("vectors", "weights")  # what baking trains (ppgguf.heal)


@dataclass(frozen=True)
class BaseSection:
    model: str


@dataclass(frozen=True)
class PruneSection:
    method: str  # an importance scorer (ppgguf.importance)
    ffn_sparsity: float
    head_sparsity: float
    uniform: bool  # same kept widths in every layer (plain `llama` GGUF) or per layer (`deci`)
    seed: int


@dataclass(frozen=True)
class CalibrationSection:
    # Persona calibration (Persona-Pruner stage 1).
    candidate_questions: int  # pool questions scored by divergence
    reference_personas: int  # personas the divergence is measured against
    selected_questions: int  # the most persona-sensitive ones, answered by the teacher
    answer_tokens: int
    teacher_temperature: float
    teacher: str  # a GGUF answering in voice; empty = the dense base model
    # Generic calibration text for activation-aware scorers (wanda-sp).
    generic_sequences: int
    sequence_length: int


@dataclass(frozen=True)
class TrainSection:
    # Mask learning (Persona-Pruner stage 2).
    steps: int
    batch_size: int
    lr: float
    loss: str  # "kl" (distil the dense model) or "ce" (cross-entropy on the answers)
    # Recovery finetuning of the kept weights after surgery (`--heal`).
    heal: bool
    heal_steps: int
    heal_lr: float
    teacher_top_k: int  # 0: the dense model's whole distributions as targets; k: their top k + the rest (ppgguf.distill)
    # The persona in the weights (`--bake`, ppgguf.bake), pruned or not: its own steps and rate, as it trains
    # a model that may have lost nothing (benchmarks/fidelity.py --bake).
    bake: str
    bake_steps: int
    bake_lr: float
    # "vectors": baking trains only the norm scales (and Qwen2's attention biases), which every GGUF keeps in
    # F32, so the matrices stay the source's own and quantizing keeps the bake; "weights": every weight.
    bake_trains: str
    # The baked file's template sends "You are NAME." and the description's first bake_prompt_words words
    # when a conversation has no system message, and baking trains on that prompt (ppgguf.bake.short_prompt).
    bake_prompt_words: int
    # Healing and baking also train the token embedding and output matrices (AdamW: 16 bytes a trained
    # parameter instead of 4; they are 21% of SmolLM2-135M and 43% of Qwen2.5-0.5B); false trains the layers only.
    train_embeddings: bool
    # 0: healing and baking train the weights themselves; r: LoRA adapters of rank r on every attention and
    # FFN projection instead (peft), merged into the weights before export: 16 bytes a trained parameter for
    # the adapters only, the weights stay at 4 and get no gradient.
    adapter_rank: int

    @property
    def bakes_vectors_only(self) -> bool:
        """Baking (which replaces healing) trains the 1-D parameters alone: no weight or adapter trains."""
        return self.bake != "off" and self.bake_trains == "vectors"


@dataclass(frozen=True)
class ExportSection:
    quant: str  # a llama.cpp quant type, upper case, or "auto": chosen with imatrix and embedding_quant (ppgguf.sizing)
    imatrix: str  # importance matrix for the quantizer: "none", "persona" or "generic" (ppgguf.imatrix)
    embedding_quant: str  # the token embedding's and output matrix's type; "": the quant mix's own choice
    target_size_mib: float  # 0: build the knobs as set; else the best measured configuration within it (ppgguf.sizing)


@dataclass(frozen=True)
class ValidateSection:
    prompts: int  # fixed prompts compared between PyTorch and llama.cpp


@dataclass(frozen=True)
class Recipe:
    """Every knob of a build, one field per TOML table; the values come from `recipes/default.toml`."""

    base: BaseSection
    prune: PruneSection
    calibration: CalibrationSection
    train: TrainSection
    export: ExportSection
    validate: ValidateSection

    def to_json(self) -> dict[str, Any]:
        """The knobs as one flat dict (FLAT_KEYS order): run-directory keys and reports are hashed from it."""
        return {flat: getattr(getattr(self, section), key) for flat, (section, key) in FLAT_KEYS.items()}


# Flat knob name (reports, command-line overrides) -> (TOML table, key). The order is that of
# `Recipe.to_json`, which run keys are hashed from: do not reorder.
FLAT_KEYS = {
    "base": ("base", "model"),
    **{key: ("prune", key) for key in ("method", "ffn_sparsity", "head_sparsity", "uniform")},
    "quant": ("export", "quant"),
    "seed": ("prune", "seed"),
    **{key: ("calibration", key) for key in ("generic_sequences", "sequence_length", "candidate_questions",
                                             "reference_personas", "selected_questions", "answer_tokens",
                                             "teacher_temperature", "teacher")},
    **{key: ("train", key) for key in ("steps", "batch_size", "lr", "loss", "heal", "heal_steps", "heal_lr")},
    "validation_prompts": ("validate", "prompts"),
    "imatrix": ("export", "imatrix"),
    "target_size_mib": ("export", "target_size_mib"),
    "teacher_top_k": ("train", "teacher_top_k"),
    "bake": ("train", "bake"),
    "bake_steps": ("train", "bake_steps"),
    "bake_lr": ("train", "bake_lr"),
    "train_embeddings": ("train", "train_embeddings"),
    "embedding_quant": ("export", "embedding_quant"),
    "adapter_rank": ("train", "adapter_rank"),
    "bake_trains": ("train", "bake_trains"),
    "bake_prompt_words": ("train", "bake_prompt_words"),
}
# TOML table -> its dataclass (the annotations are strings under `from __future__ import annotations`).
SECTIONS: dict[str, type] = get_type_hints(Recipe)


def recipes_dir() -> Path:
    # A wheel carries the recipes as ppgguf/recipes/; in the repository (an editable install) they
    # sit beside the package.
    packaged = Path(__file__).resolve().parent / "recipes"
    return packaged if packaged.is_dir() else packaged.parent.parent / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise UserError(f"recipe file '{name_or_path}' not found")
        return candidate
    path = recipes_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise UserError(f"unknown recipe '{name_or_path}'; choose one of: {', '.join(available_recipes())} or give a .toml path")
    return path


def load_recipe(name_or_path: str | None = None) -> Recipe:
    """The default recipe with the knobs of `name_or_path` (a recipe name or a .toml path) on top."""
    default = recipes_dir() / "default.toml"
    tables = recipe_tables(default)
    missing = [f"[{s}] {key}" for s, cls in SECTIONS.items() for key in get_type_hints(cls) if key not in tables[s]]
    if missing:  # a packaging mistake, not a user's
        raise RuntimeError(f"recipes/default.toml does not set {', '.join(missing)}")
    path = recipe_path(name_or_path or "default")
    if path.resolve() != default.resolve():
        for section, values in recipe_tables(path).items():
            tables[section].update(values)
    return _validated(_recipe(tables), f"recipe {path.name}")


def recipe_tables(path: Path) -> dict[str, dict[str, Any]]:
    """The knobs one TOML file sets, by table (every table present), checked by name and type."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"recipe {path.name} is not valid TOML: {err}") from None
    tables: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for section, table in data.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise UserError(f"recipe {path.name}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        types = get_type_hints(SECTIONS[section])
        for key, value in table.items():
            if key not in types:
                raise UserError(f"recipe {path.name}: unknown key '{key}' in [{section}]")
            tables[section][key] = checked(key, value, types[key], f"recipe {path.name}")
    return tables


def with_overrides(recipe: Recipe, overrides: dict[str, Any], where: str = "option") -> Recipe:
    """A copy of `recipe` with the non-None `overrides` (flat knob names, see FLAT_KEYS) applied and checked."""
    tables = {section: asdict(getattr(recipe, section)) for section in SECTIONS}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in FLAT_KEYS:
            raise UserError(f"{where}: unknown recipe key '{key}'; known: {', '.join(FLAT_KEYS)}")
        section, field = FLAT_KEYS[key]
        tables[section][field] = checked(key, value, get_type_hints(SECTIONS[section])[field], where)
    return _validated(_recipe(tables), None)


def checked(key: str, value: Any, expected: type, where: str) -> Any:
    """`value` if it has the `expected` type (an int is accepted for a float: TOML writes 1 for 1.0)."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{where}: '{key}' must be {expected.__name__}, got {value!r}")
    return value


def _recipe(tables: dict[str, dict[str, Any]]) -> Recipe:
    return Recipe(**{section: cls(**tables[section]) for section, cls in SECTIONS.items()})


def _validated(recipe: Recipe, where: str | None) -> Recipe:
    """`recipe` with its quant type normalised, or a UserError naming the first bad value.

    `where` (a recipe file) prefixes the message; without it the values came from command-line
    options, and knobs are named by their flags.
    """
    try:
        check_method(recipe.prune.method)
        if recipe.train.loss not in LOSSES:
            raise UserError(f"unknown loss '{recipe.train.loss}'; use \"kl\" or \"ce\"")
        quant = check_quant_type(recipe.export.quant, auto=True)
        if recipe.export.imatrix not in IMATRIX_KINDS:
            raise UserError(f"unknown imatrix '{recipe.export.imatrix}'; use one of: {', '.join(IMATRIX_KINDS)}")
        if quant != AUTO:
            check_imatrix_needed(quant, recipe.export.imatrix != "none")
        embedding_quant = check_embedding_type(recipe.export.embedding_quant) if recipe.export.embedding_quant else ""
        if recipe.train.bake not in BAKE_MODES:
            raise UserError(f"unknown bake mode '{recipe.train.bake}'; use one of: {', '.join(BAKE_MODES)}")
        if recipe.train.bake_trains not in BAKE_TRAINS:
            raise UserError(f"unknown bake_trains '{recipe.train.bake_trains}'; use one of: {', '.join(BAKE_TRAINS)}")
    except UserError as err:
        raise UserError(f"{where}: {err}" if where else str(err)) from None
    if recipe.train.teacher_top_k < 0:
        raise UserError(f"{where + ': ' if where else '--'}teacher_top_k must be 0 (whole distributions) or a "
                        f"number of tokens, got {recipe.train.teacher_top_k}")
    if recipe.train.bake_prompt_words < 0:
        raise UserError(f"{where + ': ' if where else '--'}bake_prompt_words must be 0 (\"You are NAME.\" alone) or a "
                        f"number of words, got {recipe.train.bake_prompt_words}")
    if recipe.train.adapter_rank < 0:
        raise UserError(f"{where + ': ' if where else '--'}adapter_rank must be 0 (train the weights) or a LoRA rank, "
                        f"got {recipe.train.adapter_rank}")
    if recipe.export.target_size_mib < 0:
        where_key = f"{where}: target_size_mib" if where else "--target-size"
        raise UserError(f"{where_key} must be a size in MiB (0 for none), got {recipe.export.target_size_mib:g}")
    for key in ("ffn_sparsity", "head_sparsity"):
        check_sparsity(f"{where}: {key}" if where else "--" + key.replace("_", "-"), getattr(recipe.prune, key))
    return replace(recipe, export=replace(recipe.export, quant=quant, embedding_quant=embedding_quant))
