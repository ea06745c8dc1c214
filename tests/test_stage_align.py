import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gmail.cli import run
from gmail.clip import MiniClip, save_mini_clip
from stages import align, captions


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    params = {"seed": 0, "data": {"n_a": 1, "n_b": 6, "n_t": 1, "out": str(root / "captions")}}
    (root / "p.yaml").write_text(yaml.safe_dump(params))
    cwd = Path.cwd()
    import os

    os.chdir(root)
    try:
        captions.main(["--params", str(root / "p.yaml")])
    finally:
        os.chdir(cwd)
    # "Generated" images: the real B images at 32 px with a colour shift, same ids and captions.
    gen_dir = root / "generated"
    (gen_dir / "images").mkdir(parents=True)
    rows = []
    for line in (root / "captions/B.jsonl").read_text().splitlines():
        rec = json.loads(line)
        img = Image.open(root / "captions" / rec["path"]).convert("RGB").resize((32, 32))
        arr = np.clip(np.asarray(img).astype(int) + 20, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(gen_dir / f"images/{rec['image_id']}.png")
        rows.append({"image_id": rec["image_id"], "path": f"images/{rec['image_id']}.png", "captions": rec["captions"]})
    (gen_dir / "generated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_mini_clip(MiniClip(), root / "clip")
    return root


def _params(root, **align_kw):
    cfg = {"rank": 2, "steps": 3, "batch_size": 4, "heldout": 2, "restart_steps": 2, "device": "cpu",
           "clip": str(root / "clip"), "captions": str(root / "captions"), "generated": str(root / "generated"),
           "out": str(root / "align_out")}
    cfg.update(align_kw)
    path = root / "align.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "align": cfg}))
    return str(path)


def test_align_writes_adapter_metrics_and_plot(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    align.main(["--params", _params(workdir)])
    assert (workdir / "align_out/adapter/adapter_config.json").is_file()
    m = json.loads((workdir / "metrics/align.json").read_text())
    for key in ("cos_before", "cos_after"):
        assert set(m[key]) == {"aligned", "heldout"}
        assert all(-1 <= v <= 1 for v in m[key].values())
    assert m["cos_after"]["aligned"] != m["cos_before"]["aligned"]
    assert (workdir / "plots/align_tsne.png").stat().st_size > 0


def test_full_rank_saves_weights(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    align.main(["--params", _params(workdir, rank="full", out=str(workdir / "full_out"))])
    assert (workdir / "full_out/f_g.safetensors").is_file()


@pytest.mark.parametrize("bad", [0, -3, "four"])
def test_bad_rank_is_one_line_error(workdir, monkeypatch, capsys, bad):
    monkeypatch.chdir(workdir)
    assert run(align.main, ["--params", _params(workdir, rank=bad, out=str(workdir / "bad_out"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "align.rank" in err[0]
    assert not (workdir / "bad_out").exists()


def test_mismatched_pairs_and_missing_clip_are_errors(workdir, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(workdir)
    short = tmp_path / "gen"
    (short).mkdir()
    lines = (workdir / "generated/generated.jsonl").read_text().splitlines()[:-1]
    (short / "generated.jsonl").write_text("\n".join(lines) + "\n")
    (short / "images").symlink_to(workdir / "generated/images")
    assert run(align.main, ["--params", _params(workdir, generated=str(short), out=str(tmp_path / "o1"))]) == 2
    assert "do not pair" in capsys.readouterr().err
    assert run(align.main, ["--params", _params(workdir, clip=str(tmp_path / "nope"), out=str(tmp_path / "o2"))]) == 2
    assert "mini CLIP not found" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
