"""Importance scorers: how much each FFN channel and each KV head group matters.

Each scorer is one module with one function `score(inputs) -> Importance`; it never changes the
model. `ppgguf.plan` turns scores into kept indices and `ppgguf.surgery` cuts, so a new scorer is
one new module and one line in `SCORERS`.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UserError
from ..plan import Importance
from . import magnitude, random_scores, wanda_sp
from .common import ScoringInputs

SCORERS: dict[str, Callable[[ScoringInputs], Importance]] = {
    "magnitude": magnitude.score,
    "wanda-sp": wanda_sp.score,
    "random": random_scores.score,
}


def get_scorer(name: str) -> Callable[[ScoringInputs], Importance]:
    if name not in SCORERS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(SCORERS)}")
    return SCORERS[name]


__all__ = ["SCORERS", "ScoringInputs", "get_scorer", "Importance"]
