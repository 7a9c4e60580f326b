"""Build recipes: TOML files naming a base model and every knob of a build, as typed settings.

`recipes/default.toml` is the default and sets every knob; `--recipe NAME` picks
`recipes/NAME.toml`, `--recipe PATH` any file, and either changes only the knobs it names on top of
the default. So each default value lives in one place. Command-line flags override the recipe.
Each TOML table is one frozen dataclass below, and every name, type and value is checked when the
recipe loads or an option overrides it, so a typo never passes silently or fails mid-build.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints

from .errors import UserError
from .llama.keys import baked
from .llama.quant_types import AUTO, check_embedding_type, check_imatrix_needed, check_quant_type

# What a knob decides, so which run key it enters (ppgguf.build.pipeline): a PLAN knob the pruning plan and
# everything after it; a WEIGHTS knob only the trained weights; a FILE knob only the quantized file.
PLAN, WEIGHTS, FILE = "plan", "weights", "file"
# What chooses a knob in place of the user: a size target (`--target-size`), or quant "auto" (its types).
TARGET, AUTO_QUANT = "target", "auto"


def knob(order: int, stage: str, *, flat: str | None = None, choices: tuple[str, ...] = (),
         refusal: str = "unknown {name} '{value}'; use one of: {choices}", chosen_by: tuple[str, ...] = ()) -> Any:
    """A recipe knob, declared once on its section's field: `order`, its place in `Recipe.to_json` (a new knob
    takes the next number); `stage`, PLAN, WEIGHTS or FILE; `flat`, its name in reports and overrides where not
    the field's; `choices`, its values where they are a fixed set (`refusal` refuses another); `chosen_by`,
    TARGET and/or AUTO_QUANT where those choose it."""
    return field(metadata={"order": order, "stage": stage, "flat": flat, "choices": choices, "refusal": refusal,
                           "chosen_by": chosen_by})


@dataclass(frozen=True)
class BaseSection:
    model: str = knob(0, PLAN, flat="base")


@dataclass(frozen=True)
class PruneSection:
    # an importance scorer (ppgguf.pruning.importance, whose registry a test holds to these choices)
    method: str = knob(1, PLAN, choices=("persona", "wanda-sp", "magnitude", "random"),
                       refusal="unknown method '{value}'; choose one of: {choices}")
    ffn_sparsity: float = knob(2, PLAN, chosen_by=(TARGET,))
    head_sparsity: float = knob(3, PLAN, chosen_by=(TARGET,))
    # same kept widths in every layer (plain `llama` GGUF) or per layer (`deci`)
    uniform: bool = knob(4, PLAN, chosen_by=(TARGET,))
    seed: int = knob(6, PLAN)


@dataclass(frozen=True)
class CalibrationSection:
    # Persona calibration (Persona-Pruner stage 1).
    candidate_questions: int = knob(9, PLAN)  # pool questions scored by divergence
    reference_personas: int = knob(10, PLAN)  # personas the divergence is measured against
    selected_questions: int = knob(11, PLAN)  # the most persona-sensitive ones, answered by the teacher
    answer_tokens: int = knob(12, PLAN)
    teacher_temperature: float = knob(13, PLAN)
    teacher: str = knob(14, PLAN)  # a GGUF answering in voice; empty = the dense base model
    # Generic calibration text for activation-aware scorers (wanda-sp).
    generic_sequences: int = knob(7, PLAN)
    sequence_length: int = knob(8, PLAN)


@dataclass(frozen=True)
class TrainSection:
    # Mask learning (Persona-Pruner stage 2).
    steps: int = knob(15, PLAN)
    batch_size: int = knob(16, PLAN)
    lr: float = knob(17, PLAN)
    loss: str = knob(18, PLAN, choices=("kl", "ce"),  # distil the dense model, or cross-entropy on the answers
                     refusal="unknown loss '{value}'; use \"kl\" or \"ce\"")
    heal: bool = knob(19, WEIGHTS)  # recovery finetuning of the kept weights after surgery (`--heal`)
    heal_steps: int = knob(20, WEIGHTS)
    heal_lr: float = knob(21, WEIGHTS)
    # 0: the dense model's whole distributions as targets; k: their top k + the rest (ppgguf.calibration.distill)
    teacher_top_k: int = knob(25, PLAN)
    # The persona in the weights (`--bake`, ppgguf.pruning.bake), pruned or not: its own steps and rate, as it
    # trains a model that may have lost nothing (benchmarks/fidelity.py --bake). "off": not; "name": with the
    # short prompt; "mix": a mix of prompts.
    bake: str = knob(26, WEIGHTS, choices=("off", "name", "mix"),
                     refusal="unknown bake mode '{value}'; use one of: {choices}")
    bake_steps: int = knob(27, WEIGHTS)
    bake_lr: float = knob(28, WEIGHTS)
    # "vectors": baking trains only the norm scales (and Qwen2's attention biases), kept in F32 by every GGUF, so
    # the matrices stay the source's own and quantizing keeps the bake; "weights": every weight (ppgguf.pruning.heal).
    bake_trains: str = knob(32, WEIGHTS, choices=("vectors", "weights"))
    # The baked file's template sends "You are NAME." and the description's first bake_prompt_words words
    # when a conversation has no system message, and baking trains on that prompt (ppgguf.pruning.bake.short_prompt).
    bake_prompt_words: int = knob(33, WEIGHTS)
    # Healing and baking also train the token embedding and output matrices (AdamW: 16 bytes a trained
    # parameter instead of 4; they are 21% of SmolLM2-135M and 43% of Qwen2.5-0.5B); false trains the layers only.
    train_embeddings: bool = knob(29, WEIGHTS)
    # 0: healing and baking train the weights themselves; r: LoRA adapters of rank r on every attention and
    # FFN projection instead (peft), merged into the weights before export: 16 bytes a trained parameter for
    # the adapters only, the weights stay at 4 and get no gradient.
    adapter_rank: int = knob(31, WEIGHTS)

    @property
    def bakes(self) -> bool:
        """Whether the build trains the character into the weights (any bake mode but "off")."""
        return baked(self.bake)

    @property
    def bakes_vectors_only(self) -> bool:
        """Baking (which replaces healing) trains the 1-D parameters alone: no weight or adapter trains."""
        return self.bakes and self.bake_trains == "vectors"


@dataclass(frozen=True)
class ExportSection:
    # a llama.cpp quant type, upper case, or "auto": chosen with imatrix and embedding_quant (ppgguf.export.sizing)
    quant: str = knob(5, FILE, chosen_by=(TARGET,))
    # importance matrix for the quantizer: which calibration text it is taken on (ppgguf.export.imatrix)
    imatrix: str = knob(23, FILE, choices=("none", "persona", "generic"), chosen_by=(TARGET, AUTO_QUANT))
    # the token embedding's and output matrix's type; "": the quant mix's own choice
    embedding_quant: str = knob(30, FILE, chosen_by=(TARGET, AUTO_QUANT))
    # 0: build the knobs as set; else the best measured configuration within it (ppgguf.export.sizing)
    target_size_mib: float = knob(24, FILE)


@dataclass(frozen=True)
class ValidateSection:
    prompts: int = knob(22, FILE, flat="validation_prompts")  # fixed prompts compared between PyTorch and llama.cpp


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

    def knobs(self, stage: str) -> dict[str, Any]:
        """The flat knobs that decide `stage` (PLAN, WEIGHTS or FILE), in FLAT_KEYS order."""
        return {flat: value for flat, value in self.to_json().items() if KNOBS[flat].stage == stage}


class Knob(NamedTuple):
    """One knob's declaration, read from its field."""
    flat: str
    section: str
    field: str
    stage: str
    choices: tuple[str, ...]
    refusal: str
    chosen_by: tuple[str, ...]


