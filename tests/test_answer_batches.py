"""Batched forward passes around the shared persona prompt equal one plain forward per sequence."""

from __future__ import annotations

import torch

from ppgguf.calibration.answers import answer_sequences
from ppgguf.calibration.batches import answer_logits, shared_prefix_length, split_by_group

PERSONA = "You are Brannoc, a dwarf smith who speaks in short, gruff sentences about iron and fire."
EXAMPLES = [
    {"question": "Tell me about your forge.", "answer": "Iron and fire, lad. Hammers sing all day."},
    {"question": "What do you eat?", "answer": "Bread."},
    {"question": "Do you like the sea at all, or the ships that sail on it?", "answer": "Salt rusts good iron."},
]


def test_deterministic_kernels_are_switched_on_and_then_restored():
    from ppgguf.calibration.batches import deterministic_kernels

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


def test_shared_prefix_stops_before_the_first_predicting_position():
    sequences = [([1, 2, 3, 4, 5], 4), ([1, 2, 3, 9], 3), ([1, 2, 3, 4, 7, 8], 5)]
    assert shared_prefix_length(sequences) == 2  # the second sequence predicts its answer from position 2
    assert shared_prefix_length([([5, 6], 1), ([7, 6], 1)]) == 0


def test_a_batch_splits_by_group_in_order_of_first_appearance():
    groups = ["card", "short", "", "short", "card"]
    assert split_by_group([4, 1, 2, 3, 0], groups) == [[4, 0], [1, 3], [2]]
    assert split_by_group([4, 1, 2], None) == [[4, 1, 2]]


def test_batched_answer_logits_and_gradients_equal_plain_forwards(tiny, chat_tokenizer):
    model = tiny.fresh()
    sequences = answer_sequences(chat_tokenizer, PERSONA, EXAMPLES)
    prefix = shared_prefix_length(sequences)
    assert prefix > 20  # the persona prompt is shared

    batched = answer_logits(model, sequences, prefix, "cpu")
    sum(logits.float().square().mean() for logits in batched).backward()
    batched_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    for (ids, start), logits in zip(sequences, batched):
        plain = model(torch.tensor([ids])).logits[0, start - 1 : -1]
        assert logits.shape == plain.shape == (len(ids) - start, model.config.vocab_size)
        assert torch.allclose(logits, plain, atol=1e-4)
        plain.float().square().mean().backward()
    for batched_grad, p in zip(batched_grads, model.parameters()):
        assert torch.allclose(batched_grad, p.grad, atol=1e-5, rtol=1e-3)


def test_wanda_norms_counted_through_batches_equal_one_pass_per_whole_sequence(tiny, chat_tokenizer):
    from ppgguf.calibration.batches import answer_distributions
    from ppgguf.pruning.importance import wanda_sp

    model = tiny.fresh()
    sequences = answer_sequences(chat_tokenizer, PERSONA, EXAMPLES)
    plain = wanda_sp.input_norms(model, [ids for ids, _ in sequences], "cpu")
    # batches of 2 and 1: the shared prefix counts once per sequence, the padding of the shorter tail not at all
    with wanda_sp.InputNorms(model) as batched:
        answer_distributions(model, sequences, "cpu", batch_size=2, before_pass=batched.set_weights)
    for got, want in zip(batched.down_sq + batched.o_sq, plain.down_sq + plain.o_sq):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
