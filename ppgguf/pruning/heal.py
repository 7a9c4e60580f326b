"""Optional recovery finetuning (`--heal`): train the kept weights of the pruned model.

After surgery the model is smaller but every remaining weight is still the dense model's. Healing
trains all of them for a few steps on the persona calibration set, with the same loss as the mask
learning: KL from the dense model's next-token distributions on the in-voice answers, computed
before surgery. The paper reports large gains from recovery finetuning at 50% sparsity.

With an adapter rank, LoRA adapters (peft) on every attention and FFN projection are trained instead
and merged into the weights at the end: AdamW's state is kept for the adapters only, which is what
lets a base of billions of parameters heal within memory.
"""

from __future__ import annotations

import warnings

import torch

from ..calibration.batches import (Sequence, answer_logits, deterministic_kernels, shared_prefix_length, shuffled_batches,
                             split_by_group)
from ..calibration.distill import Target, kl_loss


# The projections adapters go on (the names of Llama, Qwen2 and Qwen3 alike in transformers).
ADAPTED_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def heal(
    model, sequences: list[Sequence], teacher: list[Target], steps: int, batch_size: int,
    lr: float, seed: int, device: str, on_step=None, train_embeddings: bool = True, adapter_rank: int = 0,
    vectors_only: bool = False, groups: list | None = None,
) -> list[float]:
    """Finetune `model` in place; returns the loss per step.

    Without `train_embeddings` the token embedding and output matrices stay as they are: no gradient
    or AdamW state for them (12 bytes a parameter), gradients still flow through them. With
    `adapter_rank` only adapters of that rank train (the embeddings do not), merged into `model` at the end.
    With `vectors_only` only the 1-D parameters train (the norm scales, Qwen2's attention biases): a GGUF
    keeps them in F32, so every matrix stays what it was and quantizes back onto the same grid.
    With `groups` (one key per sequence) each batch runs as one forward and backward pass per group, its
    gradients summed: a bake's sequences are grouped by the student's system prompt, so each part runs its
    prompt once, and the step is the whole batch's.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    adapted = None
    if adapter_rank:
        from peft import LoraConfig, get_peft_model  # imported here: it takes seconds, and only this needs it

        # alpha = rank: the update is B @ A unscaled, so one rate suits every rank.
        config = LoraConfig(r=adapter_rank, lora_alpha=adapter_rank, lora_dropout=0.0, target_modules=ADAPTED_PROJECTIONS)
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in favour of another
            warnings.simplefilter("ignore", FutureWarning)
            adapted = get_peft_model(model, config)
        params = [p for p in model.parameters() if p.requires_grad]  # peft froze everything else
    else:
        frozen = set() if train_embeddings else {id(model.get_input_embeddings().weight),
                                                 id(model.get_output_embeddings().weight)}
        params = [p for p in model.parameters() if id(p) not in frozen and (p.dim() == 1 or not vectors_only)]
        trained = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history: list[float] = []
    with deterministic_kernels():
        try:
            for step, indices in enumerate(shuffled_batches(len(sequences), batch_size, steps, seed)):
                optimizer.zero_grad(set_to_none=True)
                loss = 0.0
                for part in split_by_group(indices, groups):
                    batch = [sequences[i] for i in part]
                    logits = answer_logits(model, batch, shared_prefix_length(batch), device)
                    part_loss = torch.stack([kl_loss(rows, teacher[i]) for i, rows in zip(part, logits)]).sum()
                    (part_loss / len(indices)).backward()  # the batch's mean, one part's activations at a time
                    loss += float(part_loss.detach()) / len(indices)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                history.append(loss)
                if on_step is not None:
                    on_step(step + 1, steps, history[-1])
        finally:
            if adapted is not None:
                adapted.merge_and_unload()  # the adapters into the projections' weights, in `model` itself
            model.eval().to("cpu")
            for p in model.parameters():
                p.requires_grad_(False)
    return history
