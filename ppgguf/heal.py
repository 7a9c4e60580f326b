"""Optional recovery finetuning (`--heal`): train the kept weights of the pruned model.

After surgery the model is smaller but every remaining weight is still the dense model's. Healing
trains all of them for a few steps on the persona calibration set, with the same loss as the mask
learning: KL from the dense model's next-token distributions on the in-voice answers, computed
before surgery. The paper reports large gains from recovery finetuning at 50% sparsity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def dense_answer_distributions(model, sequences: list[tuple[list[int], int]], device: str) -> list[torch.Tensor]:
    """Log-probabilities of the dense model at the positions that predict each answer (fp16, CPU)."""
    out = []
    for ids, start in sequences:
        logits = model(torch.tensor([ids], device=device), logits_to_keep=len(ids) - start + 1).logits[0, :-1]
        out.append(F.log_softmax(logits.float(), -1).to(torch.float16).cpu())
    return out


def heal(
    model, sequences: list[tuple[list[int], int]], teacher: list[torch.Tensor], steps: int, batch_size: int,
    lr: float, seed: int, device: str, on_step=None,
) -> list[float]:
    """Finetune `model` in place; returns the loss per step."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history: list[float] = []
    order: list[int] = []
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(batch_size):
                if not order:
                    order = torch.randperm(len(sequences), generator=generator).tolist()
                index = order.pop()
                ids, start = sequences[index]
                logits = model(torch.tensor([ids], device=device), logits_to_keep=len(ids) - start + 1).logits[0, :-1]
                target = teacher[index].to(device).float()
                loss = F.kl_div(F.log_softmax(logits.float(), -1), target, log_target=True, reduction="batchmean")
                (loss / batch_size).backward()
                total += float(loss.detach()) / batch_size
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            history.append(total)
            if on_step is not None:
                on_step(step + 1, steps, total)
    finally:
        model.eval().to("cpu")
        for p in params:
            p.requires_grad_(False)
    return history
