"""Stage `eval_vqa` on the tiny aligned workspace (B 6 images, 2 held out; T 3 images)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from helpers import read_jsonl, tmp_inside, write_params

import gmail.data.easy_vqa_questions as questions_module
from gmail.core.cli import run
from stages import eval_vqa

pytestmark = pytest.mark.slow

VARIANTS = ["synthetic", "gmail", "real", "gmail_heldout", "synthetic_heldout"]
KEYS = ("overall", "colour", "shape", "yes_no")
EVAL_VQA = {"datasets": ["easy_vqa"], "variants": VARIANTS, "seeds": 2, "hidden": 16, "layers": 2, "steps": 30, "batch_size": 16, "lr": 1e-2,
            "weight_decay": 0.01, "test_reading": "f_r", "device": "cpu"}


def vqa_params(ws, name: str, **sections) -> str:
    """The workspace's params with an eval_vqa section, `synthetic_heldout` defined, and outputs under `<name>/`."""
    paths = {"vqa_scores": f"{name}/scores", "metrics": f"{name}/metrics", "stats": f"{name}/stats",
             **sections.pop("paths", {})}
    return write_params(ws / f"{name}.yaml", ws / "params.yaml", paths=paths,
                        variants={"synthetic_heldout": {"images": "generated", "encoder": "f_r", "heldout_only": True},
                                  **sections.pop("variants", {})},
                        eval_vqa={**EVAL_VQA, **sections.pop("eval_vqa", {})}, **sections)


def t_questions(ws):
    """easy-vqa's test questions about the workspace's T images, read straight from the package."""
    import easy_vqa

    t_ids = {int(r["image_id"].split("-")[1]) for r in read_jsonl(ws / "data/captions/T.jsonl")}
    return [(q, a) for q, a, i in zip(*easy_vqa.get_test_questions()) if i in t_ids]


@pytest.fixture(scope="module")
def vqa_run(aligned_workspace):
    import os

    ws = aligned_workspace
    old = os.getcwd()
    os.chdir(ws)
    try:
        eval_vqa.main(["--dataset", "easy_vqa", "--params", vqa_params(ws, "vqa")])
    finally:
        os.chdir(old)
    return ws


def test_metrics_hold_mean_and_std_of_every_variant_and_baseline(vqa_run):
    ws = vqa_run
    metrics = json.loads((ws / "vqa/metrics/vqa.json").read_text())
    details = json.loads((ws / "vqa/scores/per_seed.json").read_text())
    assert set(metrics) == set(VARIANTS) | {"question_only", "majority"}
    for name in VARIANTS + ["question_only"]:
        per_seed = details["runs"][name]["per_seed"]
        assert sorted(per_seed) == ["seed0", "seed1"] and metrics[name]["seeds"] == 2
        for key in KEYS:
            values = [per_seed[s][key] for s in ("seed0", "seed1")]
            assert all(0 <= v <= 100 for v in values)
            assert metrics[name][key]["mean"] == pytest.approx(np.mean(values))
            assert metrics[name][key]["std"] == pytest.approx(np.std(values))
        assert metrics[name]["test_reading"] == ("f_r" if name != "question_only" else None)
    assert details["test_questions"] == len(t_questions(ws))
    assert not any("/tmp" in json.dumps(v) for v in metrics.values())


def test_heldout_variants_train_on_the_held_out_images_only(vqa_run):
    metrics = json.loads((vqa_run / "vqa/metrics/vqa.json").read_text())
    import easy_vqa

    b_ids = [int(r["image_id"].split("-")[1]) for r in read_jsonl(vqa_run / "data/captions/B.jsonl")]
    per_image = Counter(i for i in easy_vqa.get_train_questions()[2] if i in set(b_ids))
    # Two generated images per B image, each asked its real image's questions; align.heldout = 2: the last two.
    for name in ("gmail_heldout", "synthetic_heldout"):
        assert metrics[name]["train_images"] == 4 and metrics[name]["train_questions"] == 2 * sum(per_image[i] for i in b_ids[-2:])
    for name in ("gmail", "synthetic"):
        assert metrics[name]["train_images"] == 12 and metrics[name]["train_questions"] == 2 * sum(per_image.values())
    for name in ("real", "question_only"):
        assert metrics[name]["train_images"] == 6 and metrics[name]["train_questions"] == sum(per_image.values())


def test_majority_baseline_is_the_share_of_the_majority_training_answer(vqa_run):
    import easy_vqa

    metrics = json.loads((vqa_run / "vqa/metrics/vqa.json").read_text())
    b_ids = {int(r["image_id"].split("-")[1]) for r in read_jsonl(vqa_run / "data/captions/B.jsonl")}
    train_answers = Counter(a for a, i in zip(*easy_vqa.get_train_questions()[1:]) if i in b_ids)
    majority = min(train_answers, key=lambda a: (-train_answers[a], a))
    test = t_questions(vqa_run)
    assert metrics["majority"]["answer"] == majority
    assert metrics["majority"]["overall"] == {"mean": pytest.approx(100 * sum(a == majority for _, a in test) / len(test)),
                                              "std": 0.0}


