"""Build recipes: TOML files naming a base model and every knob of a build.

`recipes/default.toml` is the default; `--recipe NAME` picks `recipes/NAME.toml`, `--recipe PATH`
any file. Command-line flags override the recipe. Unknown keys are errors, so a typo never passes
silently.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass
class Recipe:
    base: str = "smollm2-135m"
    method: str = "persona"
    ffn_sparsity: float = 0.375
    head_sparsity: float = 0.0
    uniform: bool = True  # same kept widths in every layer (plain `llama` GGUF) or per layer (`deci`)
    quant: str = "Q8_0"
    seed: int = 0
    # Generic calibration text for activation-aware scorers (wanda-sp).
    generic_sequences: int = 32
    sequence_length: int = 256
    # Persona calibration (Persona-Pruner stage 1).
    candidate_questions: int = 256  # pool questions scored by divergence
    reference_personas: int = 8  # personas the divergence is measured against
    selected_questions: int = 128  # the most persona-sensitive ones, answered by the teacher
    answer_tokens: int = 80
    teacher_temperature: float = 0.7
    teacher: str = ""  # a GGUF answering in voice; empty = the dense base model
    # Mask learning (Persona-Pruner stage 2).
    steps: int = 24
    batch_size: int = 8
    lr: float = 0.05
    loss: str = "kl"  # "kl" (distil the dense model) or "ce" (cross-entropy on the answers)
    # Recovery finetuning of the kept weights after surgery (`--heal`).
    heal: bool = True
    heal_steps: int = 24
    heal_lr: float = 2e-4
    # Validation gate: how many fixed prompts are compared between PyTorch and llama.cpp.
    validation_prompts: int = 4

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
    path = recipe_path(name_or_path or "default")
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
            values[SECTIONS[section][key]] = value
    return with_overrides(Recipe(), values, where=f"recipe {path.name}")


def with_overrides(recipe: Recipe, overrides: dict[str, Any], where: str = "option") -> Recipe:
    """A copy of `recipe` with the non-None `overrides` applied, type-checked."""
    types = {f.name: type(getattr(Recipe(), f.name)) for f in fields(Recipe)}
    values = recipe.to_json()
    for key, value in overrides.items():
        if value is None:
            continue
        expected = types[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise UserError(f"{where}: '{key}' must be {expected.__name__}, got {value!r}")
        values[key] = value
    return Recipe(**values)
