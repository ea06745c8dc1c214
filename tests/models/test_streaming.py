"""gmail.models.streaming: the generation manifest and the shards' items, checked before use."""

from __future__ import annotations

import json

import pytest

from gmail.core.errors import PipelineError
from gmail.models.streaming import check_shard_order, read_manifest

ITEMS = [{"id": "a_0", "source_id": "a", "caption": "a red circle"}, {"id": "b_0", "source_id": "b", "caption": "blue"}]


def _manifest(folder, items):
    (folder / "manifest.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


def test_manifest_round_trip(tmp_path):
    _manifest(tmp_path, ITEMS)
    assert read_manifest(tmp_path, ["a", "b"]) == ITEMS


@pytest.mark.parametrize("item", [{"id": "b_0", "caption": "blue"}, {"id": "b_0", "source_id": 3, "caption": "c"}])
def test_manifest_item_without_text_source_names_file_and_line(tmp_path, item):
    _manifest(tmp_path, [ITEMS[0], item])
    with pytest.raises(PipelineError, match=r"manifest\.jsonl:2: item has no text 'source_id'"):
        read_manifest(tmp_path, ["a", "b"])


def test_shard_item_disagreeing_with_the_manifest_is_an_error(tmp_path):
    check_shard_order([dict(it, index=i) for i, it in enumerate(ITEMS)], ITEMS, tmp_path)
    with pytest.raises(PipelineError, match="do not hold the manifest's images in order"):
        check_shard_order([ITEMS[0], {**ITEMS[1], "source_id": "a"}], ITEMS, tmp_path)
    with pytest.raises(PipelineError, match="do not hold the manifest's images in order"):
        check_shard_order([ITEMS[0], {"id": "b_0"}], ITEMS, tmp_path)
