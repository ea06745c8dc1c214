"""gmail.models.text: frozen MiniLM sentence embeddings and the .npz text cache."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gmail.core.errors import PipelineError
from gmail.models.text import MINILM_DIM, encode_texts, encode_texts_cached, write_text_cache

TEXTS = [
    "a small red circle in the top left corner",
    "a little red circle near the top left",
    "the stock market fell sharply on monday",
    "a small red circle in the top left corner",
]


@pytest.fixture(scope="module")
def emb():
    """Loads MiniLM once for the module (later calls hit encode_texts' model cache)."""
    return encode_texts(TEXTS)


def test_shape_dtype_and_unit_norm(emb):
    assert emb.shape == (len(TEXTS), MINILM_DIM) == (4, 384)
    assert emb.dtype == np.float32 and emb.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_identical_texts_identical_rows(emb):
    assert np.array_equal(emb[0], emb[3])
    assert not np.allclose(emb[0], emb[1])


def test_similar_sentences_are_closer_than_unrelated(emb):
    similar = float(emb[0] @ emb[1])
    unrelated = float(emb[0] @ emb[2])
    assert similar > unrelated + 0.2


def test_rows_follow_input_order_and_do_not_depend_on_the_batch(emb):
    alone = encode_texts([TEXTS[2]])
    np.testing.assert_allclose(alone[0], emb[2], atol=1e-5)
    reordered = encode_texts(TEXTS[::-1])
    np.testing.assert_allclose(reordered, emb[::-1], atol=1e-5)


def test_empty_input_gives_empty_array():
    out = encode_texts([])
    assert out.shape == (0, MINILM_DIM) and out.dtype == np.float32


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_caption_is_pipeline_error(bad):
    with pytest.raises(PipelineError, match="empty caption"):
        encode_texts(["a fine caption", bad])


def test_cache_round_trip_equals_encode_texts(tmp_path, emb):
    cache = tmp_path / "texts.npz"
    write_text_cache(TEXTS, str(cache))
    assert cache.is_file()
    out = encode_texts_cached(TEXTS, str(cache))
    assert out.shape == emb.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, emb, atol=1e-6)
    # A subset, in another order, with repeats.
    sub = [TEXTS[2], TEXTS[0], TEXTS[2]]
    np.testing.assert_allclose(encode_texts_cached(sub, str(cache)), emb[[2, 0, 2]], atol=1e-6)


def test_no_cache_falls_back_to_encode_texts(emb):
    np.testing.assert_allclose(encode_texts_cached(TEXTS, None), emb, atol=1e-6)


def test_missing_text_in_cache_is_pipeline_error(tmp_path):
    cache = tmp_path / "texts.npz"
    write_text_cache(TEXTS[:2], str(cache))
    with pytest.raises(PipelineError) as info:
        encode_texts_cached([TEXTS[0], "a caption the cache never saw"], str(cache))
    msg = str(info.value)
    assert "a caption the cache never saw" in msg and str(cache) in msg and "1 captions" in msg


def test_missing_cache_file_is_pipeline_error(tmp_path):
    with pytest.raises(PipelineError):
        encode_texts_cached(["a caption"], str(tmp_path / "nope.npz"))


def test_cache_round_trip_without_npz_suffix(tmp_path, emb):
    cache = str(tmp_path / "texts.cache")
    write_text_cache(TEXTS, cache)
    np.testing.assert_allclose(encode_texts_cached(TEXTS, cache), emb, atol=1e-6)


# --------------------------------------------------------------------------- safety and long captions


def test_cache_holds_no_object_arrays(tmp_path):
    cache = tmp_path / "texts.npz"
    write_text_cache(TEXTS, str(cache))
    with np.load(cache, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


class _Marker:
    """Unpickling this creates `path`: what a crafted cache could do with os.system instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_old_pickled_cache_is_refused_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    cache = tmp_path / "old.npz"
    with open(cache, "wb") as fh:
        np.savez(fh, texts=np.array([_Marker(marker)], dtype=object), embeddings=np.zeros((1, MINILM_DIM), np.float32))
    with pytest.raises(PipelineError) as info:
        encode_texts_cached(["a caption"], str(cache))
    assert "old format" in str(info.value) and "delete it and rebuild it" in str(info.value)
    assert not marker.exists()


def test_crafted_object_array_in_new_format_is_refused(tmp_path):
    marker = tmp_path / "unpickled"
    cache = tmp_path / "evil.npz"
    with open(cache, "wb") as fh:
        np.savez(fh, texts_utf8=np.frombuffer(b'["a caption"]', np.uint8), embeddings=np.array([_Marker(marker)], dtype=object))
    with pytest.raises(PipelineError, match="pickled or unreadable array"):
        encode_texts_cached(["a caption"], str(cache))
    assert not marker.exists()


@pytest.mark.parametrize("embeddings, what", [(np.zeros((1, 3), np.float32), "not float (1, 384)"),
                                              (np.full((1, MINILM_DIM), np.nan, np.float32), "NaN")])
def test_cache_with_bad_embeddings_is_refused(tmp_path, embeddings, what):
    cache = tmp_path / "bad.npz"
    with open(cache, "wb") as fh:
        np.savez(fh, texts_utf8=np.frombuffer(b'["a caption"]', np.uint8), embeddings=embeddings)
    with pytest.raises(PipelineError, match=re.escape(what)):
        encode_texts_cached(["a caption"], str(cache))


def test_long_captions_are_cut_with_one_warning_counting_them(emb, capsys):
    long = "red " * 10_000
    out = encode_texts([TEXTS[0], long, long, "blue " * 300])
    assert out.shape == (4, MINILM_DIM)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == ["warning: 3 captions longer than 256 MiniLM tokens were cut to 256"]
    encode_texts(TEXTS)
    assert "warning:" not in capsys.readouterr().err
