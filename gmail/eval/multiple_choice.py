"""Answer extraction and scoring for generated answers: ScienceQA (paper T10), MMMU (T15) and
easy-vqa's short answers (mini scale).

The rules are those of the benchmarks' own scripts, rewritten here (lmms-eval's `scienceqa_img`
and `mmmu_val` tasks load hub datasets, which cannot work offline):

- **ScienceQA** (LLaVA's `llava/eval/eval_science_qa.py`, prompt as lmms-eval's `scienceqa_img`
  and LLaVA-1.5's CQM-A files): options are lettered A, B, ...; the prompt ends with "Answer with
  the option's letter from the given choices directly.". A response counts as letter X when it
  is exactly "X", starts with "X." (lmms-eval's rule; LLaVA's script wants "X. " followed by
  text, which would fail a bare "X."), or contains "The answer is X." exactly once (LLaVA's
  regex, whose "." matches any character). Anything else, or a letter beyond the question's
  options, is FAILED and counts as wrong: no random fallback.
- **MMMU** (`mmmu/utils/eval_utils.py`, prompt from `mmmu/configs/llava1.5.yaml`): a multiple
  choice response is parsed by `parse_mmmu_choice` (options in brackets, then bare letters,
  then, for responses over 5 words, option texts; the last one mentioned wins; nothing found
  -> a random letter). MMMU draws that letter from Python's global `random` seeded 42 once;
  here it comes from a `random.Random(seed)` the caller passes, so the draws depend only on the
  seed and the order of the questions. Open questions are parsed and judged by
  `parse_mmmu_open` / `mmmu_open_correct` (numbers compared after rounding to 2 decimals,
  strings by containment).
- **easy-vqa**: exact match after `normalise_answer` (lower case, punctuation dropped,
  whitespace collapsed).
"""

from __future__ import annotations

import random
import re
import string

import numpy as np

from gmail.core.errors import PipelineError
from gmail.eval.vqa import vqa_accuracy

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
FAILED = -1
_SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")  # LLaVA's eval_science_qa.py --options default
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # LLaVA's pattern, unescaped "." included
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def letters(n: int) -> list[str]:
    """The first `n` option letters, A, B, C, ..."""
    if not 0 < n <= 26:
        raise PipelineError(f"a question with {n} options cannot be lettered A-Z: drop it")
    return [chr(ord("A") + i) for i in range(n)]


# --------------------------------------------------------------------------- ScienceQA


def scienceqa_prompt(question: str, choices: list[str], hint: str = "") -> str:
    """LLaVA-1.5 / lmms-eval prompt: optional "Context: <hint>", the question, lettered options,
    then the letter instruction."""
    context = f"Context: {hint.strip()}\n" if hint and hint.strip() else ""
    options = "\n".join(f"{L}. {c}" for L, c in zip(letters(len(choices)), choices))
    return f"{context}{question.strip()}\n{options}\n{LETTER_INSTRUCTION}"


def parse_scienceqa(response: str, n_choices: int) -> int:
    """Index of the option a response names, or FAILED (-1); see the module docstring."""
    text = response.strip()
    if text in _SCIENCEQA_OPTIONS:
        letter = text
    elif len(text) >= 2 and text[0] in _SCIENCEQA_OPTIONS and text[1] == ".":
        letter = text[0]
    else:
        found = _THE_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    if not letter or letter not in _SCIENCEQA_OPTIONS[:n_choices]:
        return FAILED
    return _SCIENCEQA_OPTIONS.index(letter)


def score_scienceqa(responses: list[str], questions: list[dict]) -> dict:
    """{"accuracy" (x100), "count", "failed"} of responses to ScienceQA `questions` (rows with
    `choices` and the correct index `answer`, as `gmail.data.mc_benchmarks.read_scienceqa` returns)."""
    if len(responses) != len(questions) or not questions:
        raise PipelineError(f"{len(responses)} responses for {len(questions)} ScienceQA questions: answer each once")
    parsed = [parse_scienceqa(r, len(q["choices"])) for r, q in zip(responses, questions)]
    right = [p == q["answer"] for p, q in zip(parsed, questions)]
    return {"accuracy": 100.0 * float(np.mean(right)), "count": len(questions),
            "failed": sum(p == FAILED for p in parsed)}


# --------------------------------------------------------------------------- MMMU


def mmmu_prompt(question: str, options: list[str], question_type: str) -> str:
    """MMMU's LLaVA-1.5 prompt: the question, "(A) option" lines and the letter instruction for
    multiple choice; the question and the short-answer instruction for open questions."""
    if question_type == "multiple-choice":
        lines = "".join(f"({L}) {o}\n" for L, o in zip(letters(len(options)), options))
        return f"{question}\n{lines}\n{LETTER_INSTRUCTION}"
    return f"{question}\n{SHORT_INSTRUCTION}"


