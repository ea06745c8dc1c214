"""Zero-shot classification (paper T4), CLIP's protocol through CLIP_benchmark's own code.

A class's weight is the mean of its L2-normalised prompt embeddings, renormalised
(CLIP_benchmark's `zero_shot_classifier`, which calls `tokenizer(texts)` and
`model.encode_text(tokens)`: both text towers of `gmail.downstream.text_tuning` have that
interface, the mini one's "tokens" being MiniLM sentence embeddings). Images are classified by
their nearest class weight; top-1 accuracy is CLIP_benchmark's `accuracy` (re-implemented:
see `topk_accuracy`) and the mean per-class recall what its `evaluate` reports (sklearn's
`balanced_accuracy_score`).

Mini scale classifies real T by the attributes its records carry (colour, shape, size) with
the prompt templates below; paper scale uses datasets CLIP_benchmark builds from a local root,
with their own class names and templates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError

# Prompt templates per easy-vqa attribute, CLIP style ("{c}" is the class name). Averaged per
# class, so no single wording decides; none is one of the captions' own templates.
MINI_TEMPLATES = {
    "colour": ["a photo of a {c} shape", "a {c} object on a pale background", "a picture of something {c}",
               "a {c} thing", "a drawing coloured {c}"],
    "shape": ["a photo of a {c}", "a {c} on a pale background", "a picture of a coloured {c}",
              "a drawing of a {c}", "there is a {c}"],
    "size": ["a {c} shape", "a {c} object on a pale background", "a picture of a {c} shape",
             "a shape of {c} size", "a {c} thing in the picture"],
}


def mini_classnames(attribute: str) -> list[str]:
    """Every value an easy-vqa attribute can take (all classes, whether or not T shows them)."""
    from gmail.data.easy_vqa_captions import COLOURS, SHAPES, SIZES

    table = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}
    if attribute not in table or attribute not in MINI_TEMPLATES:
        raise PipelineError(f"no zero-shot classes for attribute {attribute!r}: use {', '.join(table)}")
    return list(table[attribute])


def attribute_labels(records: list[dict], attribute: str, classnames: list[str]) -> torch.Tensor:
    """(N,) class indices of the records' `attributes[attribute]` (mini T records carry them)."""
    index = {c: i for i, c in enumerate(classnames)}
    labels = []
    for rec in records:
        value = rec.get("attributes", {}).get(attribute)
        if value not in index:
            raise PipelineError(f"test image {rec['image_id']!r} has {attribute}={value!r}, not one of "
                                f"{', '.join(classnames)}: rebuild the captions with stage captions")
        labels.append(index[value])
    return torch.tensor(labels)


class MemoTokenizer:
    """`tokenize(texts)` that computes each distinct text once: every row's towers build their
    classifiers from the same prompts, and mini "tokens" (MiniLM passes) are the costly part.
    Tokens do not depend on the tuned weights (MiniLM and the BPE are frozen)."""

    def __init__(self, tokenize):
        self.tokenize = tokenize
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, self.tokenize(new)))
        return torch.stack([self.cache[t] for t in texts])


def class_weights(tower, classnames: list[str], templates, tokenizer=None, device: str = "cpu") -> torch.Tensor:
    """(D, C) zero-shot classifier: CLIP_benchmark's `zero_shot_classifier` with `tower`'s
    tokenizer (or `tokenizer`, e.g. a shared MemoTokenizer) and autocast off (on the CPU its
    autocast would run the text tower in bfloat16)."""
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    tokenizer = tokenizer or tower.tokenize
    return zero_shot_classifier(tower, tokenizer, classnames, templates, device, amp=False).float().cpu()


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose target is among the k highest logits: CLIP_benchmark's `accuracy`.

    Re-implemented because its last line, `float(<1-element array>)`, is a TypeError under the
    pinned NumPy 2.4 (scalar conversion of 1-d arrays was removed); the computation is the
    same (`tests/eval/test_zeroshot_classification.py` checks it against CLIP_benchmark's).
    """
    pred = logits.topk(k, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return float(correct[:k].reshape(-1).float().sum()) / len(target)


def classify(image_embeddings: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"acc1", "mean_per_class_recall"} in percent, as CLIP_benchmark's `evaluate` computes them
    from logits `100 * normalised images @ weights` (its mean per-class recall is sklearn's
    `balanced_accuracy_score`)."""
    from sklearn.metrics import balanced_accuracy_score

    if len(image_embeddings) != len(labels):
        raise PipelineError(f"{len(image_embeddings)} image embeddings for {len(labels)} labels: embed every test image once")
    logits = 100.0 * F.normalize(image_embeddings.float(), dim=-1) @ weights
    recall = balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    return {"acc1": 100.0 * topk_accuracy(logits, labels, 1), "mean_per_class_recall": 100.0 * float(recall)}


def clip_benchmark_dataset(name: str, root: str, image_size: int) -> tuple[list[str], object, np.ndarray, torch.Tensor]:
    """(classnames, templates, (N, S, S, 3) uint8 images, (N,) labels) of CLIP_benchmark dataset
    `name`, built offline from `root` (`build_dataset(name, root=root, split="test",
    download=False)`), each image resized to `image_size` as stage `embed` loads images."""
    from clip_benchmark.datasets.builder import build_dataset
    from PIL import Image

    def to_array(image):
        return np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BICUBIC))

    # Several builders download when the root is missing (wget, kaggle, then sys.exit), even with
    # download=False: never let them start offline.
    if not Path(root).is_dir():
        raise PipelineError(f"CLIP_benchmark dataset {name!r}: root {root} not found: put the dataset there "
                            "(offline) or fix eval_zeroshot.root")
    try:
        ds = build_dataset(name, root=root, transform=to_array, split="test", download=False)
    except (ValueError, AssertionError, FileNotFoundError, RuntimeError, OSError, SystemExit) as exc:
        raise PipelineError(f"CLIP_benchmark cannot build dataset {name!r} from {root} offline "
                            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}): "
                            "put its files under that root or fix eval_zeroshot.datasets") from exc
    if len(ds) == 0:
        raise PipelineError(f"CLIP_benchmark dataset {name!r} under {root} has no test images: check the root")
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    return list(ds.classes), ds.templates, np.stack(images), torch.tensor(labels)
