"""Importance scorers: how much each FFN channel and each KV head group matters.

Each scorer is one module with one function `score(inputs) -> Importance`; it never changes the
model. `ppgguf.plan` turns scores into kept indices and `ppgguf.surgery` cuts, so a new scorer is
one new module and one line in `SCORERS`.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UserError
from ..plan import Importance
from . import magnitude, persona, random_scores, wanda_sp
from .common import ScoringInputs

SCORERS: dict[str, Callable[[ScoringInputs], Importance]] = {
    "persona": persona.score,
    "wanda-sp": wanda_sp.score,
    "magnitude": magnitude.score,
    "random": random_scores.score,
}

# The calibration data each scorer reads: none, the generic text, or the persona calibration set.
DATA_NEEDED = {"persona": "persona", "wanda-sp": "generic", "magnitude": None, "random": None}


def get_scorer(name: str) -> Callable[[ScoringInputs], Importance]:
    if name not in SCORERS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(SCORERS)}")
    return SCORERS[name]


__all__ = ["DATA_NEEDED", "SCORERS", "ScoringInputs", "get_scorer", "Importance"]
