"""Stages `caption@<variant>` and `eval_caption` on the tiny downstream workspace."""

import json

import numpy as np
import pytest
from helpers import VARIANTS, read_jsonl, tmp_inside, write_params

from gmail.core.cli import run
from stages import caption, eval_caption

pytestmark = pytest.mark.slow


def test_every_variant_writes_coco_results_per_seed_next_to_references(captioned_workspace):
    ws = captioned_workspace
    t_ids = [r["image_id"] for r in read_jsonl(ws / "data/captions/T.jsonl")]
    for variant in VARIANTS:
        folder = ws / "data/predictions/caption" / variant
        for seed in (0, 1):
            rows = json.loads((folder / f"seed{seed}.json").read_text())
            assert [r["image_id"] for r in rows] == t_ids and all(isinstance(r["caption"], str) for r in rows)
            assert (ws / "data/captioner" / variant / f"seed{seed}/clipcap.json").is_file()
            curve = (ws / "plots/caption" / variant / f"loss-seed{seed}.tsv").read_text().splitlines()
            assert curve[0] == "step\tloss" and len(curve) == 1 + 4  # caption.steps rows
        refs = json.loads((folder / "references.json").read_text())
        assert {a["image_id"] for a in refs["annotations"]} == set(t_ids)
        assert len(refs["annotations"]) == 5 * len(t_ids)


def test_variants_train_on_what_they_say(captioned_workspace):
    info = {v: json.loads((captioned_workspace / f"data/predictions/caption/{v}/info.json").read_text()) for v in VARIANTS}
    assert (info["synthetic"]["train_images"], info["synthetic"]["train_encoder"]) == ("generated", "f_r")
    assert (info["gmail"]["train_images"], info["gmail"]["train_encoder"]) == ("generated", "f_g")
    assert info["real"]["train_images"] == "real" and info["noise"]["train_images"] == "noise"
    # Two generated images per real B image (6 real, the last 2 held out of alignment).
    assert info["gmail_heldout"]["train_size"] == 4 and info["gmail"]["train_size"] == 12
    assert info["synthetic"]["train_size"] == 12 and info["real"]["train_size"] == info["noise"]["train_size"] == 6
    assert (info["synthetic_heldout"]["train_encoder"], info["synthetic_heldout"]["heldout_only"]) == ("f_r", True)
    assert all(i["schedule"] == "equal_steps" and i["steps"] == 4 and i["val_size"] == 0 for i in info.values())
    assert all(i["test_reading"] == "f_r" and i["test_embeddings"].endswith("real/T.f_r.npy") for i in info.values())


def test_seeds_differ_and_reruns_are_identical(captioned_workspace, monkeypatch):
    ws = captioned_workspace
    monkeypatch.chdir(ws)
    first = (ws / "data/captioner/gmail/seed0/mapping.safetensors").read_bytes()
    other = (ws / "data/captioner/gmail/seed1/mapping.safetensors").read_bytes()
    assert first != other
    p = write_params(ws / "again.yaml", ws / "params.yaml",
                     paths={"captioner": "again/models", "predictions": "again/preds", "plots": "again/plots"})
    caption.main(["--params", p, "--variant", "gmail"])
    assert (ws / "again/models/gmail/seed0/mapping.safetensors").read_bytes() == first
    assert (ws / "again/preds/gmail/seed0.json").read_text() == (ws / "data/predictions/caption/gmail/seed0.json").read_text()
    assert (ws / "again/plots/caption/gmail/loss-seed0.tsv").read_text() == (ws / "plots/caption/gmail/loss-seed0.tsv").read_text()


def test_converge_stops_early_on_held_out_images_and_keeps_the_best_weights(aligned_workspace, monkeypatch):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "conv.yaml", ws / "params.yaml",
                     caption={"schedule": "converge", "max_steps": 40, "eval_every": 2, "patience": 2, "val_fraction": 0.34,
                              "seeds": 1, "lr": 0.05},
                     paths={"captioner": "conv/models", "predictions": "conv/preds", "plots": "conv/plots"})
    caption.main(["--params", p, "--variant", "gmail"])
    info = json.loads((ws / "conv/preds/gmail/info.json").read_text())
    run0 = info["runs"]["seed0"]
    assert info["schedule"] == "converge" and info["val_size"] == 4 and info["train_size"] == 8  # 12 rows x 0.34
    val = [line.split("\t") for line in (ws / "conv/plots/caption/gmail/val-loss-seed0.tsv").read_text().splitlines()[1:]]
    steps, losses = [int(a) for a, _ in val], [float(b) for _, b in val]
    assert steps == list(range(2, run0["steps_run"] + 1, 2))
    # The kept weights are those of the best check, and the run ended `patience` checks after it (or at the cap).
    assert run0["best_val_loss"] == min(losses) and run0["best_step"] == steps[losses.index(min(losses))]
    assert run0["steps_run"] == 40 or run0["steps_run"] == run0["best_step"] + 2 * 2
    assert len((ws / "conv/plots/caption/gmail/loss-seed0.tsv").read_text().splitlines()) == 1 + run0["steps_run"]


