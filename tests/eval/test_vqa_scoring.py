"""gmail.eval.vqa: accuracy per question type, the majority answer, mean and std over seeds."""

from __future__ import annotations

import pytest

from gmail.core.errors import PipelineError
from gmail.eval.vqa import majority_answer, vqa_accuracy


def test_accuracy_is_percent_overall_and_per_type():
    answers = ["red", "blue", "circle", "yes", "no"]
    types = ["colour", "colour", "shape", "yes_no", "yes_no"]
    acc = vqa_accuracy(["red", "red", "circle", "no", "no"], answers, types)
    assert acc == {"overall": pytest.approx(60.0), "colour": pytest.approx(50.0), "shape": pytest.approx(100.0),
                   "yes_no": pytest.approx(50.0)}
    assert vqa_accuracy(answers, answers, types)["overall"] == 100.0


def test_a_type_without_questions_is_none_not_zero():
    acc = vqa_accuracy(["yes", "yes"], ["yes", "no"], ["yes_no", "yes_no"])
    assert acc["colour"] is None and acc["shape"] is None and acc["yes_no"] == 50.0


@pytest.mark.parametrize("predicted,types", [(["yes"], ["yes_no", "yes_no"]), (["yes", "no"], ["yes_no"])])
def test_mismatched_lengths_are_errors(predicted, types):
    with pytest.raises(PipelineError, match="one prediction and one type per question"):
        vqa_accuracy(predicted, ["yes", "no"], types)


def test_majority_answer_is_the_most_frequent_with_stable_ties():
    assert majority_answer(["no", "yes", "yes", "red"]) == "yes"
    assert majority_answer(["yes", "no", "no", "yes"]) == "no"  # tie: alphabetical
    with pytest.raises(PipelineError):
        majority_answer([])
