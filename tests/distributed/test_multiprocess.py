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
import torch
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
    base = dict(gen={"weights": str(repo / "pretrain/models/sd2"), "steps": 2, "batch_size": 3, "per_real": 2, "shard_size": 2,
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


@pytest.mark.parametrize("sampler", ["memory", "stream"])
def test_ddp_alignment_with_two_processes_matches_one(sampler, embedded_workspace, tmp_path):
    """Both samplers: the in-memory one and the streaming one (shards through a seeded shuffle
    buffer), whose batches do not depend on the process count either."""
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
                         align={"steps": 5, "batch_size": 4, "lr": 0.01, "sampler": sampler, "shuffle_buffer": 8})
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


def _curve(path):
    return [float(line.split("\t")[1]) for line in path.read_text().splitlines()[1:]]


def test_ddp_captioner_with_two_processes_matches_one(embedded_workspace, tmp_path):
    """caption@real under `accelerate launch` (2 processes, DDP) trains the same ClipCap as one
    process: same losses and validation losses within 1e-5, same early stop, same captions."""
    ws = embedded_workspace
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    runs = {}
    for name, launcher in LAUNCHERS.items():
        out = tmp_path / name
        paths = {"captioner": str(out / "cap"), "predictions": str(out / "pred"), "plots": str(out / "plots")}
        # 6 real B images: 2 validation, 4 training, batch 4 split 2 + 2 between the ranks.
        p = write_params(tmp_path / f"{name}.yaml", ws / "params.yaml", paths=paths, launcher=launcher,
                         caption={"seeds": 1, "schedule": "converge", "max_steps": 6, "val_fraction": 0.34,
                                  "eval_every": 2, "patience": 2, "batch_size": 4, "lr": 0.01})
        _run([sys.executable, "-m", "stages.caption", "--params", p], ws, DVC_STAGE="caption@real")
        plots = out / "plots/caption/real"
        runs[name] = (_curve(plots / "loss-seed0.tsv"), _curve(plots / "val-loss-seed0.tsv"),
                      json.loads((out / "pred/real/seed0.json").read_text()),
                      json.loads((out / "pred/real/info.json").read_text())["runs"])
    (l1, v1, c1, r1), (l2, v2, c2, r2) = runs["one"], runs["two"]
    assert len(l1) == len(l2) >= 4 and l1 == pytest.approx(l2, abs=1e-5)
    assert v1 == pytest.approx(v2, abs=1e-5) and r1["seed0"]["best_step"] == r2["seed0"]["best_step"]
    assert c1 == c2
    assert l1[-1] < l1[0]  # it did train
    assert sorted(p.name for p in (tmp_path / "two/pred/real").iterdir()) == ["info.json", "references.json", "seed0.json"]
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_ddp_text_tuning_with_two_processes_matches_one(embedded_workspace, tmp_path):
    """tune_text@real under `accelerate launch` (2 processes, DDP, all-gathered text embeddings)
    tunes the same text tower as one process: losses within 1e-5, same saved weights."""
    from safetensors.torch import load_file

    ws = embedded_workspace
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    runs = {}
    for name, launcher in LAUNCHERS.items():
        out = tmp_path / name
        paths = {"text_towers": str(out / "towers"), "plots": str(out / "plots"), "stats": str(out / "stats")}
        # 6 real B images, batch 4: each rank encodes 2 captions a step.
        p = write_params(tmp_path / f"{name}.yaml", ws / "params.yaml", paths=paths, launcher=launcher,
                         tune_text={"rows": ["real"], "seeds": 1, "steps": 5, "batch_size": 4, "lr": 1e-3, "device": "cpu"})
        _run([sys.executable, "-m", "stages.tune_text", "--params", p], ws, DVC_STAGE="tune_text@real")
        runs[name] = (_curve(out / "plots/tune_text/real/loss-seed0.tsv"), load_file(str(out / "towers/real/seed0/text.safetensors")))
    (l1, w1), (l2, w2) = runs["one"], runs["two"]
    assert len(l1) == len(l2) == 5 and l1 == pytest.approx(l2, abs=1e-5)
    # Adam divides by the gradient's own size, so last-bit gradient differences reach ~1e-5 in the weights.
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    assert l1[-1] != pytest.approx(l1[0], abs=1e-4)  # it did train
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_ddp_llava_with_two_processes_matches_one(embedded_workspace, tmp_path):
    """train_llm under `accelerate launch` (2 processes, DDP) trains the same LLaVA model as one
    process: losses within 1e-5, connectors within 1e-4 (measured: 2e-6 and 7e-7), same
    predictions, for 2 seeds (the other rank waits in the next seed's DDP set-up while the main
    one captions). The variant is a
    dual model in reading algorithm1 with VQA rows, so a rank's share of a batch can lack one
    connector's images (DDP must expect unused parameters)."""
    from safetensors.torch import load_file

    from tools.paper_fixtures import save_tiny_llama

    ws = embedded_workspace
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    save_tiny_llama(tmp_path / "llm")
    llm = {"variants": {"dual": {"images": "generated", "encoder": "f_r", "projection": "dual"}},
           "reading": "algorithm1", "seeds": 2, "steps": 4, "batch_size": 4, "lr": 1e-2, "lr_projection": 1e-2,
           "weight_decay": 0.01, "vqa": True, "vqa_fraction": 0.5, "vqa_test_questions": 2, "generate_batch_size": 4,
           "dtype": "float32", "wmd": False, "benchmarks": {}, "device": "cpu",
           "model": {"llm": str(tmp_path / "llm"), "image_tokens": 2, "lora_rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.0,
                     "lora_targets": ["q_proj", "v_proj"], "max_answer_tokens": 4, "system_prompt": ""}}
    runs = {}
    for name, launcher in LAUNCHERS.items():
        out = tmp_path / name
        paths = {"llm": str(out / "llm"), "plots": str(out / "plots"), "stats": str(out / "stats")}
        p = write_params(tmp_path / f"{name}.yaml", ws / "params.yaml", replace=("llm",), paths=paths, launcher=launcher, llm=llm)
        _run([sys.executable, "-m", "stages.train_llm", "--params", p], ws, DVC_STAGE="train_llm@dual")
        runs[name] = {s: (_curve(out / f"plots/llm/dual/loss-seed{s}.tsv"),
                          load_file(str(out / f"llm/models/dual/seed{s}/projections.safetensors")),
                          json.loads((out / f"llm/predictions/dual/seed{s}.json").read_text())) for s in (0, 1)}
    for s in (0, 1):
        (l1, w1, c1), (l2, w2, c2) = runs["one"][s], runs["two"][s]
        assert len(l1) == len(l2) == 4 and l1 == pytest.approx(l2, abs=1e-5)
        assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
        assert c1 == c2
        assert l1[-1] != pytest.approx(l1[0], abs=1e-4)  # it did train
    assert runs["one"][0][0] != pytest.approx(runs["one"][1][0], abs=1e-6)  # the seeds differ
    assert sorted(p.name for p in (tmp_path / "two/llm/predictions/dual").iterdir()) == [
        "info.json", "references.json", "seed0.json", "seed1.json", "vqa-seed0.json", "vqa-seed1.json"]
    shutil.rmtree(tmp_path, ignore_errors=True)
