"""Stages `embed` and `align@<source>` (and the `encode` utility) on the tiny downstream workspace."""

import json

import numpy as np
import pytest
from helpers import tmp_inside, write_params

from gmail.core.cli import run
from stages import align, encode

pytestmark = pytest.mark.slow


def _variant_paths(ws, name):
    """Paths for a side run in `ws/<name>/` that still reads the workspace's real embeddings."""
    (ws / name / "emb").mkdir(parents=True, exist_ok=True)
    (ws / name / "emb/generated").mkdir(exist_ok=True)
    for folder in ("real", "generated/f_r"):
        if not (ws / name / "emb" / folder).exists():
            (ws / name / "emb" / folder).symlink_to(ws / "data/embeddings" / folder)
    return {"align": f"{name}/align", "embeddings": f"{name}/emb", "metrics": f"{name}/metrics", "plots": f"{name}/plots"}


def test_embed_writes_f_r_embeddings_of_real_b_and_t_and_of_each_generated_shard(embedded_workspace):
    ws = embedded_workspace
    ids = json.loads((ws / "data/embeddings/real/ids.json").read_text())
    assert len(ids["B"]) == 6 and len(ids["T"]) == 3
    z = np.load(ws / "data/embeddings/real/B.f_r.npy")
    assert z.shape == (6, 256) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    gen = ws / "data/embeddings/generated/f_r"
    shards = sorted(p.name for p in (gen / "B.f_r").iterdir())
    assert shards == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]  # 12 images, 5 per shard
    assert [len(np.load(gen / "B.f_r" / s)) for s in shards] == [5, 5, 2]
    index = json.loads((gen / "ids.json").read_text())
    manifest = [json.loads(x) for x in (ws / "data/generated/manifest.jsonl").read_text().splitlines()]
    assert index == {"scale": "mini", "B": [m["id"] for m in manifest], "B_source": [m["source_id"] for m in manifest],
                     "B_caption": [m["caption"] for m in manifest]}
    assert index["B_source"][:4] == [ids["B"][0], ids["B"][0], ids["B"][1], ids["B"][1]]


