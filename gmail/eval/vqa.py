"""VQA scoring: answer accuracy overall and per question type (x100, as the paper's T10 prints
ScienceQA accuracy), the majority-answer baseline, and mean and std over seeds."""

from __future__ import annotations

from collections import Counter

import numpy as np

from gmail.core.errors import PipelineError

# Question types, told apart by the answer (gmail.data.easy_vqa_questions.question_type).
QUESTION_TYPES = ("colour", "shape", "yes_no")
KEYS = ("overall",) + QUESTION_TYPES


def vqa_accuracy(predicted: list[str], answers: list[str], types: list[str]) -> dict[str, float | None]:
    """{"overall", "colour", "shape", "yes_no"}: percent of questions answered exactly right,
    over all questions and over those of each type (None for a type with no question)."""
    if not answers or len(predicted) != len(answers) or len(types) != len(answers):
        raise PipelineError(f"{len(predicted)} predicted answers and {len(types)} question types for {len(answers)} "
                            "questions: give one prediction and one type per question")
    right = np.array([p == a for p, a in zip(predicted, answers)])
    kinds = np.array(types)
    out = {"overall": 100.0 * float(right.mean())}
    for kind in QUESTION_TYPES:
        mask = kinds == kind
        out[kind] = 100.0 * float(right[mask].mean()) if mask.any() else None
    return out


def majority_answer(answers: list[str]) -> str:
    """The most frequent training answer (ties broken alphabetically, so the choice is stable)."""
    if not answers:
        raise PipelineError("no training answers to take the majority of: the training split has no questions")
    counts = Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))