def parse_mmmu_choice(response: str, choices: list[str], index2ans: dict[str, str], rng: random.Random) -> str:
    """The option letter a multiple-choice response names, by MMMU's rules (module docstring)."""
    for char in ",.!?;:'":
        response = response.strip(char)
    response = f" {response} "  # spaces so " A " also matches at either end
    candidates = [c for c in choices if f"({c})" in response]
    bracketed, by_text = bool(candidates), False
    if not candidates:
        candidates = [c for c in choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c in choices if index2ans[c].lower() in response.lower()]
        by_text = bool(candidates)
    if not candidates:
        return rng.choice(choices)
    if len(candidates) == 1:
        return candidates[0]

    # Several: the one mentioned last wins.
    def last(c):
        if by_text:
            return response.lower().rfind(index2ans[c].lower())
        return response.rfind(f"({c})" if bracketed else f" {c} ")

    return candidates[int(np.argmax([last(c) for c in candidates]))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def _normalise_mmmu(text: str) -> list:
    """MMMU's normal forms: a number rounded to 2 decimals, else lower-cased text (a single
    character padded on one side so it cannot match inside a word)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),                  # 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),               # 1.5e-3
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # 12, 3.5, .5
)
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def _key_subresponses(response: str) -> list[str]:
    """The tails of the response after answer indicators ("is ", "therefore " ...): per sentence,
    the shortest tail; the last sentence may also end in "= <answer>"."""
    response = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for n, sentence in enumerate(sentences):
        indicators = _KEY_INDICATORS + (("=",) if n == len(sentences) - 1 else ())
        tails = [sentence.split(ind)[-1].strip() for ind in indicators if ind in sentence]
        shortest = min(tails, key=len) if tails else None
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_mmmu_open(response: str) -> list:
    """Candidate answers of an open response: key tails and every number in them, normalised."""
    keys = _key_subresponses(response)
    found = list(keys)
    for key in keys:
        for pattern in _NUMBER_PATTERNS:
            found.extend(pattern.findall(key))
    out = []
    for item in found:
        for norm in _normalise_mmmu(item):
            if norm not in out:
                out.append(norm)
    return out


def mmmu_open_correct(gold: str | list[str], predictions: list) -> bool:
    """MMMU's open-question judgement: a predicted number equal to a gold number, or a predicted
    string that contains a gold string."""
    golds = [g for answer in (gold if isinstance(gold, list) else [gold]) for g in _normalise_mmmu(answer)]
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


def score_mmmu(responses: list[str | None], questions: list[dict], seed: int = 42) -> dict:
    """{"accuracy" (x100), "count", "fallback"} of responses to MMMU `questions` (rows as
    `gmail.data.mc_benchmarks.read_mmmu` returns). A response of None (a question whose options
    are images: no single image to show, as in MMMU's own LLaVA runner) gets a random letter for
    multiple choice and counts as wrong for open questions. Random letters come from one
    `random.Random(seed)`, drawn in question order."""
    if len(responses) != len(questions) or not questions:
        raise PipelineError(f"{len(responses)} responses for {len(questions)} MMMU questions: answer each once")
    rng = random.Random(seed)
    right, fallback = [], 0
    for response, q in zip(responses, questions):
        if q["question_type"] == "multiple-choice":
            choices = letters(len(q["options"]))
            index2ans = dict(zip(choices, q["options"]))
            if response is None:
                pred, fallback = rng.choice(choices), fallback + 1
            else:
                pred = parse_mmmu_choice(response, choices, index2ans, rng)
            gold = q["answer"] if isinstance(q["answer"], list) else [q["answer"]]
            right.append(pred in gold)
        else:
            right.append(response is not None and mmmu_open_correct(q["answer"], parse_mmmu_open(response)))
    return {"accuracy": 100.0 * float(np.mean(right)), "count": len(questions), "fallback": fallback}


# --------------------------------------------------------------------------- short answers (easy-vqa)


def normalise_answer(text: str) -> str:
    """Lower case, punctuation replaced by spaces, whitespace collapsed: "The Circle." -> "the circle"."""
    return " ".join(text.lower().translate(_PUNCT).split())


def short_answer_accuracy(predictions: list[str], answers: list[str], types: list[str]) -> dict[str, float | None]:
    """{"overall", <type>...}: `gmail.eval.vqa.vqa_accuracy` (percent of exact matches, over all
    questions and per question type) after `normalise_answer` on both sides."""
    return vqa_accuracy([normalise_answer(p) for p in predictions], [normalise_answer(a) for a in answers], types)
