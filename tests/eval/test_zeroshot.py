"""gmail.eval.zeroshot: prompt-ensembled attribute prototypes, zero-shot accuracy, caption retrieval R@1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gmail.eval import zeroshot as zs

# --------------------------------------------------------------------------- metrics


def test_attribute_prototypes_average_per_value():
    e = torch.eye(3)
    feats = torch.stack([e[0], e[1], e[0], e[2]])
    classes, protos = zs.attribute_prototypes(feats, ["red", "blue", "red", "blue"])
    assert classes == ["blue", "red"]
    torch.testing.assert_close(protos[1], e[0])
    torch.testing.assert_close(protos[0], (e[1] + e[2]) / math.sqrt(2))
    torch.testing.assert_close(protos.norm(dim=1), torch.ones(2))


def test_zero_shot_accuracy_known_answer():
    classes = ["blue", "red"]
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert zs.zero_shot_accuracy(images, ["blue", "red", "blue", "red"], classes, protos) == 1.0
    assert zs.zero_shot_accuracy(images, ["blue", "red", "red", "blue"], classes, protos) == 0.5
    assert zs.zero_shot_accuracy(images, ["red", "blue", "red", "blue"], classes, protos) == 0.0


def test_zero_shot_accuracy_with_prototypes_from_captions():
    e = torch.eye(4)
    text = torch.stack([e[0], e[0] + 0.1 * e[3], e[1], e[2]])
    text = F.normalize(text, dim=-1)
    classes, protos = zs.attribute_prototypes(text, ["circle", "circle", "square", "triangle"])
    images = torch.stack([e[1], e[0], e[2], e[0]])
    acc = zs.zero_shot_accuracy(images, ["square", "circle", "triangle", "triangle"], classes, protos)
    assert acc == 0.75


def test_caption_retrieval_r1_known_answer():
    e = torch.eye(3)
    images = torch.stack([e[0], e[1], e[2]])
    captions = ["red circle", "blue square", "green triangle", "red circle"]
    # Caption 3 repeats caption 0's text but sits closest to image 2.
    caption_features = torch.stack([e[0], e[1], 0.9 * e[1] + 0.1 * e[2], e[2]])
    refs = [{"red circle"}, {"blue square"}, {"green triangle"}]
    out = zs.caption_retrieval_r1(images, caption_features, captions, refs)
    # image->text: image0 -> "red circle" (hit), image1 -> "blue square" (hit), image2 -> caption 3 "red circle" (miss)
    assert out["i2t_r1"] == pytest.approx(2 / 3)
    # text->image: c0 -> img0 hit, c1 -> img1 hit, c2 -> img1 miss, c3 -> img2 miss
    assert out["t2i_r1"] == pytest.approx(2 / 4)


def test_caption_retrieval_counts_identical_texts_as_hits():
    e = torch.eye(2)
    images = torch.stack([e[0], e[1]])
    captions = ["a red circle", "a red circle"]  # two images with the same attributes
    caption_features = torch.stack([e[1], e[0]])  # each caption nearest the *other* image
    refs = [{"a red circle"}, {"a red circle"}]
    out = zs.caption_retrieval_r1(images, caption_features, captions, refs)
    assert out == {"i2t_r1": 1.0, "t2i_r1": 1.0}
