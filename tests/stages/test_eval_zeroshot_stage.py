"""Stage `eval_zeroshot` on the tiny downstream workspace after `tune_text` for three rows:
real T by colour/shape/size (mini), and a CLIP_benchmark dataset built from a local root."""

import contextlib
import json

import numpy as np
import pytest
from helpers import write_params
from PIL import Image

from gmail.core.cli import run
from gmail.downstream.text_tuning import load_text_tower, load_tuned_tower
from gmail.eval.retrieval import real_test_set
from gmail.eval.zeroshot_classification import MINI_TEMPLATES, attribute_labels, class_weights, classify, mini_classnames
from stages import eval_zeroshot, tune_text

pytestmark = pytest.mark.slow

ROWS = ["synthetic", "gmail", "real"]
TUNE = {"rows": ROWS, "seeds": 2, "steps": 3, "batch_size": 4, "lr": 1.0e-3, "weight_decay": 0.01, "device": "cpu"}
EVAL = {"source": "T", "attributes": ["colour", "shape", "size"], "datasets": [], "root": ""}


def params(ws, name, **sections):
    paths = {"text_towers": "ez/towers", "plots": "ez/plots", "stats": f"ez/{name}/stats", "metrics": f"ez/{name}/metrics",
             **sections.pop("paths", {})}
    return write_params(ws / f"ez/{name}.yaml", ws / "params.yaml", paths=paths,
                        tune_text={**TUNE, **sections.pop("tune_text", {})},
                        eval_zeroshot={**EVAL, **sections.pop("eval_zeroshot", {})}, **sections)


@pytest.fixture(scope="module")
def tuned(aligned_workspace):
    ws = aligned_workspace
    with contextlib.chdir(ws):
        p = params(ws, "tune")
        for row in ROWS:
            tune_text.main(["--params", p, "--row", row])
    return ws


def test_every_row_reports_accuracy_and_per_class_recall_per_attribute(tuned, monkeypatch):
    ws = tuned
    monkeypatch.chdir(ws)
    eval_zeroshot.main(["--params", params(ws, "main")])
    m = json.loads((ws / "ez/main/metrics/zeroshot.json").read_text())
    assert m.pop("scale") == "mini" and set(m) == {"clip", *ROWS}
    keys = {f"{a}_{k}" for a in ("colour", "shape", "size") for k in ("acc1", "mean_per_class_recall")}
    for row, values in m.items():
        assert set(values) == keys, row
        assert all(0 <= v["mean"] <= 100 and v["std"] >= 0 for v in values.values())
    # The gmail row is its two towers' scores, averaged (population std).
    records, z = real_test_set(ws / "data/captions", ws / "data/embeddings")
    base = load_text_tower("mini", str(ws / "clip"))
    classes = mini_classnames("size")
    labels = attribute_labels(records, "size", classes)
    scores = [classify(z, class_weights(load_tuned_tower(base, ws / f"ez/towers/gmail/seed{s}"), classes, MINI_TEMPLATES["size"]),
                       labels)["acc1"] for s in (0, 1)]
    assert m["gmail"]["size_acc1"] == {"mean": pytest.approx(np.mean(scores)), "std": pytest.approx(np.std(scores))}


def test_clip_benchmark_source_builds_datasets_from_a_local_root(tuned, monkeypatch, tmp_path):
    ws = tuned
    monkeypatch.chdir(ws)
    for i, c in enumerate(["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]):
        (tmp_path / "fer2013/test" / c).mkdir(parents=True)
        Image.new("RGB", (48, 48), (30 * i, 0, 90)).save(tmp_path / "fer2013/test" / c / "0.png")
    p = params(ws, "cb", eval_zeroshot={"source": "clip_benchmark", "datasets": ["fer2013"], "root": str(tmp_path / "{dataset}"),
                                            "data": str(tmp_path)})
    eval_zeroshot.main(["--params", p])
    m = json.loads((ws / "ez/cb/metrics/zeroshot.json").read_text())
    m.pop("scale")
    assert set(m["real"]) == {"fer2013_acc1", "fer2013_mean_per_class_recall"}
    assert any(m["clip"]["fer2013_acc1"]["mean"] == pytest.approx(100 * k / 7) for k in range(8))  # 7 images, one tower
    assert all(0 <= m[r][k]["mean"] <= 100 for r in m for k in m[r])


@pytest.mark.parametrize("case", ["missing_tower", "unknown_row", "no_templates", "missing_root", "root_outside_data"])
def test_bad_input_is_one_line_exit_2_and_writes_no_metrics(tuned, monkeypatch, capsys, case, tmp_path):
    ws = tuned
    monkeypatch.chdir(ws)
    if case == "missing_tower":
        p, match = params(ws, case, tune_text={"seeds": 3}), "lacks text.safetensors"  # no seed2 towers were tuned
    elif case == "unknown_row":
        p, match = params(ws, case, tune_text={"rows": ["realistic"]}), "unknown row 'realistic'"
    elif case == "no_templates":
        p, match = params(ws, case, eval_zeroshot={"attributes": ["colour", "position"]}), "no templates for 'position'"
    elif case == "root_outside_data":
        p = params(ws, case, eval_zeroshot={"source": "clip_benchmark", "datasets": ["fer2013"], "root": str(tmp_path / "{dataset}")})
        match = f"eval_zeroshot.data='data/captions/T.jsonl' does not hold '{tmp_path / 'fer2013'}'"
    else:
        p, match = params(ws, case, eval_zeroshot={"source": "clip_benchmark", "datasets": ["fer2013"],
                                                   "root": str(tmp_path / "absent"), "data": str(tmp_path)}), "not found"
    assert run(eval_zeroshot.main, ["--params", p]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err
    assert not (ws / f"ez/{case}/metrics").exists()
