"""A stage killed with SIGKILL while it writes its output: the old output stays whole, and the rerun
succeeds and leaves no temporary folder (`.<name>.tmp-*`, `.<name>.old-*`) behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from helpers import ROOT, read_jsonl, run_stage, write_params

COUNTS = {"n_a": 500, "n_b": 300, "n_t": 200}  # enough images that writing them takes a moment


def leftovers(ws) -> list[str]:
    return sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def test_sigkilled_captions_stage_reruns_cleanly(tmp_path):
    ws = tmp_path
    write_params(ws / "params.yaml", data=COUNTS)
    old = ws / "data" / "captions"
    old.mkdir(parents=True)
    (old / "B.jsonl").write_text("{}\n")  # the previous output, to be replaced whole or not at all
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.captions", "--params", "params.yaml"], cwd=ws, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.suffix == ".png" for tmp in ws.glob("data/.captions.tmp-*") for p in tmp.rglob("*")):
            assert proc.poll() is None and time.monotonic() < deadline, f"stage ended before writing:\n{proc.stderr.read()}"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in ws.glob("data/.captions.tmp-*")] != []  # it died mid-write ...
    assert (old / "B.jsonl").read_text() == "{}\n" and not (old / "A.jsonl").exists()  # ... and the old output is whole

    rerun = run_stage(ws, "stages.captions")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert leftovers(ws) == []
    for split, n in (("A", COUNTS["n_a"]), ("B", COUNTS["n_b"]), ("T", COUNTS["n_t"])):
        records = read_jsonl(old / f"{split}.jsonl")
        assert len(records) == n and all((old / r["path"]).is_file() for r in records)
    assert json.loads((ws / "metrics" / "captions.json").read_text())["n_b"] == COUNTS["n_b"]
