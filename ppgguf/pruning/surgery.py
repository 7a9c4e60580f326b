"""Cut a model to a pruning plan: the pruned channels and heads are physically removed.

Every row and column coupled to a removed FFN channel or KV group (ppgguf.pruning.coupling) goes. The
result is an ordinary transformers model whose Linear layers are smaller; its config states the
new sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from .coupling import ROWS, Coupling, decoder_layers, group_shape, layer_couplings
from .plan import PruningPlan


def _linear_subset(linear: nn.Linear, index: torch.Tensor, axis: int) -> nn.Linear:
    """A new Linear of the rows `index` (with their bias) or of the columns `index` of `linear`."""
    weight = linear.weight.data
    bias = linear.bias.data if linear.bias is not None else None
    if axis == ROWS:
        weight = weight[index]
        bias = bias[index] if bias is not None else None
    else:
        weight = weight[:, index]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def _keep(coupling: Coupling, keep: list[int]) -> None:
    """Replace every projection of `coupling` by its rows or columns of the kept structures."""
    for piece in coupling.slices:
        setattr(piece.owner, piece.name, _linear_subset(piece.linear, piece.index(keep), piece.axis))


@torch.no_grad()
def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Prune `model` in place to `plan` and return it."""
    _, per_group, head_dim = group_shape(model)
    couplings = layer_couplings(model)
    if len(plan.ffn_keep) != len(couplings):
        raise ValueError(f"plan has {len(plan.ffn_keep)} layers, model has {len(couplings)}")
    for layer, (ffn, kv), ffn_keep, kv_keep in zip(decoder_layers(model), couplings, plan.ffn_keep, plan.kv_keep):
        _keep(ffn, ffn_keep)
        _keep(kv, kv_keep)
        # Query heads per KV head is unchanged, because whole groups go.
        layer.self_attn.num_key_value_groups = per_group

    config = model.config
    config.head_dim = head_dim
    config.ppgguf_ffn_widths = plan.ffn_widths
    config.ppgguf_head_counts = [g * per_group for g in plan.kv_groups]
    config.ppgguf_kv_head_counts = list(plan.kv_groups)
    if plan.uniform:
        config.intermediate_size = plan.ffn_widths[0]
        config.num_attention_heads = plan.kv_groups[0] * per_group
        config.num_key_value_heads = plan.kv_groups[0]
    return model


def layer_widths(model: nn.Module) -> list[dict[str, int]]:
    """Actual widths per layer, read from the weights: n_ff, n_head, n_head_kv."""
    head_dim = model.config.head_dim
    return [
        {
            "n_ff": layer.mlp.gate_proj.out_features,
            "n_head": layer.self_attn.q_proj.out_features // head_dim,
            "n_head_kv": layer.self_attn.k_proj.out_features // head_dim,
        }
        for layer in decoder_layers(model)
    ]


def parameter_count(model: nn.Module) -> int:
    """Parameters counted once even when the embedding and output matrix are tied."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def predicted_parameters(model: nn.Module) -> int:
    """Parameter count implied by the layer widths alone, to check that surgery removed what it should."""
    config = model.config
    hidden, head_dim = config.hidden_size, config.head_dim
    has_bias = model.model.layers[0].self_attn.q_proj.bias is not None
    qk_norms = 2 * head_dim if hasattr(model.model.layers[0].self_attn, "q_norm") else 0  # qwen3
    total = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2) + hidden
    for w in layer_widths(model):
        q, kv = w["n_head"] * head_dim, w["n_head_kv"] * head_dim
        total += 2 * hidden * q + 2 * hidden * kv + 3 * hidden * w["n_ff"] + 2 * hidden
        total += ((q + 2 * kv) if has_bias else 0) + qk_norms
    return total
