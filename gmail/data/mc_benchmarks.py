"""Readers for the paper-scale multiple-choice benchmarks, from local files (lmms-eval's
`scienceqa_img` / `mmmu_val` tasks load hub datasets, which cannot work offline).

- **ScienceQA** (paper T10): `problems.json` ({pid: {question, choices, answer (index), hint,
  image, split, ...}}) and `pid_splits.json` ({split: [pid, ...]}) from the ScienceQA release;
  images at `<image_root>/<pid>/<image>` (LLaVA's layout, `images/test/<pid>/image.png`). The
  paper's number is on the test split's image questions: 2,017 of its 4,241.
- **MMMU** (paper T15): the hub dataset's parquet files, one folder per subject
  (`<root>/<Subject>/validation-00000-of-00001.parquet`, 900 validation questions in all) with
  columns id, question, options (a Python list written as a string), answer, question_type
  (multiple-choice | open), image_1 .. image_7 ({bytes, path}). As MMMU's
  `process_single_sample`, a question whose options are several images has no single image to
  show (`image` None); every other question shows image_1.

Rows: `{"id", "question", "choices" | "options", "answer", "image"...}`; `load_benchmark_images`
turns their images into one uint8 array for the image encoder.
"""

from __future__ import annotations

import ast
import io
import os
import re
from pathlib import Path

import numpy as np

from gmail.core.errors import PipelineError
from gmail.core.io import fit_image, load_image, read_json

PathLike = str | os.PathLike
MMMU_COLUMNS = ("id", "question", "options", "answer", "question_type", "image_1")
_IMG_TAG = re.compile(r"<img='(.*?)'>")


def read_scienceqa(root: PathLike, split: str = "test", image_root: PathLike | None = None) -> list[dict]:
    """ScienceQA's image questions of `split`, in `pid_splits.json` order.

    Rows: {"id", "question", "choices", "answer" (index), "hint", "image" (path)}. `image_root`
    defaults to `<root>/images/<split>`. A missing file, an answer index outside the choices or
    a missing image is a PipelineError naming it.
    """
    root = Path(root)
    image_root = Path(image_root) if image_root else root / "images" / split
    problems, splits = read_json(root / "problems.json"), read_json(root / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise PipelineError(f"{root}: problems.json and pid_splits.json must be JSON objects: use ScienceQA's release files")
    if split not in splits:
        raise PipelineError(f"{root / 'pid_splits.json'} has no split {split!r} (it has {', '.join(splits)}): fix the split name")
    rows = []
    for pid in splits[split]:
        prob = problems.get(str(pid))
        if prob is None:
            raise PipelineError(f"ScienceQA question {pid} of split {split} is not in problems.json: use matching release files")
        if not prob.get("image"):
            continue  # the paper's number is on image questions only
        choices, answer = prob.get("choices"), prob.get("answer")
        if not isinstance(choices, list) or len(choices) < 2 or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise PipelineError(f"ScienceQA question {pid}: answer {answer!r} does not index its choices {choices!r}: fix problems.json")
        path = image_root / str(pid) / prob["image"]
        if not path.is_file():
            raise PipelineError(f"ScienceQA image {path} not found: point image_root at the folder of the {split} images")
        rows.append({"id": str(pid), "question": prob.get("question", ""), "choices": [str(c) for c in choices],
                     "answer": answer, "hint": prob.get("hint") or "", "image": str(path)})
    if not rows:
        raise PipelineError(f"ScienceQA split {split} in {root} has no image questions: check the files")
    return rows


def read_mmmu(root: PathLike, split: str = "validation") -> list[dict]:
    """MMMU questions of `split` from every `<root>/**/<split>-*.parquet`, sorted by id.

    Rows: {"id", "subject", "question", "options" (list), "answer", "question_type", "image"
    (PNG/JPEG bytes, or None when several option images leave no single image)}.
    """
    import pyarrow.parquet as pq

    root = Path(root)
    files = sorted(root.rglob(f"{split}-*.parquet"))
    if not files:
        raise PipelineError(f"no MMMU {split} parquet files under {root}: download MMMU/MMMU with "
                            f"`hf download MMMU/MMMU --repo-type dataset --local-dir {root}`")
    rows = []
    for f in files:
        table = pq.read_table(f)
        missing = [c for c in MMMU_COLUMNS if c not in table.column_names]
        if missing:
            raise PipelineError(f"{f} lacks MMMU column {missing[0]!r}: use the MMMU/MMMU parquet files")
        for rec in table.to_pylist():
            rows.append(_mmmu_row(rec, f.parent.name, f))
    rows.sort(key=lambda r: r["id"])
    return rows


def _mmmu_row(rec: dict, subject: str, path: Path) -> dict:
    try:
        options = ast.literal_eval(rec["options"]) if isinstance(rec["options"], str) else list(rec["options"] or [])
    except (ValueError, SyntaxError) as exc:
        raise PipelineError(f"{path}: question {rec['id']} has unreadable options {rec['options']!r}: re-download the file") from exc
    qtype = rec["question_type"]
    if qtype not in ("multiple-choice", "open"):
        raise PipelineError(f"{path}: question {rec['id']} has question_type {qtype!r}: expected multiple-choice or open")
    if qtype == "multiple-choice" and not options:
        raise PipelineError(f"{path}: multiple-choice question {rec['id']} has no options: re-download the file")
    option_images = sum(len(_IMG_TAG.findall(str(o))) for o in options)
    image = rec.get("image_1")
    data = image.get("bytes") if isinstance(image, dict) else image
    return {"id": str(rec["id"]), "subject": subject, "question": rec["question"], "options": [str(o) for o in options],
            "answer": rec["answer"], "question_type": qtype,
            "image": None if option_images > 1 or not data else bytes(data)}


def load_benchmark_images(rows: list[dict], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 array of each row's image (a path or encoded bytes), brought to
    `size` by `gmail.core.io.fit_image`: pass the tower's `load_size`, a `CropSize` at paper
    scale (short side resized, centre crop: open_clip's own preprocessing, as for every other
    image the tower sees), so a plain int squashes; zeros for a row without an image (its
    question is not put to the model)."""
    from PIL import Image, UnidentifiedImageError

    out = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        image = row.get("image")
        if image is None:
            continue
        if isinstance(image, (bytes, bytearray)):
            try:
                with Image.open(io.BytesIO(image)) as im:
                    im = fit_image(im.convert("RGB"), size)
            except (UnidentifiedImageError, OSError) as exc:
                raise PipelineError(f"question {row['id']} has a corrupt image ({exc.__class__.__name__}): re-download the file") from exc
        else:
            im = load_image(image, size)
        out[i] = np.asarray(im)
    return out
