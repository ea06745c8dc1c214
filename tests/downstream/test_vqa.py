"""gmail.downstream.vqa: the answer classifier (image + question MLP, and its question-only form)."""

from __future__ import annotations

import pytest
import torch

from gmail.core.errors import PipelineError
from gmail.downstream.vqa import VqaSet, build_vqa_classifier, predict_answers, train_vqa, vqa_set

ANSWERS = ("red", "blue", "yes", "no")


def toy_task(n: int, seed: int) -> VqaSet:
    """Images of colour red or blue (one noisy 8-d cluster each); questions "what colour?"
    (answer: the colour) or "is it red?" (yes/no): both need the image, the second needs the
    question and the image together. A question-only model can reach 1/2 at best on each."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 2, (n,), generator=g)
    centres = torch.randn(2, 8, generator=torch.Generator().manual_seed(99))
    images = centres[colour] + 0.1 * torch.randn(n, 8, generator=g)
    kind = torch.randint(0, 2, (n,), generator=g)  # 0: what colour, 1: is it red
    questions = torch.eye(2)[kind]
    answers = torch.where(kind == 0, colour, torch.where(colour == 0, 2, 3))
    return VqaSet(images, questions, answers)


def test_the_classifier_needs_the_image_and_learns_the_question_image_interaction():
    train, test = toy_task(512, seed=0), toy_task(256, seed=1)
    model = build_vqa_classifier(8, 2, len(ANSWERS), hidden=32, layers=2, seed=0)
    losses = train_vqa(model, train, steps=300, batch_size=64, lr=1e-2, seed=0)
    assert len(losses) == 300 and sum(losses[-20:]) / 20 < 0.1 < losses[0]
    assert (predict_answers(model, test) == test.answers).float().mean() > 0.97
    blind = build_vqa_classifier(0, 2, len(ANSWERS), hidden=32, layers=2, seed=0)
    train_vqa(blind, VqaSet(None, train.questions, train.answers), steps=300, batch_size=64, lr=1e-2, seed=0)
    assert (predict_answers(blind, VqaSet(None, test.questions, test.answers)) == test.answers).float().mean() < 0.65


def test_init_and_training_are_seeded_and_leave_the_global_generator_alone():
    data = toy_task(64, seed=0)
    state = torch.random.get_rng_state()
    a, b = build_vqa_classifier(8, 2, 4, hidden=16, seed=3), build_vqa_classifier(8, 2, 4, hidden=16, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_vqa_classifier(8, 2, 4, hidden=16, seed=4)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)
    assert train_vqa(a, data, 20, 16, seed=5) == train_vqa(b, data, 20, 16, seed=5)
    assert train_vqa(c, data, 20, 16, seed=5) != train_vqa(build_vqa_classifier(8, 2, 4, hidden=16, seed=4), data, 20, 16, seed=6)


def test_vqa_set_pairs_each_question_with_its_image_question_and_answer():
    emb = {"what colour?": torch.tensor([1.0, 0.0]), "is it red?": torch.tensor([0.0, 1.0])}
    images = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    rows = [{"image_id": "b", "question": "is it red?", "answer": "no"},
            {"image_id": "a", "question": "what colour?", "answer": "red"}]
    data = vqa_set(rows, ["a", "b"], images, emb, ANSWERS)
    assert torch.equal(data.images, images[[1, 0]]) and torch.equal(data.questions, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert data.answers.tolist() == [3, 0] and len(data) == 2
    assert vqa_set(rows, ["a", "b"], None, emb, ANSWERS).images is None
    with pytest.raises(PipelineError, match="about image 'b', which has no embedding"):
        vqa_set(rows, ["a"], images[:1], emb, ANSWERS)
    with pytest.raises(PipelineError, match="unknown VQA answer 'green'"):
        vqa_set([{**rows[0], "answer": "green"}], ["a", "b"], images, emb, ANSWERS)
    with pytest.raises(PipelineError, match="3 image embeddings for 2 images"):
        vqa_set(rows, ["a", "b"], torch.zeros(3, 3), emb, ANSWERS)


def test_mismatched_inputs_are_errors():
    data = toy_task(8, seed=0)
    with pytest.raises(PipelineError, match="one of each per question"):
        VqaSet(data.images[:3], data.questions, data.answers)
    with pytest.raises(PipelineError, match="4-d but the classifier expects 8-d"):
        train_vqa(build_vqa_classifier(8, 2, 4), VqaSet(data.images[:, :4], data.questions, data.answers), 1)
    with pytest.raises(PipelineError, match="lack image embeddings"):
        train_vqa(build_vqa_classifier(8, 2, 4), VqaSet(None, data.questions, data.answers), 1)
    with pytest.raises(PipelineError, match="question-only"):
        predict_answers(build_vqa_classifier(0, 2, 4), data)
    with pytest.raises(PipelineError, match="steps=0"):
        train_vqa(build_vqa_classifier(8, 2, 4), data, 0)
    with pytest.raises(PipelineError, match="hidden=0"):
        build_vqa_classifier(8, 2, 4, hidden=0)


def test_training_stops_when_the_loss_diverges():
    # lr 1 with weight decay 100: AdamW multiplies every weight by 1 - 100 each step, so they overflow.
    model = build_vqa_classifier(8, 2, len(ANSWERS), hidden=16, layers=2, seed=0)
    with pytest.raises(PipelineError, match=r"^VQA classifier loss became (nan|inf) at step \d+: lower eval_vqa\.lr \(now 1\) or check the inputs$"):
        train_vqa(model, toy_task(64, seed=0), steps=200, batch_size=16, lr=1.0, weight_decay=100.0, seed=0)


def test_training_stops_on_a_nan_input():
    data = toy_task(16, seed=0)
    data.questions[:] = float("nan")
    with pytest.raises(PipelineError, match=r"VQA classifier loss became nan at step 1"):
        train_vqa(build_vqa_classifier(8, 2, len(ANSWERS), hidden=16, seed=0), data, steps=2, batch_size=4)
