"""Distillation targets: the dense model's next-token distributions, whole or as their top k.

Mask learning and healing minimise KL(dense || student) on the calibration answers. A whole
distribution is one vocabulary row per answer token (fp16: 98 KB for SmolLM2's 49,152 tokens, 297 KB
for Qwen2.5's 151,936; 128 answers of 80 tokens hold 1.0 GB and 3.1 GB). The top k of each row plus
the mass of all the others (sparse knowledge distillation with a rest bucket) keeps k indices and
log-probabilities and one number: 6k + 4 bytes a token, and the KL over k + 1 outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TopK:
    """Per answer position: the k most likely tokens, their log-probabilities, and log(mass of the rest)."""

    indices: torch.Tensor  # [positions, k] int32
    logprobs: torch.Tensor  # [positions, k] float16
    rest: torch.Tensor  # [positions] float32; -inf when the k tokens hold all the mass

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indices, self.logprobs, self.rest))


Target = torch.Tensor | TopK  # a whole log-probability row per position, or its top k


def top_k(logprobs: torch.Tensor, k: int) -> TopK:
    """The top `k` of each row of `logprobs` ([positions, vocabulary] log-probabilities)."""
    values, indices = logprobs.float().topk(min(k, logprobs.shape[-1]), dim=-1)
    return TopK(indices=indices.to(torch.int32), logprobs=values.to(torch.float16), rest=_log1mexp(values.logsumexp(-1)))


def kl_loss(student_logits: torch.Tensor, target: Target) -> torch.Tensor:
    """KL(target || student), the mean over positions; over the whole vocabulary or over top k + rest."""
    student = F.log_softmax(student_logits.float(), -1)
    if isinstance(target, torch.Tensor):
        return F.kl_div(student, target.to(student.device).float(), log_target=True, reduction="batchmean")
    teacher = target.logprobs.to(student.device).float()
    picked = student.gather(-1, target.indices.to(student.device).long())
    rest = target.rest.to(student.device)
    kl = (teacher.exp() * (teacher - picked)).sum(-1)
    # The student's rest, kept above 1e-6 nats from 0 mass so a student sure of the top k stays finite.
    student_rest = _log1mexp(picked.logsumexp(-1).clamp(max=-1e-6))
    # Where the teacher leaves no mass outside its top k, the rest term is 0 (not 0 * inf).
    rest_term = torch.where(torch.isfinite(rest), rest.exp() * (rest - student_rest), torch.zeros_like(rest))
    return (kl + rest_term).sum() / student.shape[0]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stably; -inf at x = 0."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
