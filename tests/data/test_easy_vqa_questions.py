"""gmail.data.easy_vqa_questions: easy-vqa's questions about a split's images, typed and validated."""

from __future__ import annotations

from collections import Counter

import pytest

from gmail.core.errors import PipelineError
from gmail.data.easy_vqa_captions import COLOURS, SHAPES
from gmail.data.easy_vqa_questions import (
    ANSWERS,
    QUESTION_TYPES,
    easy_vqa_questions,
    load_split_questions,
    question_type,
    validate_questions,
)

RECORDS = [{"image_id": "test-00002"}, {"image_id": "test-00000"}]


def row(image_id="test-00000", question="what color is the circle?", answer="red"):
    return {"image_id": image_id, "question": question, "answer": answer}


def test_answers_and_types_cover_easy_vqa():
    import easy_vqa

    assert sorted(ANSWERS) == sorted(easy_vqa.get_answers()) and len(ANSWERS) == 13
    assert {question_type(a) for a in COLOURS} == {"colour"} and {question_type(a) for a in SHAPES} == {"shape"}
    assert question_type("yes") == question_type("no") == "yes_no"
    assert {question_type(a) for a in ANSWERS} == set(QUESTION_TYPES)
    with pytest.raises(PipelineError, match="unknown VQA answer 'purple'"):
        question_type("purple")


def test_validate_orders_by_records_keeps_each_images_order_and_adds_types():
    rows = [row("test-00000", "is there a circle?", "yes"), row("test-00002", "what shape is it?", "triangle"),
            row("test-00000", "what color is the circle?", "red")]
    out = validate_questions(rows, RECORDS, "T")
    assert [(q["image_id"], q["question"]) for q in out] == [
        ("test-00002", "what shape is it?"), ("test-00000", "is there a circle?"), ("test-00000", "what color is the circle?")]
    assert [q["type"] for q in out] == ["shape", "yes_no", "colour"]


@pytest.mark.parametrize("bad,message", [
    (row(image_id="test-00999"), "about image 'test-00999', which is not in split T"),
    (row(question="  "), "image 'test-00000' of split T has an empty VQA question"),
    (row(question=None), "empty VQA question"),
    (row(answer="purple"), "has an unknown answer 'purple'"),
])
def test_validate_rejects_stray_images_empty_questions_and_unknown_answers(bad, message):
    with pytest.raises(PipelineError, match=message) as exc:
        validate_questions([row(), bad], RECORDS, "T")
    assert "\n" not in str(exc.value) and ": " in str(exc.value)


def test_validate_rejects_a_split_without_questions():
    with pytest.raises(PipelineError, match="split B has no VQA questions"):
        validate_questions([], RECORDS, "B")


def test_questions_come_from_the_package_split_the_image_id_names():
    import easy_vqa

    records = [{"image_id": "train-00000"}, {"image_id": "test-00001"}]
    rows = easy_vqa_questions(records, "mixed")
    expected = {}
    for split, (texts, answers, ids) in (("train", easy_vqa.get_train_questions()), ("test", easy_vqa.get_test_questions())):
        expected[split] = [(q, a) for q, a, i in zip(texts, answers, ids) if i == {"train": 0, "test": 1}[split]]
    assert expected["train"] and expected["test"]
    assert [(r["question"], r["answer"]) for r in rows if r["image_id"] == "train-00000"] == expected["train"]
    assert [(r["question"], r["answer"]) for r in rows if r["image_id"] == "test-00001"] == expected["test"]
    assert {r["image_id"] for r in rows} == {"train-00000", "test-00001"}
    # easy-vqa's very first train question is about image 0, a blue rectangle.
    assert ("what is the blue shape?", "rectangle") in expected["train"]


def test_all_of_easy_vqas_test_questions_have_the_documented_shape():
    import easy_vqa

    records = [{"image_id": f"test-{i:05d}"} for i in sorted(easy_vqa.get_test_image_paths())]
    rows = load_split_questions(records, "T")
    answers = Counter(r["answer"] for r in rows)
    assert len(rows) == 9673 and len(records) == 1000
    assert answers.most_common(1)[0][0] == "yes" and answers["yes"] / len(rows) == pytest.approx(0.373, abs=5e-4)
    assert set(Counter(r["type"] for r in rows)) == set(QUESTION_TYPES)


def test_images_from_elsewhere_have_no_easy_vqa_questions():
    with pytest.raises(PipelineError, match="'coco-123' of split T is not an easy-vqa image"):
        easy_vqa_questions([{"image_id": "test-00000"}, {"image_id": "coco-123"}], "T")
