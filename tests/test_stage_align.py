import json

import numpy as np
import pytest

from conftest import write_params
from gmail.cli import run
from stages import align


@pytest.fixture(scope="module")
def ws(embedded_workspace):
    return embedded_workspace


def test_embed_writes_f_r_embeddings_of_real_b_and_t(ws):
    ids = json.loads((ws / "data/embeddings/real/ids.json").read_text())
    assert len(ids["B"]) == 6 and len(ids["T"]) == 3
    z = np.load(ws / "data/embeddings/real/B.f_r.npy")
    assert z.shape == (6, 256) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)


def test_align_writes_adapter_embeddings_metrics_and_plot(ws, monkeypatch):
    monkeypatch.chdir(ws)
    align.main(["--params", "params.yaml", "--source", "generated", "--plot", "plots/align_tsne.png"])
    assert (ws / "data/align/generated/adapter/adapter_config.json").is_file()
    m = json.loads((ws / "metrics/align.json").read_text())
    for key in ("cos_before", "cos_after"):
        assert set(m[key]) == {"aligned", "heldout"}
        assert all(-1 <= v <= 1 for v in m[key].values())
    assert m["cos_after"]["aligned"] != m["cos_before"]["aligned"]
    assert m["pairs_aligned"] == 4 and m["pairs_heldout"] == 2
    assert (ws / "plots/align_tsne.png").stat().st_size > 0
    emb = ws / "data/embeddings/generated"
    before, after = np.load(emb / "B.f_r.npy"), np.load(emb / "B.f_g.npy")
    assert before.shape == after.shape == (6, 256) and not np.allclose(before, after)
    assert np.load(emb / "T.f_g.npy").shape == (3, 256)
    # f_r's view of the generated images matches what the frozen encoder gives: cos_before.
    real = np.load(ws / "data/embeddings/real/B.f_r.npy")
    assert m["cos_before"]["aligned"] == pytest.approx(float((before[:4] * real[:4]).sum(1).mean()), abs=1e-5)


def test_zero_steps_is_alignment_off(ws, monkeypatch):
    monkeypatch.chdir(ws)
    p = write_params(ws, "off.yaml", align={"steps": 0, "out": "off/align", "embeddings": "off/emb"})
    align.main(["--params", p, "--source", "generated", "--metrics", "off/align.json"])
    emb = ws / "off/emb/generated"
    assert np.allclose(np.load(emb / "B.f_r.npy"), np.load(emb / "B.f_g.npy"), atol=1e-6)
    m = json.loads((ws / "off/align.json").read_text())
    assert m["cos_after"] == pytest.approx(m["cos_before"])


def test_noise_source_aligns_noise_images(ws, monkeypatch):
    monkeypatch.chdir(ws)
    align.main(["--params", "params.yaml", "--source", "noise", "--metrics", "metrics/align-noise.json"])
    m = json.loads((ws / "metrics/align-noise.json").read_text())
    assert m["source"] == "noise"
    gen = np.load(ws / "data/embeddings/generated/B.f_r.npy")
    noise = np.load(ws / "data/embeddings/noise/B.f_r.npy")
    assert noise.shape == gen.shape and not np.allclose(noise, gen)


def test_full_rank_saves_weights(ws, monkeypatch):
    monkeypatch.chdir(ws)
    p = write_params(ws, "full.yaml", align={"rank": "full", "out": "full/align", "embeddings": "full/emb"})
    align.main(["--params", p, "--source", "generated", "--metrics", "full/align.json"])
    assert (ws / "full/align/generated/f_g.safetensors").is_file()


@pytest.mark.parametrize("bad", [0, -3, "four", 2.5])
def test_bad_rank_is_one_line_error(ws, monkeypatch, capsys, bad):
    monkeypatch.chdir(ws)
    p = write_params(ws, "bad.yaml", align={"rank": bad, "out": "bad/align", "embeddings": "bad/emb"})
    assert run(align.main, ["--params", p, "--source", "generated", "--metrics", "bad/m.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "align.rank" in err[0]
    assert not (ws / "bad").exists()


def test_mismatched_pairs_missing_clip_and_missing_embeddings_are_errors(ws, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ws)
    short = tmp_path / "gen"
    short.mkdir()
    lines = (ws / "data/generated/generated.jsonl").read_text().splitlines()[:-1]
    (short / "generated.jsonl").write_text("\n".join(lines) + "\n")
    (short / "images").symlink_to(ws / "data/generated/images")
    out = {"out": str(tmp_path / "a"), "embeddings": str(tmp_path / "e")}
    cases = [
        (write_params(ws, "e1.yaml", align={**out, "generated": str(short)}), "do not pair"),
        (write_params(ws, "e2.yaml", align=out, encoder={"mini": str(tmp_path / "nope")}), "mini CLIP not found"),
        (write_params(ws, "e3.yaml", align={**out, "real_embeddings": str(tmp_path / "none")}), "embeddings"),
        (write_params(ws, "e4.yaml", align=out, encoder={"scale": "huge"}), "encoder.scale"),
    ]
    for params, message in cases:
        assert run(align.main, ["--params", params, "--source", "generated", "--metrics", str(tmp_path / "m.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "a").exists() and not (tmp_path / "e").exists() and not (tmp_path / "m.json").exists()


def test_saved_adapter_reloads_to_the_embeddings_align_wrote(ws, monkeypatch, tmp_path):
    from stages import encode

    monkeypatch.chdir(ws)
    align.main(["--params", "params.yaml", "--source", "generated"])
    encode.main(["--params", "params.yaml", "--images", "data/generated/images", "--adapter", "data/align/generated",
                 "--out", str(tmp_path / "z.npy")])
    names = json.loads((tmp_path / "z.npy.json").read_text())
    ids = json.loads((ws / "data/embeddings/generated/ids.json").read_text())["B"]
    order = [names.index(f"{i}.png") for i in ids]
    z = np.load(tmp_path / "z.npy")[order]
    saved = np.load(ws / "data/embeddings/generated/B.f_g.npy")
    f_r = np.load(ws / "data/embeddings/generated/B.f_r.npy")
    assert np.allclose(z, saved, atol=1e-5) and not np.allclose(z, f_r, atol=1e-3)


def test_missing_adapter_is_a_one_line_error(ws, monkeypatch, capsys, tmp_path):
    from stages import encode

    monkeypatch.chdir(ws)
    assert run(encode.main, ["--params", "params.yaml", "--images", "data/generated/images", "--adapter",
                             str(tmp_path / "nothing"), "--out", str(tmp_path / "z.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no aligned encoder" in err[0]
    assert not (tmp_path / "z.npy").exists()


def test_layers_all_puts_lora_in_every_block(ws, monkeypatch):
    monkeypatch.chdir(ws)
    p = write_params(ws, "all.yaml", align={"layers": "all", "out": "all/align", "embeddings": "all/emb"})
    align.main(["--params", p, "--source", "generated", "--metrics", "all/align.json"])
    m = json.loads((ws / "all/align.json").read_text())
    assert m["layers"] == "all" and m["cos_after"]["aligned"] != pytest.approx(m["cos_before"]["aligned"])
    config = json.loads((ws / "all/align/generated/adapter/adapter_config.json").read_text())
    assert "conv_pw|conv_pwl" in config["target_modules"]
    # The f_r view is the same whichever layers get LoRA.
    assert np.allclose(np.load(ws / "all/emb/generated/B.f_r.npy"), np.load(ws / "data/embeddings/generated/B.f_r.npy"), atol=1e-5)
