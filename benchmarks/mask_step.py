"""Time one mask-learning step: one forward+backward per sequence vs batched around the shared persona prompt.

Sequences are [persona prompt of a RoleBench character, a pool question, an answer of about 80
tokens]; gradients go to per-channel FFN mask scores only, as in the persona scorer. Timings are
interleaved, median of --reps.

    python benchmarks/mask_step.py --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fidelity import load_character
from ppgguf.calibration.answers import answer_sequences
from ppgguf.calibration.batches import answer_logits, shared_prefix_length
from ppgguf.calibration.questions import question_pool
from ppgguf.inputs.base import load_base
from ppgguf.inputs.persona import persona_from_text
from ppgguf.inputs.tokenizer import ChatTokenizer
from ppgguf.pruning.importance.persona import _Masks

ANSWER = "Well, I suppose that depends on the day and on who is asking me, friend. " * 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()

    base = load_base("smollm2-135m", Path(tempfile.mkdtemp(prefix="ppgguf-mask-step-")))
    model = base.model.requires_grad_(False)
    tokenizer = ChatTokenizer(base.tokenizer_spec, base.vocab_gguf)
    character = load_character(0, 2)
    persona = persona_from_text(f"Name: {character['name']}\n{character['description']}")
    examples = [{"question": q, "answer": ANSWER} for q in question_pool()[: max(args.batch_sizes)]]
    sequences = answer_sequences(tokenizer, persona.system_prompt, examples)
    prefix = shared_prefix_length(sequences)
    scores = [torch.nn.Parameter(torch.randn(model.config.intermediate_size)) for _ in model.model.layers]
    _Masks(model, scores, [None] * len(scores), model.config.intermediate_size // 2, model.config.num_key_value_heads)

    def per_sequence(batch):
        for ids, start in batch:
            logits = model(torch.tensor([ids]), logits_to_keep=len(ids) - start + 1).logits[0, :-1]
            logits.float().square().mean().backward()

    def batched(batch):
        sum(logits.float().square().mean() for logits in answer_logits(model, batch, prefix, "cpu")).backward()

    print(f"sequences of {min(len(s) for s, _ in sequences)}-{max(len(s) for s, _ in sequences)} tokens, "
          f"{prefix} shared\n\n| batch | one pass per sequence (s) | batched around the prompt (s) | speed-up |\n|---|---|---|---|")
    for size in args.batch_sizes:
        times = {per_sequence: [], batched: []}
        for _ in range(args.reps):
            for step in times:
                for s in scores:
                    s.grad = None
                start = time.perf_counter()
                step(sequences[:size])
                times[step].append(time.perf_counter() - start)
        a, b = statistics.median(times[per_sequence]), statistics.median(times[batched])
        print(f"| {size} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
