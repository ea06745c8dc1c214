"""End to end: `dvc` itself on the real dvc.yaml files, tiny params, in a temporary git repo."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, VARIANTS, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COPY = ["gmail", "stages", "dvc.yaml", "requirements.txt", "pretrain/dvc.yaml", "pretrain/dvc.lock", "pretrain/params.yaml",
        "pretrain/models", "metrics/pretrain", "plots/pretrain", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A git repo holding the pipeline with tiny params, after one `dvc repro`, committed."""
    work = tmp_path_factory.mktemp("e2e") / "repo"
    for rel in COPY:
        src, dst = ROOT / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    write_params(work / "params.yaml", data={"n_a": 6, "n_b": 4, "n_t": 2}, gen={"steps": 2, "batch_size": 3, "device": "cpu", "per_real": 2, "shard_size": 3},
                 encoder={"device": "cpu"}, align={"steps": 2, "batch_size": 4, "heldout": 2},
                 caption={"seeds": 2, "max_steps": 6, "eval_every": 2, "patience": 1, "val_fraction": 0.25,
                          "batch_size": 4, "device": "cpu",
                          "model": {"n_embd": 16, "n_head": 2, "prefix_hidden": 16}})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "init", "-q", "-b", "main"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "tiny"], work, env)
    log = _run(["dvc", "repro"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "repro"], work, env)
    return work, env, log


def test_repro_runs_to_the_end_then_is_a_no_op(tiny_repo):
    work, env, log = tiny_repo
    assert "Running stage 'captions'" in log and "Running stage 'generate'" in log
    # Frozen pretrain stages are upstream of generate but never rerun.
    assert "Running stage 'pretrain/dvc.yaml:generator" not in log
    assert json.loads((work / "metrics/generate.json").read_text())["count"] == 8
    sources = [json.loads(x)["source_id"] for x in (work / "data/generated/manifest.jsonl").read_text().splitlines()]
    b_ids = [json.loads(x)["image_id"] for x in (work / "data/captions/B.jsonl").read_text().splitlines()]
    assert sources == [i for i in b_ids for _ in range(2)]
    assert len(list((work / "data/generated/shards").glob("shard-*.tar"))) == 3
    for variant in VARIANTS:
        m = json.loads((work / f"metrics/caption/{variant}.json").read_text())
        per_seed = json.loads((work / f"data/eval_caption/{variant}.json").read_text())["per_seed"]
        assert m["seeds"] == 2 and m["spice"] is None and set(per_seed) == {"seed0", "seed1"}
        assert 0 <= m["attr_colour"]["mean"] <= 100 and m["attr_colour_shape"]["mean"] <= m["attr_colour"]["mean"]
        assert m["bleu4"]["mean"] == pytest.approx((per_seed["seed0"]["bleu4"] + per_seed["seed1"]["bleu4"]) / 2)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], work, env))
    files = {f for rev in shown.values() for f in rev["data"]}
    assert {f"metrics/caption/{v}.json" for v in VARIANTS} | {"metrics/align/generated.json", "metrics/align/noise.json"} <= files
    for name, keys in (("retrieval", 6), ("zeroshot", 6), ("long_retrieval", 2)):
        m = json.loads((work / f"metrics/{name}.json").read_text())
        assert m.pop("scale") == "mini" and set(m) == {"clip", "synthetic", "gmail", "real"} and len(m["gmail"]) == keys, name
    assert {"metrics/retrieval.json", "metrics/zeroshot.json", "metrics/long_retrieval.json", "metrics/vqa.json"} <= files
    assert "Running stage" not in _run(["dvc", "repro"], work, env)
    assert "up to date" in _run(["dvc", "status", "dvc.yaml"], work, env)


def test_dvc_plots_knows_the_curves_tsne_and_grids(tiny_repo):
    work, env, _ = tiny_repo
    out = _run(["dvc", "plots", "show", "--json"], work, env)
    for name in ("plots/align/loss-generated.tsv", "plots/align/tsne-generated.png", "plots/align/loss-noise.tsv",
                 "plots/caption/gmail/loss-seed0.tsv", "plots/pretrain/grid-sd2.png"):
        assert name in out, name


