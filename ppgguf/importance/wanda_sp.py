"""Wanda-sp: Wanda's |weight| x ||input activation|| summed over each structure.

The structured variant used as a baseline by FLAP (An et al., AAAI 2024): an FFN channel j scores
sum_i |W_down[i, j]| * ||X_j||, where X_j is channel j of the input to down_proj over the
calibration tokens; a KV group scores the same sum over the o_proj columns of its query heads.
Only the projections that consume the pruned channels are scored, as in the published method.
"""

from __future__ import annotations

import torch

from ..plan import Importance
from .common import ScoringInputs, decoder_layers, group_shape


@torch.no_grad()
def input_norms(model: torch.nn.Module, calibration: list[list[int]], device: str, on_hidden=None) -> tuple[list, list]:
    """Per layer: squared L2 norm over all calibration tokens of each input channel of down_proj and o_proj.

    `on_hidden(i, hidden)`, if given, receives each sequence's final hidden states (the persona
    scorer takes its dense teacher distributions from this same pass). The output matrix is never
    applied here: the norms do not need it.
    """
    layers = decoder_layers(model)
    down_sq = [None] * len(layers)
    o_sq = [None] * len(layers)

    def accumulate(store, i):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sq = (x * x).sum(0)
            store[i] = sq if store[i] is None else store[i] + sq
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(accumulate(down_sq, i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(accumulate(o_sq, i)))
    try:
        for i, ids in enumerate(calibration):
            hidden = model.model(torch.tensor([ids], device=device)).last_hidden_state
            if on_hidden is not None:
                on_hidden(i, hidden[0])
    finally:
        for handle in handles:
            handle.remove()
    return down_sq, o_sq


@torch.no_grad()
def score(inputs: ScoringInputs) -> Importance:
    if not inputs.calibration:
        raise ValueError("wanda-sp needs calibration text")
    return from_norms(inputs.model, *input_norms(inputs.model, inputs.calibration, inputs.device))


def from_norms(model: torch.nn.Module, down_sq: list, o_sq: list) -> Importance:
    n_groups, _, _ = group_shape(model)
    ffn, heads = [], []
    for layer, d_sq, a_sq in zip(decoder_layers(model), down_sq, o_sq):
        ffn.append((layer.mlp.down_proj.weight.abs().float() * d_sq.sqrt()).sum(0).cpu())
        per_column = (layer.self_attn.o_proj.weight.abs().float() * a_sq.sqrt()).sum(0)
        heads.append(per_column.reshape(n_groups, -1).sum(1).cpu())
    return Importance(ffn=ffn, heads=heads)