def test_test_reading_f_g_reads_real_t_through_the_lora_model(aligned_workspace, monkeypatch):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "fg.yaml", ws / "params.yaml", caption={"test_reading": "f_g", "seeds": 1},
                     paths={"captioner": "fg/models", "predictions": "fg/preds", "plots": "fg/plots"})
    for variant in ("gmail", "synthetic"):
        caption.main(["--params", p, "--variant", variant])
    gmail = json.loads((ws / "fg/preds/gmail/info.json").read_text())
    assert gmail["test_reading"] == "f_g" and gmail["test_embeddings"].endswith("generated/f_g/T.f_g.npy")
    # A variant trained on f_r embeddings has no LoRA model: it reads T through f_r.
    assert json.loads((ws / "fg/preds/synthetic/info.json").read_text())["test_reading"] == "f_r"


def test_eval_caption_writes_mean_and_std_per_variant(captioned_workspace, monkeypatch):
    ws = captioned_workspace
    monkeypatch.chdir(ws)
    eval_caption.main(["--params", "params.yaml"])
    for variant in VARIANTS:
        m = json.loads((ws / f"metrics/caption/{variant}.json").read_text())
        per_seed = json.loads((ws / f"data/eval_caption/{variant}.json").read_text())["per_seed"]
        for key in ("bleu4", "meteor", "rouge_l", "cider", "wmd"):
            assert set(m[key]) == {"mean", "std"} and m[key]["mean"] >= 0 and m[key]["std"] >= 0
            values = [per_seed[s][key] for s in ("seed0", "seed1")]
            assert m[key]["mean"] == pytest.approx(np.mean(values)) and m[key]["std"] == pytest.approx(np.std(values))
        assert m["spice"] is None and m["spice_skipped"] and "/" + "tmp" not in m["spice_skipped"]
        assert m["seeds"] == 2 and m["test_reading"] == "f_r"


def test_eval_caption_scores_perfect_predictions_as_perfect(captioned_workspace, monkeypatch, tmp_path):
    ws = captioned_workspace
    monkeypatch.chdir(ws)
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    folder = tmp_path / "preds/perfect"
    folder.mkdir(parents=True)
    test = read_jsonl(ws / "data/captions/T.jsonl")
    (folder / "seed0.json").write_text(json.dumps([{"image_id": r["image_id"], "caption": r["captions"][0]} for r in test]))
    p = write_params(ws / "perfect.yaml", ws / "params.yaml", replace=("variants",),
                     variants={"perfect": {"images": "real", "encoder": "f_r"}}, eval_caption={"wmd": False},
                     paths={"predictions": str(tmp_path / "preds"), "metrics": str(tmp_path / "m"),
                            "caption_scores": str(tmp_path / "s")})
    eval_caption.main(["--params", p])
    m = json.loads((tmp_path / "m/caption/perfect.json").read_text())
    assert m["bleu1"]["mean"] == pytest.approx(100, abs=1e-3) and m["wmd"] is None


def test_caption_errors_are_one_line(aligned_workspace, monkeypatch, capsys, tmp_path):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    out = {"captioner": str(tmp_path / "m"), "predictions": str(tmp_path / "p"), "plots": str(tmp_path / "pl")}
    base = ws / "params.yaml"
    cases = [
        (["--variant", "nope"], write_params(ws / "c1.yaml", base, paths=out), "unknown captioner variant"),
        (["--variant", "bad"], write_params(ws / "c2.yaml", base, paths=out, variants={"bad": {"images": "real", "encoder": "f_g"}}),
         "variants.bad.encoder"),
        (["--variant", "gmail"], write_params(ws / "c3.yaml", base, paths={**out, "embeddings": str(tmp_path / "none")}), "embeddings"),
        (["--variant", "gmail"], write_params(ws / "c4.yaml", base, paths=out, caption={"test_reading": "lora"}), "caption.test_reading"),
        (["--variant", "gmail_heldout"], write_params(ws / "c5.yaml", base, paths=out, align={"heldout": 0}), "align.heldout"),
        (["--variant", "gmail"], write_params(ws / "c6.yaml", base, paths=out, align={"rank": "x"}), "align.rank"),
    ]
    for args, params, message in cases:
        assert run(caption.main, ["--params", params, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not any((tmp_path / d).exists() for d in ("m", "p", "pl"))


def test_eval_caption_rejects_incomplete_predictions(captioned_workspace, monkeypatch, capsys, tmp_path):
    ws = captioned_workspace
    monkeypatch.chdir(ws)
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    folder = tmp_path / "preds/v"
    folder.mkdir(parents=True)
    (folder / "seed0.json").write_text(json.dumps([{"image_id": "x", "caption": "a red circle"}]))
    p = write_params(ws / "inc.yaml", ws / "params.yaml", replace=("variants",), variants={"v": {"images": "real", "encoder": "f_r"}},
                     paths={"predictions": str(tmp_path / "preds"), "metrics": str(tmp_path / "m"),
                            "caption_scores": str(tmp_path / "s")})
    assert run(eval_caption.main, ["--params", p]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exactly once" in err[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()
