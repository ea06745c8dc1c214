"""gmail.models.embeddings: embedding files are loaded without pickles and checked (shape, dtype,
finite values, rows, width), each problem a one-line PipelineError naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gmail.core.errors import PipelineError
from gmail.models.embeddings import read_embeddings, training_rows, write_embeddings

IDS = ["a", "b", "c"]


@pytest.fixture
def folder(tmp_path):
    z = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    write_embeddings(tmp_path, {"B.f_r": z, "T.f_r": z}, {"B": IDS, "T": IDS})
    return tmp_path


def _error(folder, name="B.f_r", ids=IDS, **kw) -> str:
    with pytest.raises(PipelineError) as info:
        read_embeddings(folder, name, ids, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_round_trip(folder):
    z = read_embeddings(folder, "B.f_r", IDS, dim=8)
    assert z.shape == (3, 8) and z.dtype == torch.float32


def test_object_array_is_refused_without_unpickling(folder, tmp_path):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(folder / "B.f_r.npy", np.array([[Evil()] * 8] * 3, dtype=object), allow_pickle=True)
    msg = _error(folder)
    assert str(folder / "B.f_r.npy") in msg and "Python objects" in msg
    assert not marker.exists()


@pytest.mark.parametrize("bad, what", [
    (np.full((3, 8), np.nan, dtype=np.float32), "NaN or infinite values in 3 rows"),
    (np.zeros(24, dtype=np.float32), "not a 2-D float array"),
    (np.zeros((3, 8), dtype=np.int64), "int64"),
    (np.zeros((2, 8), dtype=np.float32), "hold 2 rows for 3 images"),
])
def test_bad_array_names_file_and_problem(folder, bad, what):
    np.save(folder / "B.f_r.npy", bad)
    msg = _error(folder)
    assert str(folder / "B.f_r.npy") in msg and what in msg


def test_wrong_width_against_siblings_and_expected_dim(folder):
    np.save(folder / "T.f_r.npy", np.zeros((3, 7), dtype=np.float32))
    msg = _error(folder, "T.f_r")
    assert "T.f_r.npy (7 wide) and" in msg and "B.f_r.npy (8 wide)" in msg and "differ in width" in msg
    assert "not the expected 16" in _error(folder, dim=16)


def test_unreadable_npy(folder):
    for content in (b"", b"\x93NUMPY junk"):
        (folder / "B.f_r.npy").write_bytes(content)
        assert str(folder / "B.f_r.npy") in _error(folder)


def test_shard_files_must_share_a_width(tmp_path):
    (tmp_path / "B.f_r").mkdir()
    np.save(tmp_path / "B.f_r/shard-00000.npy", np.zeros((2, 8), dtype=np.float32))
    np.save(tmp_path / "B.f_r/shard-00001.npy", np.zeros((1, 6), dtype=np.float32))
    (tmp_path / "ids.json").write_text(json.dumps({"B": IDS}))
    assert "different widths [6, 8]" in _error(tmp_path)


def test_index_that_is_not_an_object_or_has_empty_captions(folder):
    (folder / "ids.json").write_text("[1, 2]")
    assert "not a JSON object" in _error(folder)
    records = [{"image_id": i, "captions": ["x"]} for i in IDS]
    (folder / "ids.json").write_text(json.dumps({"B": ["g0", "g1"], "B_source": ["a", "b"], "B_caption": ["ok", " "]}))
    with pytest.raises(PipelineError, match="'B_caption' is not a list of one non-empty string per generated image"):
        training_rows(folder, "B", records)
