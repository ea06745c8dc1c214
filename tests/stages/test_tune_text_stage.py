"""Stage `tune_text@<row>` on the tiny downstream workspace (B 6 images, random-init mini CLIP)."""

import json

import pytest
from helpers import write_params

from gmail.core.cli import run
from stages import tune_text

pytestmark = pytest.mark.slow

TUNE = {"rows": ["synthetic", "gmail", "real"], "seeds": 2, "steps": 3, "batch_size": 4, "lr": 1.0e-3,
        "weight_decay": 0.01, "device": "cpu"}


def params(ws, name, **sections):
    out = f"tt_{name}"
    paths = {"text_towers": f"{out}/towers", "plots": f"{out}/plots", "stats": f"{out}/stats", **sections.pop("paths", {})}
    return write_params(ws / f"{out}.yaml", ws / "params.yaml", tune_text={**TUNE, **sections.pop("tune_text", {})},
                        paths=paths, **sections)


def test_each_seed_gets_a_tower_info_and_loss_curve_and_reruns_are_identical(aligned_workspace, monkeypatch):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = params(ws, "a")
    tune_text.main(["--params", p, "--row", "gmail"])
    for seed in (0, 1):
        folder = ws / "tt_a/towers/gmail" / f"seed{seed}"
        info = json.loads((folder / "text.json").read_text())
        assert (info["row"], info["train_images"], info["train_encoder"], info["seed"]) == ("gmail", "generated", "f_g", seed)
        assert info["scale"] == "mini" and info["train_size"] == 12 and info["steps"] == 3
        curve = (ws / "tt_a/plots/tune_text/gmail" / f"loss-seed{seed}.tsv").read_text().splitlines()
        assert curve[0] == "step\tloss" and len(curve) == 1 + 3
    assert json.loads((ws / "tt_a/stats/tune_text/gmail.json").read_text())["seconds"] > 0
    first = (ws / "tt_a/towers/gmail/seed0/text.safetensors").read_bytes()
    assert first != (ws / "tt_a/towers/gmail/seed1/text.safetensors").read_bytes()
    tune_text.main(["--params", params(ws, "b"), "--row", "gmail"])
    assert (ws / "tt_b/towers/gmail/seed0/text.safetensors").read_bytes() == first


def test_rows_train_on_their_variants_own_embeddings(aligned_workspace, monkeypatch):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = params(ws, "c", tune_text={"seeds": 1})
    for row in ("synthetic", "real", "gmail_heldout"):  # any variant works as a row, held-out ones too
        tune_text.main(["--params", p, "--row", row])
    info = {r: json.loads((ws / f"tt_c/towers/{r}/seed0/text.json").read_text()) for r in ("synthetic", "real", "gmail_heldout")}
    assert (info["synthetic"]["train_images"], info["synthetic"]["train_encoder"]) == ("generated", "f_r")
    assert info["real"]["train_images"] == "real"
    assert info["gmail_heldout"]["heldout_only"] and info["gmail_heldout"]["train_size"] == 4


@pytest.mark.parametrize("row,match", [("gmial", "unknown row 'gmial'"), ("clip", "untuned text tower")])
def test_unknown_or_untunable_row_is_one_line_exit_2_and_writes_nothing(aligned_workspace, monkeypatch, capsys, row, match):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = params(ws, "bad")
    assert run(tune_text.main, ["--params", p, "--row", row]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err
    assert not (ws / "tt_bad").exists()


def test_missing_embeddings_is_one_line_exit_2_and_leaves_no_towers(aligned_workspace, monkeypatch, capsys):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = params(ws, "noemb", paths={"embeddings": "nowhere"})
    assert run(tune_text.main, ["--params", p, "--row", "gmail"]) == 2
    assert "embeddings" in capsys.readouterr().err and not (ws / "tt_noemb/towers/gmail").exists()
