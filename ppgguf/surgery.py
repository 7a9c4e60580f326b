"""Cut a model to a pruning plan: the pruned channels and heads are physically removed.

Per layer, an FFN channel is gate row + up row + down column; a KV group is its K and V rows
(and biases) plus the Q rows (and biases) and O columns of the query heads that share it, in the
contiguous grouping of Hugging Face's `repeat_kv` and llama.cpp. The result is an ordinary
transformers model whose Linear layers are smaller; its config states the new sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from .importance.common import decoder_layers, group_shape
from .plan import PruningPlan


def _linear_subset(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.data
    bias = linear.bias.data if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def _rows_of_heads(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Prune `model` in place to `plan` and return it."""
    n_groups, per_group, head_dim = group_shape(model)
    layers = decoder_layers(model)
    if len(plan.ffn_keep) != len(layers):
        raise ValueError(f"plan has {len(plan.ffn_keep)} layers, model has {len(layers)}")
    for layer, ffn_keep, kv_keep in zip(layers, plan.ffn_keep, plan.kv_keep):
        mlp, attn = layer.mlp, layer.self_attn
        channels = torch.tensor(ffn_keep, dtype=torch.long)
        mlp.gate_proj = _linear_subset(mlp.gate_proj, rows=channels)
        mlp.up_proj = _linear_subset(mlp.up_proj, rows=channels)
        mlp.down_proj = _linear_subset(mlp.down_proj, cols=channels)

        q_heads = [g * per_group + j for g in kv_keep for j in range(per_group)]
        q_rows = _rows_of_heads(q_heads, head_dim)
        kv_rows = _rows_of_heads(list(kv_keep), head_dim)
        attn.q_proj = _linear_subset(attn.q_proj, rows=q_rows)
        attn.k_proj = _linear_subset(attn.k_proj, rows=kv_rows)
        attn.v_proj = _linear_subset(attn.v_proj, rows=kv_rows)
        attn.o_proj = _linear_subset(attn.o_proj, cols=q_rows)
        # Query heads per KV head is unchanged, because whole groups go.
        attn.num_key_value_groups = per_group

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
