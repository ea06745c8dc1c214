"""Stages `embed` and `align@<source>` (and the `encode` utility) on the tiny downstream workspace."""

import json

import numpy as np
import pytest
from helpers import write_params

from gmail.core.cli import run
from stages import align, encode

pytestmark = pytest.mark.slow


def _variant_paths(ws, name):
    """Paths for a side run in `ws/<name>/` that still reads the workspace's real embeddings."""
    (ws / name / "emb").mkdir(parents=True, exist_ok=True)
    if not (ws / name / "emb/real").exists():
        (ws / name / "emb/real").symlink_to(ws / "data/embeddings/real")
    return {"align": f"{name}/align", "embeddings": f"{name}/emb", "metrics": f"{name}/metrics", "plots": f"{name}/plots"}


def test_embed_writes_f_r_embeddings_of_real_b_and_t(embedded_workspace):
    ws = embedded_workspace
    ids = json.loads((ws / "data/embeddings/real/ids.json").read_text())
    assert len(ids["B"]) == 6 and len(ids["T"]) == 3
    z = np.load(ws / "data/embeddings/real/B.f_r.npy")
    assert z.shape == (6, 256) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)


def test_align_writes_adapter_embeddings_metrics_curve_and_plot(aligned_workspace):
    ws = aligned_workspace
    assert (ws / "data/align/generated/adapter/adapter_config.json").is_file()
    m = json.loads((ws / "metrics/align/generated.json").read_text())
    for key in ("cos_before", "cos_after"):
        assert set(m[key]) == {"aligned", "heldout"}
        assert all(-1 <= v <= 1 for v in m[key].values())
    assert m["cos_after"]["aligned"] != m["cos_before"]["aligned"]
    assert m["pairs_aligned"] == 4 and m["pairs_heldout"] == 2
    emb = ws / "data/embeddings/generated"
    before, after = np.load(emb / "B.f_r.npy"), np.load(emb / "B.f_g.npy")
    assert before.shape == after.shape == (6, 256) and not np.allclose(before, after)
    assert np.load(emb / "T.f_g.npy").shape == (3, 256)
    # f_r's view of the generated images matches what the frozen encoder gives: cos_before.
    real = np.load(ws / "data/embeddings/real/B.f_r.npy")
    assert m["cos_before"]["aligned"] == pytest.approx(float((before[:4] * real[:4]).sum(1).mean()), abs=1e-5)
    # One loss per optimiser step, the last 20 averaging to the reported final loss.
    rows = (ws / "plots/align/loss-generated.tsv").read_text().splitlines()
    losses = [float(r.split("\t")[1]) for r in rows[1:]]
    assert rows[0] == "step\tloss" and len(losses) == 3 and m["final_loss"] == pytest.approx(np.mean(losses))
    assert (ws / "plots/align/tsne-generated.png").stat().st_size > 0


def test_noise_source_aligns_noise_images(aligned_workspace):
    ws = aligned_workspace
    assert json.loads((ws / "metrics/align/noise.json").read_text())["source"] == "noise"
    gen = np.load(ws / "data/embeddings/generated/B.f_r.npy")
    noise = np.load(ws / "data/embeddings/noise/B.f_r.npy")
    assert noise.shape == gen.shape and not np.allclose(noise, gen)


def test_zero_steps_is_alignment_off(embedded_workspace, monkeypatch):
    ws = embedded_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "off.yaml", ws / "params.yaml", align={"steps": 0}, paths=_variant_paths(ws, "off"))
    align.main(["--params", p, "--source", "generated"])
    emb = ws / "off/emb/generated"
    assert np.allclose(np.load(emb / "B.f_r.npy"), np.load(emb / "B.f_g.npy"), atol=1e-6)
    m = json.loads((ws / "off/metrics/align/generated.json").read_text())
    assert m["cos_after"] == pytest.approx(m["cos_before"]) and m["final_loss"] is None
    assert (ws / "off/plots/align/loss-generated.tsv").read_text() == "step\tloss\n"


def test_full_rank_saves_weights(embedded_workspace, monkeypatch):
    ws = embedded_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "full.yaml", ws / "params.yaml", align={"rank": "full"}, paths=_variant_paths(ws, "full"))
    align.main(["--params", p, "--source", "generated"])
    assert (ws / "full/align/generated/f_g.safetensors").is_file()
    assert not (ws / "full/align/generated/adapter").exists()


