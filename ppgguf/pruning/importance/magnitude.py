"""Structured magnitude: the L1 norm of every weight that leaves with a channel or head group.

Every row and column coupled to a structure (ppgguf.pruning.coupling: gate row, up row and down column of
an FFN channel; K, V and Q rows and O columns of a KV group) counts: the "magnitude-sp" baseline of
structured-pruning papers. Data-free.
"""

from __future__ import annotations

import torch

from ..coupling import Coupling, layer_couplings, per_structure
from ..plan import Importance
from .common import ScoringInputs

DATA = None


def _l1_norms(coupling: Coupling) -> torch.Tensor:
    return sum(per_structure(s.linear.weight.abs().sum(1 - s.axis), s.unit) for s in coupling.slices)


@torch.no_grad()
def score(inputs: ScoringInputs) -> Importance:
    couplings = layer_couplings(inputs.model)
    return Importance(ffn=[_l1_norms(ffn) for ffn, _ in couplings], heads=[_l1_norms(kv) for _, kv in couplings])
