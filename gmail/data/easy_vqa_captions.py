"""Mini-scale captions: easy-vqa images described by colour, shape, size, position, background.

easy-vqa ships 64x64 images of one coloured shape on a pale background with templated
questions. Colour and shape come from the question labels (pixels only as a fallback); size,
position and background from the pixels. Each image gets several differently worded
references, as COCO has five, so BLEU/CIDEr behave like captioning metrics.
"""

from __future__ import annotations

import colorsys
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from gmail.core.errors import PipelineError

COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
SIZES = ("small", "medium", "large")
# easy-vqa draws shapes anywhere on the canvas; a 3x3 grid of centroid regions.
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
BACKGROUNDS = ("pink", "yellow", "green", "cyan", "blue", "purple")
ATTRIBUTES = ("colour", "shape", "size", "position", "background")

# Reference RGB of each easy-vqa colour, for the pixel fallback only.
_PALETTE = {
    "black": (0, 0, 0), "blue": (0, 0, 255), "brown": (165, 42, 42), "gray": (128, 128, 128),
    "green": (0, 255, 0), "red": (255, 0, 0), "teal": (0, 128, 128), "yellow": (255, 255, 0),
}
# Anti-aliased shape area / bounding-box area, measured on easy-vqa train images
# (ideal shapes: rectangle 1, circle pi/4, triangle 1/2; edges pull them down).
_FILL = {"rectangle": 0.87, "circle": 0.70, "triangle": 0.47}
# Area fractions splitting easy-vqa's shapes into roughly equal thirds.
SIZE_EDGES = (0.055, 0.11)

_WORD = re.compile(r"[a-z]+")


def labels_from_questions(questions: list[tuple[str, str]]) -> dict[str, str]:
    """Colour and shape implied by an image's (question, answer) pairs, where they say it.

    Open questions ("what color is the triangle?" -> blue) are authoritative; yes/no
    questions ("is there not a circle?" -> no) only fill what the open ones left out.
    """
    open_found: dict[str, str] = {}
    yes_no_found: dict[str, str] = {}
    for question, answer in questions:
        words = _WORD.findall(question.lower())
        if words[:1] == ["what"]:
            for w in words + [answer]:
                if w in SHAPES:
                    open_found["shape"] = w
                elif w in COLOURS:
                    open_found["colour"] = w
        elif answer in ("yes", "no"):
            negated = "not" in words or "no" in words
            if (answer == "yes") != negated:
                for w in words:
                    if w in SHAPES:
                        yes_no_found["shape"] = w
                    elif w in COLOURS:
                        yes_no_found["colour"] = w
    return {**yes_no_found, **open_found}


