"""Mini-scale VQA questions: easy-vqa's own (question, answer) pairs about the images of a split.

easy-vqa ships 38,575 train and 9,673 test questions over 13 answers (8 colours, 3 shapes,
yes, no). A split's records name their images `train-XXXXX` / `test-XXXXX`, the integer being
easy-vqa's image id (`gmail.data.easy_vqa_captions.build_easy_vqa_records`), so B's questions
are easy-vqa's train questions about B's images and T's are its test questions about T's.
A question's type follows from its answer: `colour`, `shape` or `yes_no`.
"""

from __future__ import annotations

import re

from gmail.core.errors import PipelineError
from gmail.data.easy_vqa_captions import COLOURS, SHAPES
from gmail.eval.vqa import QUESTION_TYPES  # noqa: F401 (re-exported: the types question_type returns)

YES_NO = ("yes", "no")
ANSWERS = COLOURS + SHAPES + YES_NO  # fixed order: the answer classifier's output index
_ID = re.compile(r"^(train|test)-(\d+)$")


def question_type(answer: str) -> str:
    """`colour`, `shape` or `yes_no`, from the answer; an answer outside ANSWERS is a PipelineError."""
    if answer in COLOURS:
        return "colour"
    if answer in SHAPES:
        return "shape"
    if answer in YES_NO:
        return "yes_no"
    raise PipelineError(f"unknown VQA answer {answer!r}: answers must be one of {', '.join(ANSWERS)}")


def validate_questions(rows: list[dict], records: list[dict], split: str) -> list[dict]:
    """Question rows `{"image_id", "question", "answer"}` about the images of `records`, checked,
    each with its `type` added, in the records' order (an image's questions in their given order).

    A question about an image that is not in the split, an empty question or an answer outside
    ANSWERS is a PipelineError naming it; so is a split left without any question. `split` (B,
    T...) names the split in messages.
    """
    position = {r["image_id"]: i for i, r in enumerate(records)}
    out = []
    for row in rows:
        image_id, question, answer = row.get("image_id"), row.get("question"), row.get("answer")
        if image_id not in position:
            raise PipelineError(f"VQA question {question!r} is about image {image_id!r}, which is not in split {split}: "
                                f"give only questions about {split}'s images")
        if not isinstance(question, str) or not question.strip():
            raise PipelineError(f"image {image_id!r} of split {split} has an empty VQA question: remove it or fill it in")
        try:
            kind = question_type(answer)
        except PipelineError as exc:
            raise PipelineError(f"VQA question {question!r} about image {image_id!r} has an unknown answer {answer!r}: "
                                f"use one of {', '.join(ANSWERS)}") from exc
        out.append({"image_id": image_id, "question": question, "answer": answer, "type": kind})
    if not out:
        raise PipelineError(f"split {split} has no VQA questions: check that its images come from easy-vqa")
    return sorted(out, key=lambda row: position[row["image_id"]])  # stable: keeps each image's order


def easy_vqa_questions(records: list[dict], split: str) -> list[dict]:
    """easy-vqa's questions about the images of `records`, as unchecked rows
    `{"image_id", "question", "answer"}` (pass them through `validate_questions`).

    Train-split images (`train-XXXXX`) get easy-vqa's train questions, test-split images its
    test questions. An image id of another form (a paper-scale split, say) is a PipelineError:
    easy-vqa has questions only about its own images.
    """
    try:
        import easy_vqa
    except ImportError as exc:
        raise PipelineError("package easy-vqa is not installed: run `make repro` or pip install -r requirements.txt") from exc
    if set(easy_vqa.get_answers()) != set(ANSWERS):
        raise PipelineError(f"easy-vqa's answers {sorted(easy_vqa.get_answers())} are not the 13 expected: "
                            "install easy-vqa==1.0 (pip install -r requirements.txt)")
    wanted = set()
    for rec in records:
        if not _ID.match(rec["image_id"]):
            raise PipelineError(f"image {rec['image_id']!r} of split {split} is not an easy-vqa image (train-XXXXX or "
                                "test-XXXXX): VQA questions exist only for the mini easy-vqa splits (data.source: easy_vqa)")
        wanted.add(rec["image_id"])
    rows = []
    for part, load in (("train", easy_vqa.get_train_questions), ("test", easy_vqa.get_test_questions)):
        if not any(i.startswith(part + "-") for i in wanted):
            continue
        for question, answer, number in zip(*load()):
            image_id = f"{part}-{number:05d}"
            if image_id in wanted:  # easy-vqa's split holds more images than ours (A, B and T are subsets)
                rows.append({"image_id": image_id, "question": question, "answer": answer})
    return rows


def load_split_questions(records: list[dict], split: str) -> list[dict]:
    """easy-vqa's questions about the split's images, validated and typed (`validate_questions`)."""
    return validate_questions(easy_vqa_questions(records, split), records, split)
