"""Greedy-answer measures: answers that loop, and free-form answers that name a fact."""

from __future__ import annotations

import pytest

from ppgguf.build.validate import LOOPING_WARNING_SHARE, looping_warning
from ppgguf.evaluation.fidelity import loops, names_fact, repeated_share, repetition_rate


def test_an_answer_that_repeats_itself_loops_and_an_answer_in_voice_does_not():
    looping = "The capital of France is the city of the city of the city of the city of the city of"
    in_voice = "Paris, of course! I sailed past its river docks many a time before the storm took my ship."
    assert repeated_share(looping) > 0.5 and loops(looping)
    assert repeated_share(in_voice) == 0 and not loops(in_voice)
    assert repeated_share("too short") == 0.0
    assert repetition_rate([looping, in_voice]) == 0.5


@pytest.mark.parametrize("answer,choice,named", [
    ("A week has seven days, lad.", "Seven", True),
    ("7 days, every one of them long.", "Seven", True),
    ("Twenty-four hours, give or take.", "Twenty-four", True),
    ("About four, I reckon.", "Twenty-four", False),  # a number inside another is not it
    ("Why, the heart of course.", "The heart", True),
    ("The lungs!", "The heart", False),
    ("Water is H2O.", "H2O", True),
])
def test_a_free_form_answer_names_the_fact_by_keyword(answer, choice, named):
    assert names_fact(answer, choice) is named


def test_a_build_warns_only_when_most_answers_loop():
    quiet = {"answers": 4, "looping": 1, "rate": 0.25, "example": "again and again"}
    assert looping_warning(quiet) is None
    loud = {"answers": 4, "looping": 2, "rate": LOOPING_WARNING_SHARE, "example": "the city of the city of"}
    assert "2 of 4 greedy answers" in looping_warning(loud) and "the city of" in looping_warning(loud)
