"""The coupling of layers: which weight rows and columns leave together with one FFN channel or KV group.

Like Torch-Pruning's dependency groups, this is the structure of the model and nothing else: the
scorers (ppgguf.pruning.importance) read it to score whole structures, and ppgguf.pruning.surgery reads it to cut them.

- An FFN channel j is gate_proj row j, up_proj row j and down_proj column j.
- A KV group g is its K and V rows (and biases) plus the Q rows (and biases) and O columns of the
  query heads that share it, in the contiguous grouping of Hugging Face's `repeat_kv` and llama.cpp:
  query heads g * per_group ... (g + 1) * per_group - 1.

Every structure owns `unit` consecutive rows or columns of each projection it touches, so the rows of
structure s are s * unit ... (s + 1) * unit - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ROWS, COLUMNS = 0, 1


def decoder_layers(model: nn.Module):
    return model.model.layers


def group_shape(model: nn.Module) -> tuple[int, int, int]:
    """(number of KV groups, query heads per group, head dimension) of the dense model."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_kv = config.num_key_value_heads
    return n_kv, config.num_attention_heads // n_kv, head_dim


@dataclass(frozen=True)
class Slice:
    """One projection's share of every structure: `unit` output rows (with their bias) or input columns each."""

    owner: nn.Module  # the module holding the projection, e.g. layer.mlp
    name: str  # its attribute, e.g. "gate_proj"
    axis: int  # ROWS or COLUMNS
    unit: int

    @property
    def linear(self) -> nn.Linear:
        return getattr(self.owner, self.name)

    def index(self, keep: list[int]) -> torch.Tensor:
        """The rows or columns of the kept structures, in order."""
        return torch.tensor([s * self.unit + d for s in keep for d in range(self.unit)], dtype=torch.long)


@dataclass(frozen=True)
class Coupling:
    """The slices that leave together with one structure, for every structure of one kind in one layer."""

    slices: tuple[Slice, ...]

    @property
    def consumer(self) -> Slice:
        """The projection that reads the structures' outputs (down_proj, o_proj): its input is theirs."""
        return next(s for s in self.slices if s.axis == COLUMNS)


def ffn_channels(layer: nn.Module) -> Coupling:
    mlp = layer.mlp
    return Coupling((Slice(mlp, "gate_proj", ROWS, 1), Slice(mlp, "up_proj", ROWS, 1),
                     Slice(mlp, "down_proj", COLUMNS, 1)))


def kv_groups(layer: nn.Module, per_group: int, head_dim: int) -> Coupling:
    attn = layer.self_attn
    q_unit = per_group * head_dim
    return Coupling((Slice(attn, "q_proj", ROWS, q_unit), Slice(attn, "k_proj", ROWS, head_dim),
                     Slice(attn, "v_proj", ROWS, head_dim), Slice(attn, "o_proj", COLUMNS, q_unit)))


def layer_couplings(model: nn.Module) -> list[tuple[Coupling, Coupling]]:
    """Per decoder layer: (FFN channels, KV groups)."""
    _, per_group, head_dim = group_shape(model)
    return [(ffn_channels(layer), kv_groups(layer, per_group, head_dim)) for layer in decoder_layers(model)]


def per_structure(values: torch.Tensor, unit: int) -> torch.Tensor:
    """Per-row (or per-column) values summed over each structure's `unit` consecutive entries."""
    return values if unit == 1 else values.reshape(-1, unit).sum(1)


def per_entry(mask: torch.Tensor, unit: int) -> torch.Tensor:
    """A per-structure mask repeated over each structure's `unit` rows or columns."""
    return mask if unit == 1 else mask.repeat_interleave(unit)
