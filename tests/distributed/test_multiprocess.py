"""Several processes through `accelerate launch` (torchrun underneath, gloo on CPU): generation
splits shards between processes without changing an image, and DDP alignment matches one process.
Both start as DVC starts them, `python -m stages.<name> --params <file>`, the file's `launcher`
choosing one process or `accelerate launch` (gmail/core/launch.py).

CPU float results depend on the intra-op thread count, so every run here uses one thread
(torchrun gives each process one by default); on GPUs the thread count plays no part.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import tmp_inside, write_params

from gmail.data.shards import list_shards

pytestmark = pytest.mark.slow

LAUNCHERS = {"one": "python",
             "two": "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
                    "--dynamo_backend no --main_process_port 0"}


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", **extra)
    env.pop("GMAIL_LAUNCHED", None)
    return env


def _run(cmd, cwd, **env):
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_two_processes_generate_byte_identical_shards(embedded_workspace, tmp_path):
    ws = embedded_workspace
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    repo = Path(__file__).resolve().parents[2]
    base = dict(gen={"sd2": str(repo / "pretrain/models/sd2"), "steps": 2, "batch_size": 3, "per_real": 2, "shard_size": 2,
                     "device": "cpu"})
    outs = {}
    for name, launcher in LAUNCHERS.items():
        paths = {"generated": str(tmp_path / name / "gen"), "scratch": str(tmp_path / name / "scratch"),
                 "metrics": str(tmp_path / name / "metrics"), "stats": str(tmp_path / name / "stats")}
        p = write_params(tmp_path / f"{name}.yaml", ws / "params.yaml", paths=paths, launcher=launcher, **base)
        _run([sys.executable, "-m", "stages.generate", "--params", p], ws)
        outs[name] = tmp_path / name / "gen"
    assert json.loads((tmp_path / "two/stats/generate.json").read_text())["processes"] == 2
    shards = {name: {s.name: s.read_bytes() for s in list_shards(out / "shards")} for name, out in outs.items()}
    assert len(shards["one"]) == 6  # 12 images, 2 per shard: rank 0 wrote 0, 2, 4 and rank 1 wrote 1, 3, 5
    assert shards["one"] == shards["two"]
    assert (outs["one"] / "manifest.jsonl").read_text() == (outs["two"] / "manifest.jsonl").read_text()


def test_ddp_alignment_with_two_processes_matches_one(embedded_workspace, tmp_path):
    ws = embedded_workspace
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    runs = {}
    for name, launcher in LAUNCHERS.items():
        emb = tmp_path / name / "emb"
        emb.mkdir(parents=True)
        (emb / "real").symlink_to(ws / "data/embeddings/real")
        paths = {"align": str(tmp_path / name / "align"), "embeddings": str(emb), "metrics": str(tmp_path / name / "m"),
                 "plots": str(tmp_path / name / "plots")}
        # batch 6 of 8 aligned rows' real images (4): every step's batch splits 2 + 2 (or 3 + 3) between the ranks
        p = write_params(tmp_path / f"{name}.yaml", ws / "params.yaml", paths=paths, launcher=launcher,
                         align={"steps": 5, "batch_size": 4, "lr": 0.01})
        _run([sys.executable, "-m", "stages.align", "--params", p], ws, DVC_STAGE="align@generated")  # the key as DVC gives it
        runs[name] = (np.load(emb / "generated/f_g/B.f_g.npy"), json.loads((tmp_path / name / "m/align/generated.json").read_text()),
                      (tmp_path / name / "plots/align/loss-generated.tsv").read_text().splitlines()[1:])
    (z1, m1, l1), (z2, m2, l2) = runs["one"], runs["two"]
    losses1, losses2 = [float(x.split("\t")[1]) for x in l1], [float(x.split("\t")[1]) for x in l2]
    assert len(losses1) == len(losses2) == 5 and losses1 == pytest.approx(losses2, abs=1e-5)
    assert np.allclose(z1, z2, atol=1e-5)
    assert m1["cos_after"] == pytest.approx(m2["cos_after"], abs=1e-5)
    # The alignment did move f_g, so agreeing is not agreeing on the untouched encoder.
    assert m1["cos_after"]["aligned"] != pytest.approx(m1["cos_before"]["aligned"], abs=1e-4)
    shutil.rmtree(tmp_path, ignore_errors=True)
