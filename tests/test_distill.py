"""Distillation targets: whole distributions and their top k with the rest's mass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ppgguf.calibration.distill import kl_loss, top_k


def _rows(seed: int, positions: int = 5, vocab: int = 50, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(positions, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def test_the_top_k_of_every_token_is_the_whole_kl():
    teacher = F.log_softmax(_rows(0), -1)
    student = _rows(1)
    whole = kl_loss(student, teacher)
    assert torch.allclose(kl_loss(student, top_k(teacher, 50)), whole, rtol=1e-3)
    assert whole > 0.1


def test_the_top_k_kl_is_zero_for_the_teacher_itself_and_grows_with_distance():
    logits = _rows(2)
    target = top_k(F.log_softmax(logits, -1), 8)
    assert abs(float(kl_loss(logits, target))) < 1e-3  # fp16 log-probabilities: near 0, not exactly
    near, far = logits + 0.1 * _rows(3), logits + 2.0 * _rows(3)
    assert 0 < float(kl_loss(near, target)) < float(kl_loss(far, target))


def test_top_k_targets_pull_the_student_toward_the_teacher():
    teacher = F.log_softmax(_rows(4), -1)
    target = top_k(teacher, 8)
    student = _rows(5).requires_grad_(True)
    optimizer = torch.optim.SGD([student], lr=1.0)
    before = float(kl_loss(student.detach(), teacher))
    for _ in range(50):
        optimizer.zero_grad()
        kl_loss(student, target).backward()
        optimizer.step()
    assert float(kl_loss(student, teacher)) < 0.5 * before  # the whole-vocabulary KL falls too


def test_a_top_k_target_is_small():
    vocab = 49152
    teacher = F.log_softmax(torch.randn(80, vocab), -1)
    target = top_k(teacher, 64)
    assert target.nbytes() == 80 * (64 * 4 + 64 * 2 + 4)
    assert target.nbytes() * 100 < teacher.to(torch.float16).numel() * 2
