"""Random importance: the floor every real criterion must beat. Seeded, so plans repeat."""

from __future__ import annotations

import torch

from ..coupling import decoder_layers, group_shape
from ..plan import Importance
from .common import ScoringInputs

DATA = None


def score(inputs: ScoringInputs) -> Importance:
    generator = torch.Generator().manual_seed(inputs.seed)
    n_groups, _, _ = group_shape(inputs.model)
    layers = decoder_layers(inputs.model)
    ffn = [torch.rand(layer.mlp.gate_proj.out_features, generator=generator) for layer in layers]
    heads = [torch.rand(n_groups, generator=generator) for _ in layers]
    return Importance(ffn=ffn, heads=heads)
