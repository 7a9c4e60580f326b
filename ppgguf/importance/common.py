"""What every scorer receives, and the layer structure scorers read from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ScoringInputs:
    model: torch.nn.Module  # the dense model, never modified by a scorer
    calibration: list[list[int]] = field(default_factory=list)  # token id sequences
    seed: int = 0
    device: str = "cpu"


def decoder_layers(model: torch.nn.Module):
    return model.model.layers


def group_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(number of KV groups, query heads per group, head dimension) of the dense model."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_kv = config.num_key_value_heads
    return n_kv, config.num_attention_heads // n_kv, head_dim