def test_layers_all_puts_lora_in_every_block(aligned_workspace, monkeypatch):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "all.yaml", ws / "params.yaml", align={"layers": "all"}, paths=_variant_paths(ws, "all"))
    align.main(["--params", p, "--source", "generated"])
    m = json.loads((ws / "all/metrics/align/generated.json").read_text())
    assert m["layers"] == "all" and m["cos_after"]["aligned"] != pytest.approx(m["cos_before"]["aligned"])
    config = json.loads((ws / "all/align/generated/adapter/adapter_config.json").read_text())
    assert "conv_pw|conv_pwl" in config["target_modules"]
    # The f_r view is the same whichever layers get LoRA.
    assert np.allclose(np.load(ws / "all/emb/generated/B.f_r.npy"), np.load(ws / "data/embeddings/generated/B.f_r.npy"), atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, "four", 2.5])
def test_bad_rank_is_one_line_error(embedded_workspace, monkeypatch, capsys, bad):
    ws = embedded_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "bad.yaml", ws / "params.yaml", align={"rank": bad}, paths=_variant_paths(ws, "bad"))
    assert run(align.main, ["--params", p, "--source", "generated"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "align.rank" in err[0]
    assert not (ws / "bad/align").exists() and not (ws / "bad/metrics").exists()


def test_mismatched_pairs_missing_clip_missing_embeddings_and_bad_source_are_errors(embedded_workspace, monkeypatch,
                                                                                   capsys, tmp_path):
    ws = embedded_workspace
    monkeypatch.chdir(ws)
    short = tmp_path / "gen"
    short.mkdir()
    lines = (ws / "data/generated/generated.jsonl").read_text().splitlines()[:-1]
    (short / "generated.jsonl").write_text("\n".join(lines) + "\n")
    (short / "images").symlink_to(ws / "data/generated/images")
    (tmp_path / "e").mkdir()
    (tmp_path / "e/real").symlink_to(ws / "data/embeddings/real")
    out = {"align": str(tmp_path / "a"), "embeddings": str(tmp_path / "e"), "metrics": str(tmp_path / "m")}
    base = ws / "params.yaml"
    cases = [
        (write_params(ws / "e1.yaml", base, paths={**out, "generated": str(short)}), "generated", "do not pair"),
        (write_params(ws / "e2.yaml", base, paths=out, encoder={"mini": str(tmp_path / "nope")}), "generated", "mini CLIP not found"),
        (write_params(ws / "e3.yaml", base, paths={**out, "embeddings": str(tmp_path / "none")}), "generated", "embeddings"),
        (write_params(ws / "e4.yaml", base, paths=out, encoder={"scale": "huge"}), "generated", "encoder.scale"),
        (write_params(ws / "e5.yaml", base, paths=out, align={"heldout": 6}), "generated", "align.heldout"),
        (write_params(ws / "e6.yaml", base, paths=out), "pixels", "unknown alignment source"),
    ]
    for params, source, message in cases:
        assert run(align.main, ["--params", params, "--source", source]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "a").exists() and not (tmp_path / "e/generated").exists() and not (tmp_path / "m").exists()


def test_saved_adapter_reloads_to_the_embeddings_align_wrote(aligned_workspace, monkeypatch, tmp_path):
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    encode.main(["--params", "params.yaml", "--images", "data/generated/images", "--adapter", "data/align/generated",
                 "--out", str(tmp_path / "z.npy")])
    names = json.loads((tmp_path / "z.npy.json").read_text())
    ids = json.loads((ws / "data/embeddings/generated/ids.json").read_text())["B"]
    order = [names.index(f"{i}.png") for i in ids]
    z = np.load(tmp_path / "z.npy")[order]
    saved = np.load(ws / "data/embeddings/generated/B.f_g.npy")
    f_r = np.load(ws / "data/embeddings/generated/B.f_r.npy")
    assert np.allclose(z, saved, atol=1e-5) and not np.allclose(z, f_r, atol=1e-3)


def test_missing_adapter_is_a_one_line_error(embedded_workspace, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(embedded_workspace)
    assert run(encode.main, ["--params", "params.yaml", "--images", "data/generated/images", "--adapter",
                             str(tmp_path / "nothing"), "--out", str(tmp_path / "z.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no aligned encoder" in err[0]
    assert not (tmp_path / "z.npy").exists()