def test_editing_metrics_code_marks_only_eval_caption_stale(tiny_repo):
    work, env, _ = tiny_repo
    path = work / "gmail/eval/caption_metrics.py"
    original = path.read_text()
    try:
        path.write_text(original.replace("def score_caption_sets(", "def score_caption_sets(  # edited\n", 1))
        status = _run(["dvc", "status", "dvc.yaml", "--json"], work, env)
        assert set(json.loads(status)) == {"eval_caption"}, status
    finally:
        path.write_text(original)
    assert "up to date" in _run(["dvc", "status", "dvc.yaml"], work, env)


def test_repro_force_twice_leaves_metrics_unchanged(tiny_repo):
    work, env, _ = tiny_repo
    _run(["dvc", "repro", "-f", "align@generated", "caption@gmail", "eval_caption"], work, env)
    assert _run(["dvc", "metrics", "diff", "--json"], work, env).strip() in ("{}", "")


def test_exp_run_flux_reruns_only_generation_downstream(tiny_repo):
    work, env, _ = tiny_repo
    out = _run(["dvc", "exp", "run", "--temp", "-S", "gen.model=flux"], work, env)
    assert "Running stage 'generate'" in out
    # Whatever reads generated images reruns; the real-image and noise branches do not.
    for stage in ("embed", "align@generated", "caption@synthetic", "caption@gmail", "caption@gmail_heldout", "caption@synthetic_heldout",
                  "eval_caption"):
        assert f"Running stage '{stage}'" in out
    for stage in ("captions", "align@noise", "caption@real", "caption@noise"):
        assert f"Running stage '{stage}'" not in out
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], work, env))
    assert "flux" in json.dumps(shown)


def _shards(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((work / "data/generated/shards").glob("shard-*.tar"))}


def test_killed_generate_resumes_to_the_same_shards_and_dvc_calls_it_up_to_date(tiny_repo):
    """`dvc repro generate` killed (SIGKILL to its whole process group) after some shards: the
    rerun keeps them, redoes the rest, and ends byte-identical to an uninterrupted run."""
    work, env, _ = tiny_repo
    # 16 one-image shards at 40 steps: slow enough that the kill lands mid-run.
    write_params(work / "params.yaml", work / "params.yaml", gen={"steps": 40, "per_real": 4, "shard_size": 1})
    try:
        _run(["dvc", "repro", "generate", "--single-item"], work, env)  # uninterrupted
        clean, lock = _shards(work), (work / "dvc.lock").read_text()
        assert len(clean) == 16
        proc = subprocess.Popen(["dvc", "repro", "-f", "generate", "--single-item"], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline, done = time.time() + 300, []
        while time.time() < deadline and proc.poll() is None:
            done = list(work.glob(".scratch/generate-*/shard-*.tar"))
            if len(done) >= 3:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 3 <= len(done) < 16, f"the kill did not land mid-run ({len(done)} shards done)"
        assert not (work / "data/generated").exists()  # DVC removed the outputs before running
        # -f: dvc.lock still records the uninterrupted run, whose outputs DVC would check out of its
        # cache (correct too, but then nothing resumes); after a first run is killed, plain `dvc repro` runs.
        log = _run(["dvc", "repro", "-f", "generate", "--single-item"], work, env)
        assert "Running stage 'generate'" in log
        stats = json.loads((work / "stats/generate.json").read_text())
        assert stats["resumed_shards"] >= 3
        assert _shards(work) == clean  # every id once, same bytes
        ids = [json.loads(x)["id"] for x in (work / "data/generated/manifest.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 16
        assert (work / "dvc.lock").read_text() == lock
        assert json.loads(_run(["dvc", "status", "generate", "--json"], work, env)) == {}  # up to date
        assert list(work.glob(".scratch/generate-*")) == []
    finally:
        _run(["git", "checkout", "params.yaml", "dvc.lock"], work, env)
        _run(["dvc", "checkout", "--force"], work, env)
