"""Stage `eval_long_retrieval` on the tiny downstream workspace after `tune_text` for three
rows: long descriptions of real T (mini), and Urban-1k / ShareGPT4V fixtures (paper readers)."""

import contextlib
import json

import numpy as np
import pytest
from helpers import read_jsonl, write_params

from gmail.core.cli import run
from gmail.data.long_captions import long_caption_records
from gmail.data.records import load_split_images
from gmail.downstream.text_tuning import encode_tokens, load_text_tower
from gmail.eval.retrieval import positive_pairs, real_test_set, retrieval_recalls, retrieval_texts
from stages import eval_long_retrieval, tune_text

pytestmark = pytest.mark.slow

ROWS = ["synthetic", "gmail", "real"]
TUNE = {"rows": ROWS, "seeds": 2, "steps": 3, "batch_size": 4, "lr": 1.0e-3, "weight_decay": 0.01, "device": "cpu"}
EVAL = {"source": "T", "paper": {}, "positives": "text", "batch_size": 4}


def params(ws, name, **sections):
    paths = {"text_towers": "el/towers", "plots": "el/plots", "stats": f"el/{name}/stats", "metrics": f"el/{name}/metrics",
             **sections.pop("paths", {})}
    return write_params(ws / f"el/{name}.yaml", ws / "params.yaml", paths=paths,
                        tune_text={**TUNE, **sections.pop("tune_text", {})},
                        eval_long_retrieval={**EVAL, **sections.pop("eval_long_retrieval", {})}, **sections)


@pytest.fixture(scope="module")
def tuned(aligned_workspace):
    ws = aligned_workspace
    with contextlib.chdir(ws):
        p = params(ws, "tune")
        for row in ROWS:
            tune_text.main(["--params", p, "--row", row])
    return ws


def urban1k(ws, root, caption=lambda i, c: c):
    """Urban-1k layout holding the workspace's T images, each with its long description."""
    (root / "image").mkdir(parents=True)
    (root / "caption").mkdir()
    test = read_jsonl(ws / "data/captions/T.jsonl")
    for rec in test:
        rec["path"] = str(ws / "data/captions" / rec["path"])
    for i, rec in enumerate(long_caption_records(test, load_split_images(test))):
        (root / "image" / f"{i + 1}.jpg").write_bytes(open(rec["path"], "rb").read())  # PNG bytes: PIL reads by content
        (root / "caption" / f"{i + 1}.txt").write_text(caption(i, rec["captions"][0]))
    return root


def test_every_row_reports_r1_both_ways_on_long_descriptions_of_t(tuned, monkeypatch):
    ws = tuned
    monkeypatch.chdir(ws)
    eval_long_retrieval.main(["--params", params(ws, "main")])
    m = json.loads((ws / "el/main/metrics/long_retrieval.json").read_text())
    assert m.pop("scale") == "mini" and set(m) == {"clip", *ROWS}
    for row, values in m.items():
        assert set(values) == {"i2t_r1", "t2i_r1"} and all(0 <= v["mean"] <= 100 for v in values.values()), row
    # The clip row is the untuned tower on one long description per image.
    test, z = real_test_set(ws / "data/captions", ws / "data/embeddings")
    records = long_caption_records(test, load_split_images(test))
    texts, index = retrieval_texts(records)
    assert len(texts) == 3 and all(len(t.split()) >= 40 for t in texts)
    base = load_text_tower("mini", str(ws / "clip"))
    want = retrieval_recalls(z, encode_tokens(base, base.tokenize(texts)), positive_pairs(texts, index, [[t] for t in texts]), (1,))
    assert m["clip"] == {k: {"mean": pytest.approx(v), "std": 0.0} for k, v in want.items()}


def test_urban1k_and_sharegpt4v_sources_embed_their_images(tuned, monkeypatch, tmp_path):
    ws = tuned
    monkeypatch.chdir(ws)
    root = urban1k(ws, tmp_path / "Urban1k")
    eval_long_retrieval.main(["--params", params(ws, "urban", eval_long_retrieval={"source": "urban1k", "paper": {"root": str(root)}, "data": str(root)})])
    urban = json.loads((ws / "el/urban/metrics/long_retrieval.json").read_text())
    urban.pop("scale")
    assert set(urban) == {"clip", *ROWS} and json.loads((ws / "el/urban/stats/eval_long_retrieval.json").read_text())["images"] == 3
    entries = [{"id": str(i), "image": f"image/{i + 1}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                  {"from": "gpt", "value": (root / f"caption/{i + 1}.txt").read_text()}]} for i in range(3)]
    (tmp_path / "share.json").write_text(json.dumps(entries))
    p = params(ws, "share", eval_long_retrieval={"source": "sharegpt4v", "paper": {
        "json_path": str(tmp_path / "share.json"), "image_root": str(root), "limit": 1000}, "data": str(tmp_path)})
    eval_long_retrieval.main(["--params", p])
    share = json.loads((ws / "el/share/metrics/long_retrieval.json").read_text())
    share.pop("scale")
    assert share == urban  # the same images and captions, read through the other reader
    assert np.isfinite([v["mean"] for r in share.values() for v in r.values()]).all()


@pytest.mark.parametrize("case", ["empty_caption", "missing_tower", "unknown_row", "sharegpt4v_outside_data"])
def test_bad_input_is_one_line_exit_2_and_writes_no_metrics(tuned, monkeypatch, capsys, case, tmp_path):
    ws = tuned
    monkeypatch.chdir(ws)
    if case == "empty_caption":
        root = urban1k(ws, tmp_path / "Urban1k", caption=lambda i, c: "  \n" if i == 1 else c)
        p, match = params(ws, case, eval_long_retrieval={"source": "urban1k", "paper": {"root": str(root)}, "data": str(root)}), "2.txt is empty"
    elif case == "missing_tower":
        p, match = params(ws, case, paths={"text_towers": "el/nowhere"}), "tune_text@synthetic"
    elif case == "unknown_row":
        p, match = params(ws, case, tune_text={"rows": ["gmail", "clip"]}), "untuned tower"
    else:  # the mini dep (real T's images) would not rerun the stage on a new ShareGPT4V file
        p = params(ws, case, eval_long_retrieval={"source": "sharegpt4v", "paper": {
            "json_path": str(tmp_path / "share.json"), "image_root": str(tmp_path), "limit": 10}})
        match = "eval_long_retrieval.data='data/captions/images/T' does not hold"
    assert run(eval_long_retrieval.main, ["--params", p]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err
    assert not (ws / f"el/{case}/metrics").exists()
