"""Optional recovery finetuning (`--heal`): train the kept weights of the pruned model.

After surgery the model is smaller but every remaining weight is still the dense model's. Healing
trains all of them for a few steps on the persona calibration set, with the same loss as the mask
learning: KL from the dense model's next-token distributions on the in-voice answers, computed
before surgery. The paper reports large gains from recovery finetuning at 50% sparsity.
"""

from __future__ import annotations

import torch

from .answer_batches import Sequence, answer_logits, deterministic_kernels, shared_prefix_length, shuffled_batches
from .distill import Target, kl_loss


def heal(
    model, sequences: list[Sequence], teacher: list[Target], steps: int, batch_size: int,
    lr: float, seed: int, device: str, on_step=None, train_embeddings: bool = True,
) -> list[float]:
    """Finetune `model` in place; returns the loss per step.

    Without `train_embeddings` the token embedding and output matrices stay as they are: no gradient
    or AdamW state for them (12 bytes a parameter), gradients still flow through them.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    frozen = set() if train_embeddings else {id(model.get_input_embeddings().weight),
                                             id(model.get_output_embeddings().weight)}
    params = [p for p in model.parameters() if id(p) not in frozen]
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history: list[float] = []
    prefix_length = shared_prefix_length(sequences)
    with deterministic_kernels():
        try:
            for step, indices in enumerate(shuffled_batches(len(sequences), batch_size, steps, seed)):
                optimizer.zero_grad(set_to_none=True)
                batch = [sequences[i] for i in indices]
                losses = [kl_loss(logits, teacher[i])
                          for i, logits in zip(indices, answer_logits(model, batch, prefix_length, device))]
                loss = torch.stack(losses).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                history.append(float(loss.detach()))
                if on_step is not None:
                    on_step(step + 1, steps, history[-1])
        finally:
            model.eval().to("cpu")
            for p in model.parameters():
                p.requires_grad_(False)
    return history