def attributes_from_pixels(image: np.ndarray) -> dict[str, str]:
    """Colour, shape, size, position and background read off a (H, W, 3) uint8 image."""
    a = image.astype(np.int32)
    h, w, _ = a.shape
    bg = a[0, 0]
    mask = np.abs(a - bg).sum(-1) > 40
    if mask.sum() < 4:
        raise PipelineError("image holds no visible shape: easy-vqa images must show one shape")
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / w, ys.mean() / h
    col = "left" if cx < 0.375 else ("right" if cx > 0.625 else "")
    row = "top" if cy < 0.375 else ("bottom" if cy > 0.625 else "")
    position = (f"{row} {col}".strip()) or "centre"
    area = mask.mean()
    size = SIZES[int(np.searchsorted(SIZE_EDGES, area))]
    hue = colorsys.rgb_to_hsv(*(bg / 255.0))[0] * 360
    background = BACKGROUNDS[int(((hue + 30) % 360) // 60)]
    # Colour: the palette entry nearest the median of the shape's interior pixels.
    inner = a[mask]
    med = np.median(inner, axis=0)
    colour = min(_PALETTE, key=lambda c: float(((np.array(_PALETTE[c]) - med) ** 2).sum()))
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    diff = np.abs(a - bg).sum(-1)
    fill = np.clip(diff / diff.max(), 0, 1).sum() / box
    shape = min(_FILL, key=lambda s: abs(_FILL[s] - fill))
    return {"colour": colour, "shape": shape, "size": size, "position": position, "background": background}


def _where(position: str) -> tuple[str, str]:
    if position == "centre":
        return "in the centre", "centred"
    if " " in position:
        return f"in the {position} corner", f"towards the {position}"
    return f"at the {position}", f"near the {position} edge"


def make_references(attrs: dict[str, str]) -> list[str]:
    """Five differently worded reference captions for one image's attributes."""
    c, s, z, p, b = (attrs[k] for k in ATTRIBUTES)
    at, towards = _where(p)
    return [
        f"a {z} {c} {s} {at} on a pale {b} background",
        f"a {c} {s} of {z} size {towards}",
        f"there is a {z} {s} coloured {c} {at}",
        f"{at}, a {c} {s} sits on a {b} background",
        f"a picture of a {z} {c} {s}",
    ]


def build_easy_vqa_records(split: str, ids: list[int], image_paths: dict, questions) -> list[dict]:
    """Caption records for the given easy-vqa image ids (images read from `image_paths`).

    Returns dicts with image_id, source_path, attributes and captions; the caller copies
    the images and sets `path`.
    """
    from gmail.core.io import load_image

    by_image = defaultdict(list)
    for text, answer, image_id in zip(*questions):
        by_image[image_id].append((text, answer))
    records = []
    for image_id in ids:
        if image_id not in image_paths:
            raise PipelineError(f"easy-vqa {split} image {image_id} is missing: reinstall easy-vqa==1.0")
        src = Path(image_paths[image_id])
        pixels = np.asarray(load_image(src))
        try:
            attrs = attributes_from_pixels(pixels)
        except PipelineError as exc:
            raise PipelineError(f"{src}: {exc}") from exc
        attrs.update(labels_from_questions(by_image.get(image_id, [])))
        records.append({
            "image_id": f"{split}-{image_id:05d}",
            "source_path": str(src),
            "attributes": attrs,
            "captions": make_references(attrs),
        })
    return records


def split_ids(train_ids: list[int], test_ids: list[int], n_a: int, n_b: int, n_t: int) -> dict[str, list[int]]:
    """A and B from easy-vqa's train split (disjoint, in id order), T from its test split."""
    train_ids, test_ids = sorted(train_ids), sorted(test_ids)
    if n_a + n_b > len(train_ids):
        raise PipelineError(f"data.n_a + data.n_b = {n_a + n_b} exceeds the {len(train_ids)} easy-vqa train images: lower them")
    if n_t > len(test_ids):
        raise PipelineError(f"data.n_t = {n_t} exceeds the {len(test_ids)} easy-vqa test images: lower it")
    return {"A": train_ids[:n_a], "B": train_ids[n_a:n_a + n_b], "T": test_ids[:n_t]}


def easy_vqa_splits(n_a: int, n_b: int, n_t: int, out_dir: str | Path) -> dict[str, list[dict]]:
    """Caption records of splits A, B, T from the easy-vqa package, images copied into `out_dir`.

    Each split's images land in `out_dir/images/<split>/<image_id>.png` (a byte copy, so the
    outputs are identical on every run) and each record's `path` is relative to `out_dir`.
    """
    try:
        import easy_vqa
    except ImportError as exc:
        raise PipelineError("package easy-vqa is not installed: run `make repro` or pip install -r requirements.txt") from exc
    out_dir = Path(out_dir)
    train_paths, test_paths = easy_vqa.get_train_image_paths(), easy_vqa.get_test_image_paths()
    ids = split_ids(list(train_paths), list(test_paths), n_a, n_b, n_t)
    splits = {
        "A": build_easy_vqa_records("train", ids["A"], train_paths, easy_vqa.get_train_questions()),
        "B": build_easy_vqa_records("train", ids["B"], train_paths, easy_vqa.get_train_questions()),
        "T": build_easy_vqa_records("test", ids["T"], test_paths, easy_vqa.get_test_questions()),
    }
    for name, records in splits.items():
        (out_dir / "images" / name).mkdir(parents=True)
        for rec in records:
            rel = f"images/{name}/{rec['image_id']}.png"
            shutil.copyfile(rec.pop("source_path"), out_dir / rel)
            rec["path"] = rel
    return splits
