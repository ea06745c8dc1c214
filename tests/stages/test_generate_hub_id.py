"""Stage `generate` with a generator given as a Hub id pinned to a commit (`gen.model: org/name@<sha>`),
loaded offline from a local Hub cache (tools.paper_fixtures' tiny SD pipeline as snapshots of
`gmail-smoke/tiny-sd2` at two revisions), and what DVC tracks for it: the revision is a param, the
only model dep is `gen.weights`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, assert_one_line_error, read_jsonl, run_stage, write_params

from tools.paper_fixtures import HUB_SD2_ID, HUB_SD2_REVISION, tiny_sd2_pipeline, write_hub_snapshot

REVISION_2 = "0123456789abcdef0123456789abcdef01234567"  # a second commit of the same repo: other weights
PLACEHOLDER = ROOT / "pretrain" / "hub-model.txt"
RECORDS = [{"image_id": f"train-{i:05d}", "path": f"images/B/train-{i:05d}.png",
            "captions": [f"a red circle number {i}", f"a blue square number {i}"]} for i in range(2)]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A Hub cache holding gmail-smoke/tiny-sd2 at HUB_SD2_REVISION (seed 0) and REVISION_2 (seed 1)."""
    root = tmp_path_factory.mktemp("hub")
    for revision, seed in ((HUB_SD2_REVISION, 0), (REVISION_2, 1)):
        tiny_sd2_pipeline(seed=seed).save_pretrained(root / f"saved-{seed}")
        write_hub_snapshot(root / "hf_home", HUB_SD2_ID, revision, root / f"saved-{seed}")
    return root / "hf_home"


def hub_env(hf_home) -> dict:
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub")}


def workspace(path, model: str, **gen):
    path.mkdir(parents=True, exist_ok=True)
    (path / "data" / "captions").mkdir(parents=True, exist_ok=True)
    (path / "data" / "captions" / "B.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    write_params(path / "params.yaml", gen={"scale": "paper", "model": model, "weights": str(PLACEHOLDER), "per_real": 1,
                                            "shard_size": 2, "steps": 1, "guidance": 2.0, "resolution": 32, "batch_size": 2,
                                            "dtype": "float32", "device": "cpu", **gen})
    return path


def test_generate_runs_a_pinned_hub_id_offline_and_a_new_revision_reruns_generate_alone(hf_home, tmp_path):
    """`dvc repro` of generate with gmail-smoke/tiny-sd2@<rev> from the offline cache; then another
    revision: `dvc status` differs in generate alone (a changed param), and the rerun loads the new weights."""
    ws = workspace(tmp_path / "ws", f"{HUB_SD2_ID}@{HUB_SD2_REVISION}")
    shutil.copy2(ROOT / "dvc.yaml", ws / "dvc.yaml")
    for code in ("gmail", "stages"):  # generate's code deps, and what its command runs
        shutil.copytree(ROOT / code, ws / code, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**hub_env(hf_home), "OMP_NUM_THREADS": "1"}
    _dvc(ws, "init", "--no-scm", "-q")
    _dvc(ws, "repro", "--single-item", "generate", env=env)
    manifest = read_jsonl(ws / "data" / "generated" / "manifest.jsonl")
    assert [m["id"] for m in manifest] == ["train-00000_0", "train-00001_0"]
    assert json.loads((ws / "metrics" / "generate.json").read_text())["model"] == f"{HUB_SD2_ID}@{HUB_SD2_REVISION}"
    shards = [p.read_bytes() for p in sorted((ws / "data" / "generated" / "shards").glob("*.tar"))]
    before = json.loads(_dvc(ws, "status", "--json", env=env))
    assert "generate" not in before  # up to date (the other stages never ran)

    params = ws / "params.yaml"
    params.write_text(params.read_text().replace(HUB_SD2_REVISION, REVISION_2))
    after = json.loads(_dvc(ws, "status", "--json", env=env))
    assert {k: v for k, v in after.items() if k != "generate"} == before  # nothing else changes
    assert after["generate"] == [{"changed deps": {"params.yaml": {"gen": "modified"}}}]  # params: - gen (gen.model)
    _dvc(ws, "repro", "--single-item", "generate", env=env)
    assert [p.read_bytes() for p in sorted((ws / "data" / "generated" / "shards").glob("*.tar"))] != shards  # the new weights
    assert json.loads((ws / "metrics" / "generate.json").read_text())["model"] == f"{HUB_SD2_ID}@{REVISION_2}"


