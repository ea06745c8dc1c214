"""gmail.eval.multiple_choice: ScienceQA / MMMU prompts and answer extraction by the benchmarks' own
rules, and easy-vqa exact match."""

from __future__ import annotations

import random

import pytest

from gmail.core.errors import PipelineError
from gmail.eval.multiple_choice import (
    FAILED,
    mmmu_open_correct,
    mmmu_prompt,
    normalise_answer,
    parse_mmmu_choice,
    parse_mmmu_open,
    parse_scienceqa,
    scienceqa_prompt,
    score_mmmu,
    score_scienceqa,
    short_answer_accuracy,
)

# --------------------------------------------------------------------------- ScienceQA


def test_scienceqa_prompt_letters_the_options_and_ends_with_the_instruction():
    prompt = scienceqa_prompt("Which is a mammal?", ["frog", "whale", "trout"], hint="Look at the picture.")
    assert prompt == ("Context: Look at the picture.\nWhich is a mammal?\nA. frog\nB. whale\nC. trout\n"
                      "Answer with the option's letter from the given choices directly.")
    assert scienceqa_prompt("Q?", ["x", "y"]).startswith("Q?\nA. x\nB. y\n")  # no hint, no context line


@pytest.mark.parametrize("response,expected", [
    ("B", 1),                         # a bare letter
    ("B.", 1),                        # "X." prefix (lmms-eval's rule)
    ("B. whale", 1),                  # "X. " followed by the option text (LLaVA's rule)
    ("  C  ", 2),                     # stripped, as LLaVA strips its outputs
    ("The answer is B.", 1),          # LLaVA's pattern, exactly one match
    ("I think so. The answer is A!", 0),  # the pattern's "." matches any character
    ("The answer is A. The answer is B.", FAILED),  # two matches: FAILED, as LLaVA
    ("whale", FAILED),                # no letter at all: FAILED, no random fallback
    ("b", FAILED),                    # lower case is not a letter option
    ("D", FAILED),                    # beyond this question's three options
    ("The answer is Z.", FAILED),
    ("", FAILED),
    ("AB", FAILED),                   # not an option, not "X." either
])
def test_parse_scienceqa_follows_llavas_rules(response, expected):
    assert parse_scienceqa(response, 3) == expected


def test_score_scienceqa_counts_failed_as_wrong():
    questions = [{"choices": ["a", "b"], "answer": 1}, {"choices": ["a", "b", "c"], "answer": 0},
                 {"choices": ["a", "b"], "answer": 0}, {"choices": ["a", "b"], "answer": 1}]
    s = score_scienceqa(["B", "The answer is A.", "no idea", "A."], questions)
    assert s == {"accuracy": 50.0, "count": 4, "failed": 1}
    with pytest.raises(PipelineError, match="2 responses for 4 ScienceQA questions"):
        score_scienceqa(["A", "B"], questions)


# --------------------------------------------------------------------------- MMMU

CHOICES = ["A", "B", "C", "D"]
INDEX2ANS = {"A": "12 kg", "B": "the mitochondria", "C": "blue", "D": "none of these"}


def test_mmmu_prompt_matches_the_llava15_config():
    assert mmmu_prompt("What is shown in <image 1>?", ["cat", "dog"], "multiple-choice") == (
        "What is shown in <image 1>?\n(A) cat\n(B) dog\n\nAnswer with the option's letter from the given choices directly.")
    assert mmmu_prompt("How many?", [], "open") == "How many?\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("response,expected", [
    ("B", "B"),                                        # a bare letter
    ("B.", "B"),                                       # trailing punctuation stripped
    ("(C)", "C"),                                      # bracketed
    ("The answer is (A), not (D).", "D"),              # several bracketed: the last one mentioned
    ("I would say A or maybe C", "C"),                 # several bare letters: the last one
    ("(B) but also consider A", "B"),                  # brackets win over bare letters
    ("It happens inside the mitochondria of every cell", "B"),  # > 5 words: option text
    ("The colour is blue and the mass is 12 kg here", "A"),     # several texts: the last one
])
def test_parse_mmmu_choice_follows_mmmus_rules(response, expected):
    assert parse_mmmu_choice(response, CHOICES, INDEX2ANS, random.Random(0)) == expected


