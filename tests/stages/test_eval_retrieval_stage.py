"""Stage `eval_retrieval` on the tiny downstream workspace (T 3 images x 5 references), after
`tune_text` for three rows; and at paper scale with a tiny open_clip model."""

import contextlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import read_jsonl, write_params

from gmail.core.cli import run
from gmail.downstream.text_tuning import encode_tokens, load_text_tower, load_tuned_tower
from gmail.eval.retrieval import positive_pairs, real_test_set, retrieval_recalls, retrieval_texts
from stages import embed, eval_retrieval, tune_text

pytestmark = pytest.mark.slow

ROWS = ["synthetic", "gmail", "real"]
TUNE = {"rows": ROWS, "seeds": 2, "steps": 3, "batch_size": 4, "lr": 1.0e-3, "weight_decay": 0.01, "device": "cpu"}
EVAL = {"source": "T", "paper": {}, "positives": "text", "batch_size": 4}
KEYS = {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}


def params(ws, name, **sections):
    paths = {"text_towers": "er/towers", "plots": "er/plots", "stats": f"er/{name}/stats", "metrics": f"er/{name}/metrics",
             **sections.pop("paths", {})}
    return write_params(ws / f"er/{name}.yaml", ws / "params.yaml", paths=paths,
                        tune_text={**TUNE, **sections.pop("tune_text", {})},
                        eval_retrieval={**EVAL, **sections.pop("eval_retrieval", {})}, **sections)


@pytest.fixture(scope="module")
def tuned(aligned_workspace):
    ws = aligned_workspace
    with contextlib.chdir(ws):
        p = params(ws, "tune")
        for row in ROWS:
            tune_text.main(["--params", p, "--row", row])
    return ws


def test_every_row_gets_mean_and_std_of_six_recalls(tuned, monkeypatch):
    ws = tuned
    monkeypatch.chdir(ws)
    eval_retrieval.main(["--params", params(ws, "main")])
    m = json.loads((ws / "er/main/metrics/retrieval.json").read_text())
    assert m.pop("scale") == "mini"  # the scale the stage ran at, beside the rows
    assert list(m) == ["clip", "gmail", "real", "synthetic"]  # sorted keys
    for row, values in m.items():
        assert set(values) == KEYS, row
        for key, v in values.items():
            assert set(v) == {"mean", "std"} and 0 <= v["mean"] <= 100 and v["std"] >= 0
        assert values["t2i_r5"]["mean"] == 100.0  # 3 images: every one is within the top 5
    assert all(v["std"] == 0 for v in m["clip"].values())  # one untuned tower
    stats = json.loads((ws / "er/main/stats/eval_retrieval.json").read_text())
    assert stats["images"] == 3 and stats["texts"] == 15


def test_a_rows_numbers_are_its_towers_recalls_averaged_over_seeds(tuned, monkeypatch):
    ws = tuned
    monkeypatch.chdir(ws)
    eval_retrieval.main(["--params", params(ws, "check")])
    m = json.loads((ws / "er/check/metrics/retrieval.json").read_text())
    m.pop("scale")
    records, z = real_test_set(ws / "data/captions", ws / "data/embeddings")
    texts, index = retrieval_texts(records)
    pos = positive_pairs(texts, index, [r["captions"] for r in records], "text")
    base = load_text_tower("mini", str(ws / "clip"))
    tokens = base.tokenize(texts)
    per_seed = [retrieval_recalls(z, encode_tokens(load_tuned_tower(base, ws / f"er/towers/gmail/seed{s}"), tokens), pos)
                for s in (0, 1)]
    for key in KEYS:
        values = [r[key] for r in per_seed]
        assert m["gmail"][key]["mean"] == pytest.approx(np.mean(values)) and m["gmail"][key]["std"] == pytest.approx(np.std(values))


