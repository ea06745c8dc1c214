"""The paper-smoke run: both pipelines, every stage, on the paper code path, with tiny
random-weight models of the paper's classes and fixture data in the real formats (nothing
downloaded; a few minutes on 2 CPU cores).

    python -m tools.paper_smoke [--work DIR] [--keep]      # `make paper-smoke`

Steps, in a scratch git repository (a copy of this checkout's files; DIR, or a temporary folder
removed at the end unless --keep):

1. `python -m tools.paper_fixtures fixtures` (docs/paper-smoke.md);
2. `python -m tools.scale paper`, then the same with `--overlay tools/paper_smoke.yaml`, which only
   points inputs at the fixtures and shrinks counts;
3. `dvc repro` (dvc.yaml), then `dvc repro llm/dvc.yaml`;
4. `dvc exp run --temp -S gen.model=flux` (T17's generator ablation) and one LLM experiment,
   `dvc exp run --temp llm/dvc.yaml -S llm.model.lora_rank=8`.

It fails (exit 1, one line naming the stage) unless every stage of both DAGs is in dvc.lock, each
stage recorded `scale: paper` in its outputs, and no stage imported a mini-scale module
(`gmail.models.mini_clip`, `gmail.generation.mini_*`, the easy-vqa readers) or opened a file of the
easy-vqa package (GMAIL_AUDIT_DIR: see gmail/core/cli.py). It prints the stages each step ran and
the wall time of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gmail.core.cli import run
from gmail.core.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = "tools/paper_smoke.yaml"
PIPELINES = ("dvc.yaml", "llm/dvc.yaml")
EXPERIMENTS = (("dvc.yaml", ["-S", "gen.model=flux"]), ("llm/dvc.yaml", ["-S", "llm.model.lora_rank=8"]))


def copy_checkout(dst: Path) -> None:
    """This checkout's tracked and untracked-but-not-ignored files (what a commit of the working
    tree would hold) into `dst`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # a deleted but still listed file is skipped
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


class Smoke:
    def __init__(self, work: Path):
        self.work = work
        self.audit = work / ".audit"
        bin_dir = Path(sys.executable).parent
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
                        GIT_AUTHOR_NAME="smoke", GIT_AUTHOR_EMAIL="smoke@localhost",
                        GIT_COMMITTER_NAME="smoke", GIT_COMMITTER_EMAIL="smoke@localhost")
        self.times: dict[str, float] = {}

    def sh(self, *cmd: str, step: str | None = None) -> str:
        """Run `cmd` in the scratch repository; a dvc command's stages write audit reports."""
        start = time.perf_counter()
        env = dict(self.env, GMAIL_AUDIT_DIR=str(self.audit)) if cmd[0] == "dvc" else self.env
        proc = subprocess.run(list(cmd), cwd=self.work, env=env, capture_output=True, text=True)
        if step:
            self.times[step] = time.perf_counter() - start
        if proc.returncode:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            print(tail, file=sys.stderr)
            raise PipelineError(f"paper smoke: `{' '.join(cmd)}` failed (exit {proc.returncode}; its last lines are above): "
                                f"rerun with --keep --work DIR to inspect")
        return proc.stdout + proc.stderr

    def prepare(self) -> None:
        copy_checkout(self.work)
        # The checkout's lock files and metrics are mini scale's: start without them, so that
        # every lock entry and metrics file the check reads comes from this run.
        stale = [self.work / "dvc.lock", self.work / "llm" / "dvc.lock"]
        stale += [p for d in ("metrics", "plots") for p in (self.work / d).glob("*") if p.name != "pretrain"]
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        py = sys.executable
        self.sh("git", "init", "-q", "-b", "main")
        self.sh(py, "-m", "tools.paper_fixtures", "fixtures", step="fixtures")
        self.sh(py, "-m", "tools.scale", "paper")
        self.sh(py, "-m", "tools.scale", "paper", "--overlay", OVERLAY)
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-qm", "paper smoke")

    def repro(self) -> dict[str, list[str]]:
        ran = {}
        for pipeline in PIPELINES:
            log = self.sh("dvc", "repro", pipeline, step=f"dvc repro {pipeline}")
            ran[pipeline] = ran_stages(log)
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-qm", "paper smoke: repro")
        for pipeline, overrides in EXPERIMENTS:
            name = f"dvc exp run --temp {pipeline} {' '.join(overrides)}"
            ran[name] = ran_stages(self.sh("dvc", "exp", "run", "--temp", pipeline, *overrides, step=name))
        return ran

    def check(self) -> list[str]:
        """Every stage of both pipelines locked, at paper scale, with no mini module imported."""
        locked = []
        for pipeline in PIPELINES:
            lock = self.work / pipeline.replace("dvc.yaml", "dvc.lock")
            names = list(yaml.safe_load(lock.read_text())["stages"]) if lock.is_file() else []
            expected = listed_stages(self.work, pipeline)
            missing = sorted(set(expected) - set(names))
            if missing:
                raise PipelineError(f"paper smoke: {pipeline} stages not in its dvc.lock: {', '.join(missing)}")
            locked += [f"{pipeline}:{n}" for n in names]
        reports = {p.stem: json.loads(p.read_text()) for p in sorted(self.audit.glob("*.json"))}
        for name, report in reports.items():
            if report["scale"] != "paper":
                raise PipelineError(f"paper smoke: stage {name} ran at scale {report['scale']!r}, not paper")
            if report["mini_modules"] or report["easy_vqa_files"]:
                raise PipelineError(f"paper smoke: stage {name} used mini-scale code or data: "
                                    f"{', '.join(report['mini_modules'] + report['easy_vqa_files'])}")
        unaudited = sorted({n.split(":")[-1] for n in locked} - set(reports))
        if unaudited:
            raise PipelineError(f"paper smoke: no audit report from stages {', '.join(unaudited)} (did they run through gmail.core.cli.run?)")
        return locked


def listed_stages(work: Path, pipeline: str) -> list[str]:
    """The stage names `dvc stage list` gives for one pipeline file (foreach expanded)."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only", pipeline], cwd=work, capture_output=True, text=True,
                         env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"))
    if out.returncode:
        raise PipelineError(f"paper smoke: dvc stage list {pipeline} failed: {out.stderr.strip().splitlines()[-1:]}")
    return [line.split(":")[-1].strip() for line in out.stdout.splitlines() if line.strip()]


def ran_stages(log: str) -> list[str]:
    return [line.split("'")[1].split(":")[-1] for line in log.splitlines() if line.startswith("Running stage '")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="scratch folder for the run (must not exist or be empty); default: a temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    args = ap.parse_args(argv)
    if args.work:
        work = Path(args.work).resolve()
        if work.exists() and any(work.iterdir()):
            raise PipelineError(f"--work {work} is not empty: give a new folder (the smoke run fills it with a repository copy)")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="gmail-paper-smoke-"))
    start = time.perf_counter()
    smoke = Smoke(work)
    try:
        smoke.prepare()
        ran = smoke.repro()
        locked = smoke.check()
    finally:
        print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in smoke.times.items()), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for step, names in ran.items():
        print(f"{step}: {len(names)} stages ran: {', '.join(names)}")
    print(f"locked ({len(locked)}): {', '.join(locked)}")
    print(f"paper smoke: ok in {time.perf_counter() - start:.0f} s" + (f" (kept in {work})" if args.keep else ""))


if __name__ == "__main__":
    sys.exit(run(main))
