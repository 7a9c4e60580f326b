"""Is mask learning (bf16 on a GPU) and healing reproducible run to run? With and without deterministic kernels.

Builds a randomly initialised model of SmolLM2-135M's shape (on a CPU: a tiny one) and 32 random
persona-shaped sequences (a shared 190-token prefix, a question, an answer), then runs the persona
scorer twice and healing twice with the same seed and compares the results bit for bit; then the
same with ppgguf's deterministic_kernels() switched off. Needs no model files:

    python benchmarks/gpu_determinism.py
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ppgguf.pruning import heal as heal_module
from ppgguf.pruning.importance import SCORERS, ScoringInputs
from ppgguf.pruning.importance import persona as persona_scorer
from ppgguf.pruning.plan import make_plan
from ppgguf.pruning.surgery import apply_plan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, vocab_size=49152) if DEVICE == "cuda" else dict(
             hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000)


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=2048)
    model = LlamaForCausalLM(config).to(DEVICE).eval()
    generator = torch.Generator().manual_seed(1)

    def tokens(n):
        return torch.randint(0, config.vocab_size, (n,), generator=generator).tolist()

    prefix = tokens(190)
    sequences = []
    for i in range(32):
        question, answer = tokens(10 + i % 7), tokens(60 + i % 11)
        sequences.append((prefix + question + answer, len(prefix) + len(question)))

    def learn_masks():
        inputs = ScoringInputs(model=model, ffn_sparsity=0.5, seed=0, device=DEVICE, persona_sequences=sequences,
                               settings={"steps": 8, "batch_size": 8, "lr": 0.05, "loss": "kl"})
        return SCORERS["persona"](inputs), inputs.dense_answer_logprobs

    def healed_weights(importance, teacher):
        pruned = apply_plan(copy.deepcopy(model), make_plan(importance, 0.5, 0.0, True))
        heal_module.heal(pruned, sequences, teacher, 8, 8, 1e-4, 0, DEVICE)
        return pruned.state_dict()

    def trial(label):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (first, teacher), (again, _) = learn_masks(), learn_masks()
            a, b = healed_weights(first, teacher), healed_weights(first, teacher)
        same_scores = all(torch.equal(x, y) for x, y in zip(first.ffn, again.ffn))
        diff = max((x - y).abs().max().item() for x, y in zip(first.ffn, again.ffn))
        same_weights = all(torch.equal(a[k], b[k]) for k in a)
        notes = sorted({str(w.message)[:120] for w in caught})
        print(f"{label}: mask scores identical {same_scores} (largest difference {diff:.3g}), "
              f"healed weights identical {same_weights}; warnings: {notes}")

    trial("deterministic kernels (as shipped)")
    persona_scorer.deterministic_kernels = heal_module.deterministic_kernels = contextlib.nullcontext
    trial("without deterministic kernels")
    print(f"device {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