def test_parse_mmmu_choice_falls_back_to_a_seeded_random_letter():
    # No letter and too short for text matching: a random letter from the caller's generator.
    draws = [parse_mmmu_choice("no idea", CHOICES, INDEX2ANS, random.Random(42)) for _ in range(3)]
    assert draws == [random.Random(42).choice(CHOICES)] * 3
    rng, ref = random.Random(7), random.Random(7)
    assert [parse_mmmu_choice("blue", CHOICES, INDEX2ANS, rng) for _ in range(20)] == [ref.choice(CHOICES) for _ in range(20)]
    # 'blue' alone is 1 word, so the option text is NOT matched (MMMU needs > 5 words).


def test_parse_mmmu_open_extracts_key_tails_and_numbers():
    preds = parse_mmmu_open("The total mass is 1,250 kg")
    assert 1250.0 in preds and "1,250 kg" in preds
    assert parse_mmmu_open("3.14159") == [3.14]
    assert parse_mmmu_open("so x = 7") == [7.0]  # the last sentence may end in "= <answer>"; numbers become floats
    assert parse_mmmu_open("Paris") == ["paris"]


def test_mmmu_open_correct_compares_numbers_and_contains_strings():
    assert mmmu_open_correct("1250", parse_mmmu_open("so the answer is 1,250"))
    assert mmmu_open_correct(["Paris", "paris, france"], parse_mmmu_open("I believe it is Paris"))
    assert not mmmu_open_correct("12", parse_mmmu_open("the answer is 13"))
    assert not mmmu_open_correct("a", parse_mmmu_open("banana"))  # one letter must stand alone


def test_score_mmmu_uses_one_seeded_generator_in_question_order():
    qs = [{"question_type": "multiple-choice", "options": ["x", "y", "z"], "answer": "B"},
          {"question_type": "multiple-choice", "options": ["x", "y"], "answer": "A"},
          {"question_type": "open", "options": [], "answer": "42"},
          {"question_type": "multiple-choice", "options": ["p", "q", "r", "s"], "answer": "D"}]
    s = score_mmmu(["(B)", None, "It is 42.", "??"], qs, seed=3)
    rng = random.Random(3)
    second, fourth = rng.choice(["A", "B"]), rng.choice(["A", "B", "C", "D"])
    expected = 100.0 * (1 + (second == "A") + 1 + (fourth == "D")) / 4
    assert s == {"accuracy": pytest.approx(expected), "count": 4, "fallback": 1}
    assert score_mmmu(["(B)", None, "It is 42.", "??"], qs, seed=3) == s  # same seed, same draws
    assert score_mmmu(["(B)", "A", None, "D"], qs)["accuracy"] == 75.0   # None on an open question is wrong


# --------------------------------------------------------------------------- easy-vqa short answers


def test_normalise_answer_drops_case_punctuation_and_spaces():
    assert normalise_answer("  The  Circle. ") == "the circle"
    assert normalise_answer("Yes!") == "yes" and normalise_answer("") == ""


def test_short_answer_accuracy_per_type():
    answers = ["red", "circle", "yes", "no"]
    types = ["colour", "shape", "yes_no", "yes_no"]
    s = short_answer_accuracy(["Red.", "square", "YES", "yes"], answers, types)
    assert s == {"overall": 50.0, "colour": 100.0, "shape": 0.0, "yes_no": 50.0}
    assert short_answer_accuracy(["no"], ["no"], ["yes_no"])["colour"] is None
    with pytest.raises(PipelineError, match="one prediction and one type per question"):
        short_answer_accuracy(["a"], ["a", "b"], ["colour", "colour"])