def test_karpathy_source_reads_a_split_file_and_embeds_its_test_images(tuned, monkeypatch, tmp_path):
    ws = tuned
    monkeypatch.chdir(ws)
    test = read_jsonl(ws / "data/captions/T.jsonl")
    rows = [{"filename": r["path"].split("/")[-1], "imgid": i, "split": "test", "sentences": [{"raw": c} for c in r["captions"]]}
            for i, r in enumerate(test)]
    rows.append({**rows[0], "imgid": 99, "split": "train"})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": rows}))
    p = params(ws, "flickr", eval_retrieval={"source": "karpathy", "positives": "index", "paper": {
        "json_path": str(tmp_path / "dataset_flickr30k.json"), "image_root": str(ws / "data/captions/images/T"), "split": "test"},
        "data": os.path.commonpath([tmp_path, ws])})  # the dep must hold both
    eval_retrieval.main(["--params", p])
    m = json.loads((ws / "er/flickr/metrics/retrieval.json").read_text())
    m.pop("scale")
    assert set(m) == {"clip", *ROWS} and set(m["gmail"]) == KEYS
    assert json.loads((ws / "er/flickr/stats/eval_retrieval.json").read_text())["images"] == 3


@pytest.mark.parametrize("case", ["missing_tower", "unknown_row", "bad_source", "karpathy_outside_data", "t_outside_data"])
def test_bad_input_is_one_line_exit_2_and_writes_no_metrics(tuned, monkeypatch, capsys, case):
    ws = tuned
    monkeypatch.chdir(ws)
    if case == "missing_tower":
        shutil.copytree(ws / "er/towers", ws / "er/towers_missing", dirs_exist_ok=True)
        (ws / "er/towers_missing/real/seed1/text.safetensors").unlink()
        p, match = params(ws, case, paths={"text_towers": "er/towers_missing"}), "tune_text@real"
    elif case == "unknown_row":
        p, match = params(ws, case, tune_text={"rows": ["gmail", "gmial"]}), "unknown row 'gmial'"
    elif case == "bad_source":
        p, match = params(ws, case, eval_retrieval={"source": "coco"}), "eval_retrieval.source='coco'"
    elif case == "karpathy_outside_data":  # the dep (data/captions/T.jsonl) would not rerun the stage on a new Flickr file
        p = params(ws, case, eval_retrieval={"source": "karpathy", "paper": {"json_path": "/elsewhere/f.json", "image_root": "/elsewhere"}})
        match = "eval_retrieval.data='data/captions/T.jsonl' does not hold '/elsewhere/f.json', which source karpathy reads"
    else:  # T2 at paper scale without pointing the dep back at real T
        p, match = params(ws, case, eval_retrieval={"data": "/data/flickr30k"}), "does not hold 'data/captions/T.jsonl'"
    assert run(eval_retrieval.main, ["--params", p]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err
    assert not (ws / f"er/{case}/metrics").exists()


def test_paper_scale_open_clip_text_tower_end_to_end(aligned_workspace, monkeypatch, tmp_path):
    """embed -> tune_text -> eval_retrieval with a tiny open_clip ViT loaded through the same
    `open_clip.create_model(name, pretrained=<checkpoint>)` call ViT-B-32 / openai goes through."""
    import open_clip

    ws = aligned_workspace
    monkeypatch.chdir(ws)
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "gmail-tiny-retrieval.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "gmail-tiny-retrieval.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("gmail-tiny-retrieval", pretrained=None).state_dict(), tmp_path / "tiny.pt")
    paper = {"scale": "paper", "name": "gmail-tiny-retrieval", "pretrained": str(tmp_path / "tiny.pt"), "weights": str(tmp_path),
             "device": "cpu"}
    p = params(ws, "paper", encoder=paper, tune_text={"rows": ["real"]},
               paths={"embeddings": "er/paper/emb", "text_towers": "er/paper/towers"})
    embed.main(["--params", p])
    tune_text.main(["--params", p, "--row", "real"])
    assert json.loads((ws / "er/paper/towers/real/seed0/text.json").read_text())["scale"] == "paper"
    eval_retrieval.main(["--params", p])
    m = json.loads((ws / "er/paper/metrics/retrieval.json").read_text())
    assert m.pop("scale") == "paper" and set(m) == {"clip", "real"} and set(m["real"]) == KEYS