# TOML table -> its dataclass (the annotations are strings under `from __future__ import annotations`).
SECTIONS: dict[str, type] = get_type_hints(Recipe)


def _declared_knobs() -> dict[str, Knob]:
    declared = sorted(((f.metadata["order"], Knob(f.metadata["flat"] or f.name, section, f.name, f.metadata["stage"],
                                                   f.metadata["choices"], f.metadata["refusal"], f.metadata["chosen_by"]))
                       for section, cls in SECTIONS.items() for f in fields(cls)), key=lambda pair: pair[0])
    if [order for order, _ in declared] != list(range(len(declared))):
        raise RuntimeError("recipe knobs must be numbered 0, 1, 2, ... each once")
    return {knob.flat: knob for _, knob in declared}


# Flat knob name (reports, command-line overrides) -> its declaration; -> (TOML table, key). `Recipe.to_json` order.
KNOBS = _declared_knobs()
FLAT_KEYS = {flat: (knob.section, knob.field) for flat, knob in KNOBS.items()}
# The knobs a size target chooses (refused beside --target-size), and those quant "auto" chooses with the type.
CHOSEN_BY_TARGET = tuple(flat for flat, knob in KNOBS.items() if TARGET in knob.chosen_by)
CHOSEN_BY_AUTO = tuple(flat for flat, knob in KNOBS.items() if AUTO_QUANT in knob.chosen_by)


def check_sparsity(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise UserError(f"{name} must be in [0, 1), got {value}; e.g. 0.5 removes half")


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
        section, name = FLAT_KEYS[key]
        tables[section][name] = checked(key, value, get_type_hints(SECTIONS[section])[name], where)
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
        for knob in KNOBS.values():
            value = getattr(getattr(recipe, knob.section), knob.field)
            if knob.choices and value not in knob.choices:
                raise UserError(knob.refusal.format(name=knob.flat, value=value, choices=", ".join(knob.choices)))
        quant = check_quant_type(recipe.export.quant, auto=True)
        if quant != AUTO:
            check_imatrix_needed(quant, recipe.export.imatrix != "none")
        embedding_quant = check_embedding_type(recipe.export.embedding_quant) if recipe.export.embedding_quant else ""
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
