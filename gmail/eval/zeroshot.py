"""Zero-shot evaluation with the mini CLIP: attribute classification with prompt-ensembled
prototypes (CLIP's protocol, the captions of a reference split as the prompts) and caption
retrieval R@1 with templated captions.

Used by the pretrain stages to check the mini CLIP itself and the generators' fidelity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gmail.models.mini_clip import MiniClip, encode_sentences
from gmail.models.text import encode_texts


def attribute_prototypes(text_features: torch.Tensor, values: list[str]) -> tuple[list[str], torch.Tensor]:
    """Zero-shot classifier weights: the mean normalised text feature of each attribute value.

    Averaging the captions that mention a value is CLIP's prompt ensembling, with the
    captions of a reference split as the prompts.
    """
    classes = sorted(set(values))
    idx = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([idx[v] for v in values])
    protos = torch.zeros(len(classes), text_features.shape[1])
    protos.index_add_(0, labels, F.normalize(text_features, dim=-1))
    return classes, F.normalize(protos, dim=-1)


def attribute_classifier(model: MiniClip, records: list[dict], attribute: str,
                         sentence_embeddings: np.ndarray, device: str = "cpu") -> tuple[list[str], torch.Tensor]:
    """(classes, prototypes) for one attribute from every reference caption of `records`.

    `sentence_embeddings` holds the MiniLM embeddings of those captions, flattened in record
    order, so several attributes can share one encoding pass.
    """
    text = encode_sentences(model, sentence_embeddings, device)
    return attribute_prototypes(text, [r["attributes"][attribute] for r in records for _ in r["captions"]])


def zero_shot_accuracy(image_features: torch.Tensor, labels: list[str], classes: list[str], prototypes: torch.Tensor) -> float:
    """Fraction of images whose nearest prototype is their label."""
    pred = (image_features @ prototypes.t()).argmax(1)
    return float(np.mean([classes[p] == y for p, y in zip(pred.tolist(), labels)]))


def caption_retrieval_r1(image_features: torch.Tensor, caption_features: torch.Tensor,
                         captions: list[str], image_captions: list[set[str]]) -> dict[str, float]:
    """Zero-shot retrieval R@1 both ways, counting a hit when the texts match exactly.

    Templated captions repeat across images with the same attributes, so a retrieved
    caption is correct when its text is among the query image's references (image->text),
    and a retrieved image is correct when the query text is among its references (text->image).
    """
    sims = image_features @ caption_features.t()
    i2t = sims.argmax(1).tolist()
    i2t_r1 = float(np.mean([captions[j] in image_captions[i] for i, j in enumerate(i2t)]))
    t2i = sims.argmax(0).tolist()
    t2i_r1 = float(np.mean([captions[j] in image_captions[i] for j, i in enumerate(t2i)]))
    return {"i2t_r1": i2t_r1, "t2i_r1": t2i_r1}


def attribute_accuracies(model: MiniClip, image_features: dict[str, torch.Tensor], records: list[dict],
                         prompt_records: list[dict], attributes=("colour", "shape"),
                         device: str = "cpu") -> dict[str, dict[str, float]]:
    """{attribute: {set name: zero-shot accuracy}} for image feature sets of the same `records`.

    The prototypes come from every reference caption of `prompt_records` (a split other than
    the one tested), encoded once and shared by all attributes.
    """
    sentences = encode_texts([c for r in prompt_records for c in r["captions"]], device)
    out = {}
    for attr in attributes:
        classes, protos = attribute_classifier(model, prompt_records, attr, sentences, device)
        labels = [r["attributes"][attr] for r in records]
        out[attr] = {name: zero_shot_accuracy(f, labels, classes, protos) for name, f in image_features.items()}
    return out
