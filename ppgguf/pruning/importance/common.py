"""What every scorer receives: the dense model, calibration data, targets and knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ...calibration.distill import Target


@dataclass
class ScoringInputs:
    model: torch.nn.Module  # the dense model; scorers leave its weights unchanged
    calibration: list[list[int]] = field(default_factory=list)  # generic token id sequences
    # Persona calibration: ids of [system, user, assistant answer] and where the answer starts.
    persona_sequences: list[tuple[list[int], int]] = field(default_factory=list)
    ffn_sparsity: float = 0.0  # the targets, for scorers that learn a mask of the final size
    head_sparsity: float = 0.0
    seed: int = 0
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)  # scorer-specific knobs from the recipe
    on_step: Callable[[int, int, float], None] | None = None  # progress of iterative scorers
    log: dict[str, Any] = field(default_factory=dict)  # what a scorer wants in the build report
    # The dense model's answer distributions on persona_sequences (fp16 rows, or ppgguf.calibration.distill.TopK). The
    # persona scorer fills this in with its KL loss, so healing can reuse it instead of a second pass.
    dense_answer_logprobs: list[Target] | None = None