def test_align_writes_adapter_embeddings_metrics_curve_and_plot(aligned_workspace):
    ws = aligned_workspace
    assert (ws / "data/align/generated/adapter/adapter_config.json").is_file()
    m = json.loads((ws / "metrics/align/generated.json").read_text())
    for key in ("cos_before", "cos_after"):
        assert set(m[key]) == {"aligned", "heldout"}
        assert all(-1 <= v <= 1 for v in m[key].values())
    assert m["cos_after"]["aligned"] != m["cos_before"]["aligned"]
    # Two generated images per real one: 4 aligned real images give 8 pairs, 2 held out give 4.
    assert (m["pairs_aligned"], m["pairs_heldout"], m["real_aligned"], m["real_heldout"]) == (8, 4, 4, 2)
    emb = ws / "data/embeddings/generated/f_g"
    before, after = np.load(ws / "data/embeddings/generated/f_r/B.f_r/shard-00000.npy"), np.load(emb / "B.f_g.npy")
    assert after.shape == (12, 256) and not np.allclose(before, after[:5])
    assert np.load(emb / "T.f_g.npy").shape == (3, 256) and not (emb / "B.f_r.npy").exists()
    index = json.loads((emb / "ids.json").read_text())
    assert index["B"] == json.loads((ws / "data/embeddings/generated/f_r/ids.json").read_text())["B"]
    # f_r's view of the generated images (stage embed) is what cos_before compares: row i with its real image.
    real = np.load(ws / "data/embeddings/real/B.f_r.npy")
    f_r = np.concatenate([np.load(f) for f in sorted((ws / "data/embeddings/generated/f_r/B.f_r").iterdir())])
    pairs = real[[i // 2 for i in range(12)]]  # row i was generated for real image i // 2
    assert m["cos_before"]["aligned"] == pytest.approx(float((f_r[:8] * pairs[:8]).sum(1).mean()), abs=1e-5)
    assert m["cos_before"]["heldout"] == pytest.approx(float((f_r[8:] * pairs[8:]).sum(1).mean()), abs=1e-5)
    # One loss per optimiser step, the last 20 averaging to the reported final loss.
    rows = (ws / "plots/align/loss-generated.tsv").read_text().splitlines()
    losses = [float(r.split("\t")[1]) for r in rows[1:]]
    assert rows[0] == "step\tloss" and len(losses) == 3 and m["final_loss"] == pytest.approx(np.mean(losses))
    assert (ws / "plots/align/tsne-generated.png").stat().st_size > 0


def test_noise_source_aligns_noise_images(aligned_workspace):
    ws = aligned_workspace
    assert json.loads((ws / "metrics/align/noise.json").read_text())["source"] == "noise"
    gen = np.load(ws / "data/embeddings/generated/f_r/B.f_r/shard-00000.npy")
    noise = np.load(ws / "data/embeddings/noise/B.f_r.npy")
    assert noise.shape == (6, 256) and not np.allclose(noise[:5], gen)
    assert json.loads((ws / "data/embeddings/noise/ids.json").read_text())["B"] == \
        json.loads((ws / "data/embeddings/real/ids.json").read_text())["B"]


def test_zero_steps_is_alignment_off(embedded_workspace, monkeypatch):
    ws = embedded_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "off.yaml", ws / "params.yaml", align={"steps": 0}, paths=_variant_paths(ws, "off"))
    align.main(["--params", p, "--source", "generated"])
    f_r = np.concatenate([np.load(f) for f in sorted((ws / "off/emb/generated/f_r/B.f_r").iterdir())])
    assert np.allclose(f_r, np.load(ws / "off/emb/generated/f_g/B.f_g.npy"), atol=1e-6)
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
    head = json.loads((ws / "metrics/align/generated.json").read_text())
    assert m["cos_before"] == pytest.approx(head["cos_before"], abs=1e-5)


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
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    short = tmp_path / "gen"
    short.mkdir()
    lines = (ws / "data/generated/manifest.jsonl").read_text().splitlines()[:-1]
    (short / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (short / "shards").symlink_to(ws / "data/generated/shards")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "manifest.jsonl").write_text(lines[0].replace('"source_id": "', '"source_id": "x') + "\n")
    (tmp_path / "e").mkdir()
    (tmp_path / "e/real").symlink_to(ws / "data/embeddings/real")
    out = {"align": str(tmp_path / "a"), "embeddings": str(tmp_path / "e"), "metrics": str(tmp_path / "m")}
    base = ws / "params.yaml"
    cases = [
        (write_params(ws / "e1.yaml", base, paths={**out, "generated": str(short)}), "generated", "do not hold the manifest"),
        (write_params(ws / "e0.yaml", base, paths={**out, "generated": str(stray)}), "generated", "which is not in B"),
        (write_params(ws / "e2.yaml", base, paths=out, encoder={"weights": str(tmp_path / "nope")}), "generated", "mini CLIP not found"),
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
    encode.main(["--params", "params.yaml", "--images", "data/generated/shards", "--adapter", "data/align/generated",
                 "--out", str(tmp_path / "z.npy")])
    names = json.loads((tmp_path / "z.npy.json").read_text())
    ids = json.loads((ws / "data/embeddings/generated/f_g/ids.json").read_text())["B"]
    assert names == ids  # a folder of shards: one row per item, in shard order
    z = np.load(tmp_path / "z.npy")
    saved = np.load(ws / "data/embeddings/generated/f_g/B.f_g.npy")
    f_r = np.concatenate([np.load(f) for f in sorted((ws / "data/embeddings/generated/f_r/B.f_r").iterdir())])
    assert np.allclose(z, saved, atol=1e-5) and not np.allclose(z, f_r, atol=1e-3)


def test_missing_adapter_is_a_one_line_error(embedded_workspace, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(embedded_workspace)
    assert run(encode.main, ["--params", "params.yaml", "--images", "data/generated/shards", "--adapter",
                             str(tmp_path / "nothing"), "--out", str(tmp_path / "z.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no aligned encoder" in err[0]
    assert not (tmp_path / "z.npy").exists()


def test_streaming_sampler_aligns_generated_and_noise_as_the_memory_one_reads_them(aligned_workspace, monkeypatch):
    """`align.sampler: stream` reads the images afresh per pass: same rows, same f_r view, f_g moved."""
    ws = aligned_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "stream.yaml", ws / "params.yaml", align={"sampler": "stream", "shuffle_buffer": 5, "batch_size": 3},
                     paths=_variant_paths(ws, "stream"))
    for source in ("generated", "noise"):
        align.main(["--params", p, "--source", source])
        m = json.loads((ws / f"stream/metrics/align/{source}.json").read_text())
        memory = json.loads((ws / f"metrics/align/{source}.json").read_text())
        for key in ("pairs_aligned", "pairs_heldout", "real_aligned", "real_heldout"):
            assert m[key] == memory[key]
        assert m["cos_before"] == pytest.approx(memory["cos_before"], abs=1e-5)
        assert m["cos_after"]["aligned"] != pytest.approx(m["cos_before"]["aligned"], abs=1e-4)
        folder = "generated/f_g" if source == "generated" else "noise"
        assert json.loads((ws / f"stream/emb/{folder}/ids.json").read_text()) == \
            json.loads((ws / f"data/embeddings/{folder}/ids.json").read_text())
    noise = ws / "stream/emb/noise/B.f_r.npy"
    assert np.allclose(np.load(noise), np.load(ws / "data/embeddings/noise/B.f_r.npy"), atol=1e-6)


def test_bad_sampler_settings_are_one_line_errors(embedded_workspace, monkeypatch, capsys):
    ws = embedded_workspace
    monkeypatch.chdir(ws)
    for i, (bad, key) in enumerate([({"sampler": "disk"}, "align.sampler"), ({"shuffle_buffer": 3, "batch_size": 4}, "align.shuffle_buffer")]):
        p = write_params(ws / f"bs{i}.yaml", ws / "params.yaml", align=bad, paths=_variant_paths(ws, f"bs{i}"))
        assert run(align.main, ["--params", p, "--source", "generated"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], err