def test_reruns_are_identical_and_the_timing_goes_to_stats(vqa_run, monkeypatch):
    ws = vqa_run
    monkeypatch.chdir(ws)
    eval_vqa.main(["--dataset", "easy_vqa", "--params", vqa_params(ws, "again")])
    assert (ws / "again/metrics/vqa.json").read_text() == (ws / "vqa/metrics/vqa.json").read_text()
    assert (ws / "again/scores/per_seed.json").read_text() == (ws / "vqa/scores/per_seed.json").read_text()
    stats = json.loads((ws / "again/stats/eval_vqa.json").read_text())
    assert stats["seconds"] > 0 and stats["device"] == "cpu"


def test_test_reading_f_g_reads_real_t_through_the_lora_model_where_there_is_one(aligned_workspace, monkeypatch):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    eval_vqa.main(["--dataset", "easy_vqa", "--params", vqa_params(ws, "fg", eval_vqa={"variants": ["gmail", "synthetic"], "seeds": 1,
                                                              "test_reading": "f_g"})])
    metrics = json.loads((ws / "fg/metrics/vqa.json").read_text())
    runs = json.loads((ws / "fg/scores/per_seed.json").read_text())["runs"]
    assert metrics["gmail"]["test_reading"] == "f_g" and runs["gmail"]["test_embeddings"] == "generated/f_g/T.f_g.npy"
    assert metrics["synthetic"]["test_reading"] == "f_r" and runs["synthetic"]["test_embeddings"] == "real/T.f_r.npy"


def _fails(ws, params, capsys, message):
    assert run(eval_vqa.main, ["--dataset", "easy_vqa", "--params", params]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def _nothing_written(ws, name):
    return not any((ws / name / part).exists() for part in ("scores", "metrics", "stats"))


def test_a_question_about_an_image_not_in_t_is_a_one_line_error(aligned_workspace, monkeypatch, capsys):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    real = questions_module.easy_vqa_questions

    def with_a_stray_question(records, split):  # as if the question source named an image outside T
        rows = real(records, split)
        return rows + [{"image_id": "test-00999", "question": "what color is the circle?", "answer": "red"}] if split == "T" else rows

    monkeypatch.setattr(questions_module, "easy_vqa_questions", with_a_stray_question)
    _fails(ws, vqa_params(ws, "stray"), capsys, "about image 'test-00999', which is not in split T")
    assert _nothing_written(ws, "stray")


@pytest.mark.parametrize("question,answer,message", [
    ("", "yes", "empty VQA question"), ("is there a circle?", "maybe", "unknown answer 'maybe'")])
def test_a_bad_package_question_is_a_one_line_error(aligned_workspace, monkeypatch, capsys, question, answer, message):
    import easy_vqa

    ws = aligned_workspace
    monkeypatch.chdir(ws)
    texts, answers, ids = easy_vqa.get_test_questions()
    monkeypatch.setattr(easy_vqa, "get_test_questions", lambda: ([question] + texts, [answer] + answers, [0] + ids))
    _fails(ws, vqa_params(ws, "badq"), capsys, message)
    assert _nothing_written(ws, "badq")


def test_unknown_variant_missing_embeddings_and_bad_params_are_one_line_errors(aligned_workspace, monkeypatch, capsys,
                                                                                tmp_path):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    (tmp_path / "only_real").mkdir()
    (tmp_path / "only_real/real").symlink_to(ws / "data/embeddings/real")
    cases = [
        (vqa_params(ws, "e1", eval_vqa={"variants": ["gmail", "pixels"]}), "unknown variant 'pixels' in eval_vqa.variants"),
        (vqa_params(ws, "e2", paths={"embeddings": str(tmp_path / "only_real")}), "generated/f_r/ids.json not found"),
        (vqa_params(ws, "e3", paths={"embeddings": str(tmp_path / "none")}), "embeddings"),
        (vqa_params(ws, "e4", eval_vqa={"test_reading": "f_x"}), "eval_vqa.test_reading"),
        (vqa_params(ws, "e5", eval_vqa={"steps": 0}), "eval_vqa.seeds, hidden, layers, steps and batch_size"),
        (vqa_params(ws, "e6", eval_vqa={"patience": 4}), "unknown params key eval_vqa.patience"),
        (vqa_params(ws, "e7", eval_vqa={"variants": []}), "eval_vqa.variants is empty"),
    ]
    for i, (params, message) in enumerate(cases, 1):
        _fails(ws, params, capsys, message)
        assert _nothing_written(ws, f"e{i}")


@pytest.mark.parametrize("datasets,key,message", [
    (["easy_vqa"], "vqav2", "'vqav2' is not in eval_vqa.datasets (easy_vqa)"),
    ([], "easy_vqa", "is not in eval_vqa.datasets (empty)"),          # paper scale: the stage is not in the DAG
    (["vqav2"], "vqav2", "eval_vqa.datasets has 'vqav2': list each of easy_vqa"),
])
def test_a_question_set_it_cannot_read_is_a_one_line_error(datasets, key, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", eval_vqa={"datasets": datasets})
    assert run(eval_vqa.main, ["--dataset", key, "--params", params]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not any(tmp_path.glob("data")) and not any(tmp_path.glob("metrics"))