def test_an_unpinned_hub_id_is_a_one_line_error_that_says_how_to_pin(tmp_path):
    ws = workspace(tmp_path, f"{HUB_SD2_ID}@main")
    proc = run_stage(ws, "stages.generate", env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert_one_line_error(proc, f"gen.model '{HUB_SD2_ID}@main' is not pinned", f"{HUB_SD2_ID}@<40-hex commit sha>",
                          "HfApi().model_info")
    assert not (ws / "data" / "generated").exists()


@pytest.mark.parametrize("gen,fragments", [
    ({"model": HUB_SD2_ID}, (f"gen.model '{HUB_SD2_ID}' is not pinned", "hf download gmail-smoke/tiny-sd2")),
    ({"model": f"{HUB_SD2_ID}@{HUB_SD2_REVISION[:12]}"}, ("is not pinned",)),
    ({"scale": "mini"}, ("is a Hub id, which only paper scale loads",)),
    ({"model": "no-slash@" + "0" * 40}, ("unknown gen.model", "org/name@<40-hex sha>")),
    ({"model": "flux", "scale": "mini", "weights": str(ROOT / "pretrain/models/sd2")},
     ("holds a sd2 model but gen.model is flux", "-S gen.weights=pretrain/models/flux")),
])
def test_bad_generator_params_are_one_line_errors(gen, fragments, tmp_path, monkeypatch, capsys):
    """Checked with the params, before any model is loaded (in process: the subprocess case is above)."""
    from gmail.core.cli import run
    from stages import generate

    ws = workspace(tmp_path, gen.pop("model", f"{HUB_SD2_ID}@{HUB_SD2_REVISION}"), **gen)
    monkeypatch.chdir(ws)
    assert run(generate.main, ["--params", "params.yaml"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and all(f in line for f in fragments), line


def test_a_revision_missing_from_the_cache_says_how_to_download_it(hf_home, tmp_path):
    ws = workspace(tmp_path, f"{HUB_SD2_ID}@{'f' * 40}")
    assert_one_line_error(run_stage(ws, "stages.generate", env=hub_env(hf_home), timeout=120),
                          f"cannot load {HUB_SD2_ID}", f"hf download {HUB_SD2_ID} --revision {'f' * 40}")


def _dvc(cwd, *args, env: dict | None = None):
    import os

    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_dvc_tracks_the_revision_as_a_param_and_only_the_selected_weights_as_a_dep(tmp_path, monkeypatch):
    """The stage as DVC resolves it from the project's dvc.yaml: a family lists its own weights folder
    (not the other family's); a Hub id lists the placeholder; `gen` (so gen.model and its revision) is a param."""
    from dvc.repo import Repo

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy2(ROOT / "dvc.yaml", ws / "dvc.yaml")
    _dvc(ws, "init", "--no-scm", "-q")
    monkeypatch.chdir(ws)  # DVC resolves a stage name against the working directory's dvc.yaml
    model_deps = {}
    for model, weights in (("flux", "pretrain/models/flux"), (f"{HUB_SD2_ID}@{HUB_SD2_REVISION}", str(PLACEHOLDER))):
        write_params(ws / "params.yaml", gen={"model": model, "weights": weights})
        with Repo(str(ws)) as repo:
            (stage,) = repo.stage.collect("generate")
            deps = [d.def_path for d in stage.deps if not hasattr(d, "params")]
            params = {p for d in stage.deps if hasattr(d, "params") for p in d.params}
        model_deps[model] = [d for d in deps if not d.endswith((".py", "B.jsonl"))]
        assert "gen" in params and yaml.safe_load((ws / "params.yaml").read_text())["gen"]["model"] == model
    assert model_deps == {"flux": ["pretrain/models/flux"], f"{HUB_SD2_ID}@{HUB_SD2_REVISION}": [str(PLACEHOLDER)]}
