"""Build recipes: TOML files naming a base model and every knob of a build.

`recipes/default.toml` is the default and sets every knob; `--recipe NAME` picks
`recipes/NAME.toml`, `--recipe PATH` any file, and either changes only the knobs it names on top of
the default. So each default value lives in one place. Command-line flags override the recipe.
Unknown keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass
class Recipe:
    """Every knob of a build; the values come from `recipes/default.toml` (see SECTIONS)."""

    base: str
    method: str
    ffn_sparsity: float
    head_sparsity: float
    uniform: bool  # same kept widths in every layer (plain `llama` GGUF) or per layer (`deci`)
    quant: str
    seed: int
    # Generic calibration text for activation-aware scorers (wanda-sp).
    generic_sequences: int
    sequence_length: int
    # Persona calibration (Persona-Pruner stage 1).
    candidate_questions: int  # pool questions scored by divergence
    reference_personas: int  # personas the divergence is measured against
    selected_questions: int  # the most persona-sensitive ones, answered by the teacher
    answer_tokens: int
    teacher_temperature: float
    teacher: str  # a GGUF answering in voice; empty = the dense base model
    # Mask learning (Persona-Pruner stage 2).
    steps: int
    batch_size: int
    lr: float
    loss: str  # "kl" (distil the dense model) or "ce" (cross-entropy on the answers)
    # Recovery finetuning of the kept weights after surgery (`--heal`).
    heal: bool
    heal_steps: int
    heal_lr: float
    # Validation gate: how many fixed prompts are compared between PyTorch and llama.cpp.
    validation_prompts: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# TOML table -> the recipe fields it may hold.
SECTIONS = {
    "base": {"model": "base"},
    "prune": {"method": "method", "ffn_sparsity": "ffn_sparsity", "head_sparsity": "head_sparsity",
              "uniform": "uniform", "seed": "seed"},
    "calibration": {"generic_sequences": "generic_sequences", "sequence_length": "sequence_length",
                    "candidate_questions": "candidate_questions", "reference_personas": "reference_personas",
                    "selected_questions": "selected_questions", "answer_tokens": "answer_tokens",
                    "teacher_temperature": "teacher_temperature", "teacher": "teacher"},
    "train": {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "loss": "loss",
              "heal": "heal", "heal_steps": "heal_steps", "heal_lr": "heal_lr"},
    "export": {"quant": "quant"},
    "validate": {"prompts": "validation_prompts"},
}


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
    values = recipe_values(default)
    missing = [f.name for f in fields(Recipe) if f.name not in values]
    if missing:  # a packaging mistake, not a user's
        raise RuntimeError(f"recipes/default.toml does not set {', '.join(missing)}")
    path = recipe_path(name_or_path or "default")
    if path.resolve() != default.resolve():
        values.update(recipe_values(path))
    return Recipe(**values)


def recipe_values(path: Path) -> dict[str, Any]:
    """The recipe fields one TOML file sets, checked by name and type."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"recipe {path.name} is not valid TOML: {err}") from None
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise UserError(f"recipe {path.name}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        for key, value in table.items():
            if key not in SECTIONS[section]:
                raise UserError(f"recipe {path.name}: unknown key '{key}' in [{section}]")
            values[SECTIONS[section][key]] = checked(SECTIONS[section][key], value, f"recipe {path.name}")
    return values


def with_overrides(recipe: Recipe, overrides: dict[str, Any], where: str = "option") -> Recipe:
    """A copy of `recipe` with the non-None `overrides` applied, type-checked."""
    values = recipe.to_json()
    values.update({key: checked(key, value, where) for key, value in overrides.items() if value is not None})
    return Recipe(**values)


# Recipe field -> the Python type its value must have. (The annotations are strings here, under
# `from __future__ import annotations`.)
FIELD_TYPES = {f.name: {"str": str, "float": float, "int": int, "bool": bool}[f.type] for f in fields(Recipe)}


def checked(key: str, value: Any, where: str) -> Any:
    if key not in FIELD_TYPES:
        raise UserError(f"{where}: unknown recipe key '{key}'; known: {', '.join(FIELD_TYPES)}")
    expected = FIELD_TYPES[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # TOML writes 1 for 1.0
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{where}: '{key}' must be {expected.__name__}, got {value!r}")
    return value
