"""Structured magnitude: the L1 norm of every weight that leaves with a channel or head group.

An FFN channel j owns gate row j, up row j and down column j; a KV group owns its K and V rows and
the Q rows and O columns of its query heads (the "magnitude-sp" baseline of structured-pruning
papers). Data-free.
"""

from __future__ import annotations

import torch

from ..plan import Importance
from .common import ScoringInputs, decoder_layers, group_shape


@torch.no_grad()
def score(inputs: ScoringInputs) -> Importance:
    n_groups, _, _ = group_shape(inputs.model)
    ffn, heads = [], []
    for layer in decoder_layers(inputs.model):
        mlp, attn = layer.mlp, layer.self_attn
        ffn.append(
            mlp.gate_proj.weight.abs().sum(1) + mlp.up_proj.weight.abs().sum(1) + mlp.down_proj.weight.abs().sum(0)
        )
        per_group = [
            attn.q_proj.weight.abs().sum(1),
            attn.k_proj.weight.abs().sum(1),
            attn.v_proj.weight.abs().sum(1),
            attn.o_proj.weight.abs().sum(0),
        ]
        heads.append(sum(p.reshape(n_groups, -1).sum(1) for p in per_group))
    return Importance(ffn=ffn, heads=heads)
