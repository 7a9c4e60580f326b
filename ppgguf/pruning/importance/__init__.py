"""Importance scorers: how much each FFN channel and each KV head group matters.

Each scorer is one module with one function `score(inputs) -> Importance` and a constant `DATA`, the
calibration data it reads: None, "generic" (generic text) or "persona" (the persona calibration
set). A scorer never changes the model. `ppgguf.pruning.plan` turns scores into kept indices and
`ppgguf.pruning.surgery` cuts, so a new scorer is one new module, one line in `_MODULES` and its name
among the recipe's method choices (`ppgguf.recipe.PruneSection.method`; a test holds the two alike).
"""

from __future__ import annotations

from typing import Callable

from ...errors import UserError
from ..plan import Importance
from . import magnitude, persona, random_scores, wanda_sp
from .common import ScoringInputs

_MODULES = {"persona": persona, "wanda-sp": wanda_sp, "magnitude": magnitude, "random": random_scores}
SCORERS: dict[str, Callable[[ScoringInputs], Importance]] = {name: m.score for name, m in _MODULES.items()}


def check_method(name: str) -> None:
    if name not in _MODULES:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(_MODULES)}")


def get_scorer(name: str) -> Callable[[ScoringInputs], Importance]:
    check_method(name)
    return SCORERS[name]


def data_needed(name: str) -> str | None:
    """The calibration data the scorer `name` reads: None, "generic" or "persona"."""
    check_method(name)
    return _MODULES[name].DATA


__all__ = ["SCORERS", "ScoringInputs", "check_method", "data_needed", "get_scorer", "Importance"]
