import json

import numpy as np
import pytest

from conftest import write_params
from gmail.cli import run
from stages import align, caption, eval_caption


@pytest.fixture(scope="module")
def ws(embedded_workspace):
    import os

    old = os.getcwd()
    os.chdir(embedded_workspace)
    try:
        for source in ("generated", "noise"):
            align.main(["--params", "params.yaml", "--source", source, "--metrics", f"metrics/align-{source}.json"])
        for variant in ("synthetic", "gmail", "real", "gmail_heldout", "noise"):
            caption.main(["--params", "params.yaml", "--variant", variant])
    finally:
        os.chdir(old)
    return embedded_workspace


def test_every_variant_writes_coco_results_per_seed_next_to_references(ws):
    t_ids = [json.loads(line)["image_id"] for line in (ws / "data/captions/T.jsonl").read_text().splitlines()]
    for variant in ("synthetic", "gmail", "real", "gmail_heldout", "noise"):
        folder = ws / "data/predictions/caption" / variant
        for seed in (0, 1):
            rows = json.loads((folder / f"seed{seed}.json").read_text())
            assert [r["image_id"] for r in rows] == t_ids and all(isinstance(r["caption"], str) for r in rows)
            assert (ws / "data/captioner" / variant / f"seed{seed}/clipcap.json").is_file()
        refs = json.loads((folder / "references.json").read_text())
        assert {a["image_id"] for a in refs["annotations"]} == set(t_ids)
        assert len(refs["annotations"]) == 5 * len(t_ids)


def test_variants_train_on_what_they_say(ws):
    info = {v: json.loads((ws / f"data/predictions/caption/{v}/info.json").read_text())
            for v in ("synthetic", "gmail", "real", "gmail_heldout", "noise")}
    assert (info["synthetic"]["train_images"], info["synthetic"]["train_encoder"]) == ("generated", "f_r")
    assert (info["gmail"]["train_images"], info["gmail"]["train_encoder"]) == ("generated", "f_g")
    assert info["real"]["train_images"] == "real" and info["noise"]["train_images"] == "noise"
    assert info["gmail_heldout"]["train_size"] == 2 and info["gmail"]["train_size"] == 6
    assert all(i["test_reading"] == "f_r" and i["test_embeddings"].endswith("real/T.f_r.npy") for i in info.values())


def test_seeds_differ_and_reruns_are_identical(ws, monkeypatch):
    monkeypatch.chdir(ws)
    first = (ws / "data/captioner/gmail/seed0/mapping.safetensors").read_bytes()
    other = (ws / "data/captioner/gmail/seed1/mapping.safetensors").read_bytes()
    assert first != other
    p = write_params(ws, "again.yaml", caption={"models": "again/models", "predictions": "again/preds"})
    caption.main(["--params", p, "--variant", "gmail"])
    assert (ws / "again/models/gmail/seed0/mapping.safetensors").read_bytes() == first
    assert (ws / "again/preds/gmail/seed0.json").read_text() == (ws / "data/predictions/caption/gmail/seed0.json").read_text()


def test_test_reading_f_g_reads_real_t_through_the_lora_model(ws, monkeypatch):
    monkeypatch.chdir(ws)
    p = write_params(ws, "fg.yaml", caption={"test_reading": "f_g", "models": "fg/models", "predictions": "fg/preds", "seeds": 1})
    for variant in ("gmail", "synthetic"):
        caption.main(["--params", p, "--variant", variant])
    gmail = json.loads((ws / "fg/preds/gmail/info.json").read_text())
    assert gmail["test_reading"] == "f_g" and gmail["test_embeddings"].endswith("generated/T.f_g.npy")
    # A variant trained on f_r embeddings has no LoRA model: it reads T through f_r.
    assert json.loads((ws / "fg/preds/synthetic/info.json").read_text())["test_reading"] == "f_r"


def test_eval_caption_writes_mean_and_std_per_variant(ws, monkeypatch):
    monkeypatch.chdir(ws)
    eval_caption.main(["--params", "params.yaml"])
    for variant in ("synthetic", "gmail", "real", "gmail_heldout", "noise"):
        m = json.loads((ws / f"metrics/caption/{variant}.json").read_text())
        per_seed = json.loads((ws / f"data/eval_caption/{variant}.json").read_text())["per_seed"]
        for key in ("bleu4", "meteor", "rouge_l", "cider", "wmd"):
            assert set(m[key]) == {"mean", "std"} and m[key]["mean"] >= 0 and m[key]["std"] >= 0
            values = [per_seed[s][key] for s in ("seed0", "seed1")]
            assert m[key]["mean"] == pytest.approx(np.mean(values)) and m[key]["std"] == pytest.approx(np.std(values))
        assert m["spice"] is None and m["spice_skipped"]
        assert m["seeds"] == 2 and m["test_reading"] == "f_r"


def test_eval_caption_scores_perfect_predictions_as_perfect(ws, monkeypatch, tmp_path):
    monkeypatch.chdir(ws)
    test = [json.loads(line) for line in (ws / "data/captions/T.jsonl").read_text().splitlines()]
    folder = tmp_path / "preds/perfect"
    folder.mkdir(parents=True)
    (folder / "seed0.json").write_text(json.dumps([{"image_id": r["image_id"], "caption": r["captions"][0]} for r in test]))
    p = write_params(ws, "perfect.yaml", replace=("variants",), variants={"perfect": {"images": "real", "encoder": "f_r"}},
                     eval_caption={"predictions": str(tmp_path / "preds"), "metrics": str(tmp_path / "m"), "wmd": False,
                                   "scores": str(tmp_path / "s")})
    eval_caption.main(["--params", p])
    m = json.loads((tmp_path / "m/perfect.json").read_text())
    assert m["bleu1"]["mean"] == pytest.approx(100, abs=1e-3) and m["wmd"] is None


def test_caption_errors_are_one_line(ws, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ws)
    out = {"models": str(tmp_path / "m"), "predictions": str(tmp_path / "p")}
    cases = [
        (["--variant", "nope"], write_params(ws, "c1.yaml", caption=out), "unknown captioner variant"),
        (["--variant", "bad"], write_params(ws, "c2.yaml", caption=out, variants={"bad": {"images": "real", "encoder": "f_g"}}), "variants.bad.encoder"),
        (["--variant", "gmail"], write_params(ws, "c3.yaml", caption={**out, "embeddings": str(tmp_path / "none")}), "embeddings"),
        (["--variant", "gmail"], write_params(ws, "c4.yaml", caption={**out, "test_reading": "lora"}), "caption.test_reading"),
    ]
    for args, params, message in cases:
        assert run(caption.main, ["--params", params, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


def test_eval_caption_rejects_incomplete_predictions(ws, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ws)
    folder = tmp_path / "preds/v"
    folder.mkdir(parents=True)
    (folder / "seed0.json").write_text(json.dumps([{"image_id": "x", "caption": "a red circle"}]))
    p = write_params(ws, "inc.yaml", replace=("variants",), variants={"v": {"images": "real", "encoder": "f_r"}},
                     eval_caption={"predictions": str(tmp_path / "preds"), "metrics": str(tmp_path / "m"),
                                   "scores": str(tmp_path / "s")})
    assert run(eval_caption.main, ["--params", p]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exactly once" in err[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()
