"""Several `generate` runs sharing one scratch root (two `dvc exp run --temp`, queue workers, runs
with other params in one checkout): each keeps its own scratch folder while it lives
(`claim_scratch`), and only folders no live run holds are deleted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, read_jsonl, tiny_generator_config, write_params

from gmail.data.shards import list_shards, read_shards
from gmail.generation.mini_diffusion import build_generator, save_generator
from gmail.generation.sharded import LOCK, claim_scratch


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- claim_scratch, in process


def test_claim_removes_only_folders_no_live_run_holds(tmp_path):
    (tmp_path / "generate-dead").mkdir()
    (tmp_path / "generate-dead" / "shard-00000.tar").write_text("x")
    (tmp_path / "generate-nolock").mkdir()  # a folder of the old scheme, or one being created
    with claim_scratch(tmp_path, "live") as live:
        (live / "shard-00000.tar").write_text("x")
        with claim_scratch(tmp_path, "mine") as mine:
            assert sorted(p.name for p in tmp_path.iterdir()) == ["generate-live", "generate-mine"]
            assert (live / "shard-00000.tar").is_file() and (mine / LOCK).is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["generate-live"]  # a finished run removes its own
    assert list(tmp_path.iterdir()) == []


def test_failed_run_keeps_its_shards_and_frees_them(tmp_path):
    with pytest.raises(Boom):
        with claim_scratch(tmp_path, "a") as scratch:
            (scratch / "shard-00000.tar").write_text("x")
            (scratch / ".shard-00001.tar.tmp-1").write_text("half")
            raise Boom
    assert (scratch / "shard-00000.tar").is_file()
    with claim_scratch(tmp_path, "a") as again:  # the rerun resumes: finished shards kept, half-written ones not
        assert again == scratch and sorted(p.name for p in again.iterdir()) == [LOCK, "shard-00000.tar"]
    assert not scratch.exists()


def test_other_ranks_share_the_main_process_folder_without_locking(tmp_path):
    with claim_scratch(tmp_path, "k") as main:
        with claim_scratch(tmp_path, "k", owner=False) as rank1:
            assert rank1 == main
        assert main.is_dir()  # a rank leaving does not delete it
    assert not main.exists()
    with claim_scratch(tmp_path, "k", owner=False) as rank1:
        assert not rank1.exists()


def test_a_run_with_the_same_key_waits_for_the_first(tmp_path):
    got = []

    def second():
        with claim_scratch(tmp_path, "k") as scratch:
            got.append((time.monotonic(), scratch.is_dir(), sorted(p.name for p in scratch.iterdir())))

    with claim_scratch(tmp_path, "k") as first:
        (first / "shard-00000.tar").write_text("x")
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert got == []  # still waiting
        released = time.monotonic()
    thread.join(10)
    assert len(got) == 1 and got[0][0] >= released
    assert got[0][1:] == (True, [LOCK])  # a fresh folder: the first run finished and removed its own


def test_a_killed_owner_frees_its_folder(tmp_path):
    code = ("import sys, time; from gmail.generation.sharded import claim_scratch\n"
            "with claim_scratch(sys.argv[1], 'k'):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with claim_scratch(tmp_path, "other"):
            assert (tmp_path / "generate-k").is_dir()  # alive: kept
    finally:
        proc.kill()
        proc.wait()
    with claim_scratch(tmp_path, "other"):
        assert not (tmp_path / "generate-k").exists()  # killed: its lock went with it


# --------------------------------------------------------------------------- two generate processes

N_RECORDS = 12


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace with a tiny sd2 generator, N_RECORDS B records and two params files that differ
    in gen.steps and paths.generated, sharing paths.scratch, metrics and stats."""
    ws = tmp_path_factory.mktemp("concurrent")
    torch.manual_seed(0)
    config = tiny_generator_config("sd2")
    model, scheduler = build_generator(config)
    save_generator(model, scheduler, config, ws / "models" / "sd2")
    (ws / "data" / "captions").mkdir(parents=True)
    rows = [{"image_id": f"im{i}", "path": f"images/im{i}.png", "captions": [f"a red circle number {i}", f"circle {i}"]}
            for i in range(N_RECORDS)]
    (ws / "data" / "captions" / "B.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, steps in (("a", 12), ("b", 3)):
        write_params(ws / f"{name}.yaml", gen={"weights": "models/sd2", "steps": steps, "batch_size": 1, "per_real": 1,
                                               "shard_size": 1, "device": "cpu"}, paths={"generated": f"data/gen_{name}"})
    return ws


def start(ws: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages.generate", "--params", f"{name}.yaml"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"


def check_output(ws: Path, name: str, steps: int) -> None:
    out = ws / "data" / f"gen_{name}"
    manifest = read_jsonl(out / "manifest.jsonl")
    metas = [meta for meta, _ in read_shards(list_shards(out / "shards"))]
    assert [m["id"] for m in metas] == [m["id"] for m in manifest] == [f"im{i}_0" for i in range(N_RECORDS)]
    assert {m["steps"] for m in metas} == {steps}


def leftovers(ws: Path) -> list[str]:
    return sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def test_two_generates_with_other_params_started_together_both_finish(workspace):
    """Runs a and b start together. To make them overlap for certain, b is frozen (SIGSTOP) at once,
    a is frozen half-way through its shards (holding its scratch folder), then b runs: it cleans up
    the scratch root and finishes while a is alive; then a resumes and finishes too, each with its
    own images. Before, b deleted a's folder and a crashed with FileNotFoundError."""
    ws = workspace
    a, b = start(ws, "a"), start(ws, "b")
    b.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while not list(ws.glob(".scratch/generate-*/shard-*.tar")):
            assert a.poll() is None and time.monotonic() < deadline, "run a ended before writing a shard"
            time.sleep(0.01)
        a.send_signal(signal.SIGSTOP)
        (a_scratch,) = ws.glob(".scratch/generate-*")
        shards = len(list_shards(a_scratch))
        assert shards < N_RECORDS, "run a finished before it could be frozen: give it more work"
        b.send_signal(signal.SIGCONT)
        finish(b)
        check_output(ws, "b", 3)
        assert len(list_shards(a_scratch)) == shards  # b did not touch a's folder
        assert [p.name for p in ws.glob(".scratch/generate-*")] == [a_scratch.name]  # b removed its own
    finally:
        a.send_signal(signal.SIGCONT)
        b.send_signal(signal.SIGCONT)
    finish(a)
    check_output(ws, "a", 12)
    assert list(ws.glob(".scratch/generate-*")) == [] and leftovers(ws) == []
