"""Output safety in gmail.core.io: atomic replacement that never loses the old output, stale temps
of killed runs cleaned without touching live ones, refused output paths, one-line write errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gmail.core import io as gio
from gmail.core.config import get_paths
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, atomic_file, check_output_path, remove_stale_temps, write_json


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """cwd = `<tmp>/ws` (a stand-in repository with .git, .dvc and .venv); `<tmp>/outside` is a folder beside it."""
    ws = tmp_path / "ws"
    for name in (".git", ".dvc", ".venv"):
        (ws / name).mkdir(parents=True)
        (ws / name / "keep").write_text(name)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("outside")
    monkeypatch.chdir(ws)
    return ws


def old_output(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "old.txt").write_text("old")
    (path / "old2.txt").write_text("old2")
    return path


def version(path: Path) -> str | None:
    """'old' or 'new' when `path` holds that output complete, else None."""
    if not path.is_dir():
        return None
    names = sorted(p.name for p in path.iterdir())
    return {("old.txt", "old2.txt"): "old", ("new.txt",): "new"}.get(tuple(names))


def siblings(path: Path) -> list[str]:
    """Temp siblings (`.<name>.tmp-*`, `.<name>.old-*`) of `path`."""
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*"))


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


# --------------------------------------------------------------------------- replacing the old output


@pytest.mark.parametrize("failing", ["rename_in", "rename_aside"])
def test_failed_rename_keeps_the_old_output_and_leaves_no_temp(ws, monkeypatch, failing):
    out = old_output(ws / "out")
    real_rename = os.rename

    def rename(src, dst):
        # rename_in: the new folder onto `out`; rename_aside: `out` onto its `.old-` name
        if (failing == "rename_in" and ".tmp-" in str(src)) or (failing == "rename_aside" and ".old-" in str(dst)):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(gio.os, "rename", rename)
    with pytest.raises(PipelineError, match=r"^cannot write out: Input/output error$"):
        with atomic_dir("out") as tmp:
            (tmp / "new.txt").write_text("new")
    assert version(out) == "old"
    assert siblings(out) == []


def test_interrupt_during_the_swap_puts_the_old_output_back(ws, monkeypatch):
    out = old_output(ws / "out")
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(gio.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
    assert version(out) == "old" and siblings(out) == []


def test_at_every_step_the_old_or_the_new_output_is_complete(ws, monkeypatch):
    out = old_output(ws / "out")
    states = []
    real_rename, real_rmtree = os.rename, gio.shutil.rmtree

    def record(step):
        asides = [p for p in out.parent.glob(".out.old-*")]
        states.append((step, version(out), [version(p) for p in asides]))

    def rename(src, dst):
        real_rename(src, dst)
        record(f"rename {Path(src).name} -> {Path(dst).name}")

    def rmtree(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        record(f"rmtree {Path(path).name}")

    monkeypatch.setattr(gio.os, "rename", rename)
    monkeypatch.setattr(gio.shutil, "rmtree", rmtree)
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        record("written")
    assert len(states) == 4, states  # written, old aside, new in, old deleted
    for step, final, asides in states:
        assert final in ("old", "new") or "old" in asides, f"no complete output after {step}: {states}"
    assert version(out) == "new" and siblings(out) == []


def test_replaces_a_file_and_a_dangling_link(ws):
    (ws / "f").write_text("a file")
    with atomic_dir("f") as tmp:
        (tmp / "new.txt").write_text("new")
    assert version(ws / "f") == "new"
    (ws / "link").symlink_to("missing-target")
    with atomic_dir("link") as tmp:
        (tmp / "new.txt").write_text("new")
    assert version(ws / "link") == "new" and not (ws / "link").is_symlink()


# --------------------------------------------------------------------------- stale temps


def test_stale_temps_are_removed_and_live_ones_kept(ws):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = dead_pid()
        (ws / "data").mkdir()
        live = [f".out.tmp-{sleeper.pid}-abc", f".out.old-{sleeper.pid}-def", f".out.tmp-{os.getpid()}-ghi"]
        stale = [f".out.tmp-{dead}-abc", f".out.old-{dead}-def", ".out.tmp-k2j4h5x1"]  # the last: a name of the old scheme
        others = [f".outer.tmp-{dead}-abc", f".other.old-{dead}-x", "out2"]
        for i, name in enumerate(live + stale + others):
            path = ws / "data" / name
            path.mkdir() if i % 2 == 0 else path.write_text("x")
        with atomic_dir("data/out") as tmp:
            (tmp / "new.txt").write_text("new")
        assert sorted(p.name for p in (ws / "data").iterdir()) == sorted(live + others + ["out"])
        # atomic_file cleans the same way
        (ws / "data" / f".m.json.tmp-{dead}-x").write_text("half")
        (ws / "data" / f".m.json.tmp-{sleeper.pid}-y").write_text("half")
        write_json("data/m.json", {"a": 1})
        assert siblings(ws / "data" / "m.json") == [f".m.json.tmp-{sleeper.pid}-y"]
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once its owner is gone, the next write removes it.
    assert [p.name for p in remove_stale_temps(ws / "data" / "m.json")] == [f".m.json.tmp-{sleeper.pid}-y"]


def test_temp_names_carry_the_owner_pid(ws):
    with atomic_dir("out") as tmp:
        assert tmp.name.startswith(f".out.tmp-{os.getpid()}-")
    with atomic_file("f.txt"):
        assert [p.name.startswith(f".f.txt.tmp-{os.getpid()}-") for p in ws.glob(".f.txt.*")] == [True]


# --------------------------------------------------------------------------- refused paths

REFUSED = {
    ".": "the working directory",
    "./": "the working directory",
    "data/..": "the working directory",
    "..": "a parent of the working directory",
    "../..": "a parent of the working directory",
    "/": "a parent of the working directory",
    ".git": "inside .git/",
    ".git/objects": "inside .git/",
    ".dvc": "inside .dvc/",
    ".dvc/tmp/x": "inside .dvc/",
    ".venv": "inside .venv/",
    "data/.git": "inside .git/",
    "../outside": "outside the working directory",
    "link": "outside the working directory",
    "link/out": "outside the working directory",
}


@pytest.mark.parametrize("path", sorted(REFUSED))
def test_atomic_dir_refuses_the_repository_its_parents_machinery_and_paths_outside(ws, tmp_path, path):
    (ws / "data").mkdir()
    (ws / "link").symlink_to(tmp_path / "outside")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(PipelineError, match=REFUSED[path]):
        with atomic_dir(path) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    absolute = ws / path if not path.startswith("/") else Path(path)
    with pytest.raises(PipelineError, match=REFUSED[path]):
        with atomic_dir(absolute):
            pass


def test_atomic_file_may_write_outside_but_not_into_repository_machinery(ws, tmp_path):
    with atomic_file(tmp_path / "outside" / "f.txt") as fh:
        fh.write("ok")
    assert (tmp_path / "outside" / "f.txt").read_text() == "ok"
    for path in (".git/HEAD", ".dvc/config", ".venv/x", ".", ".."):
        with pytest.raises(PipelineError):
            write_json(path, {})
    assert (ws / ".git" / "keep").read_text() == ".git"


def test_atomic_file_replaces_a_link_into_the_dvc_cache_not_its_target(ws):
    # With DVC's symlink cache a checked-out output file is a link into .dvc/cache: a rerun replaces the link.
    (ws / ".dvc" / "cache").mkdir()
    (ws / ".dvc" / "cache" / "ab12").write_text("cached")
    (ws / "metrics").mkdir()
    (ws / "metrics" / "m.json").symlink_to(ws / ".dvc" / "cache" / "ab12")
    write_json("metrics/m.json", {"a": 1})
    assert not (ws / "metrics" / "m.json").is_symlink() and (ws / ".dvc" / "cache" / "ab12").read_text() == "cached"


def test_links_inside_the_working_directory_are_fine(ws):
    (ws / "real").mkdir()
    (ws / "alias").symlink_to(ws / "real")
    assert check_output_path("alias/out") == ws.resolve() / "real" / "out"
    with atomic_dir("alias/out") as tmp:
        (tmp / "new.txt").write_text("new")
    assert version(ws / "real" / "out") == "new"


@pytest.mark.parametrize("path", sorted(REFUSED))
def test_get_paths_names_the_key_of_a_refused_path(ws, tmp_path, path):
    (ws / "link").symlink_to(tmp_path / "outside")
    params = {"paths": {"captions": "data/captions", "generated": path}}
    with pytest.raises(PipelineError, match=rf"^params key paths\.generated \({path!r}\) .*{REFUSED[path]}") as info:
        get_paths(params, "captions", "generated")
    assert "\n" not in str(info.value)


def test_get_paths_accepts_paths_inside(ws):
    paths = get_paths({"paths": {"a": "data/captions", "b": "./metrics", "c": "x/../y", "d": str(ws / "abs"), "e": ".scratch"}},
                      "a", "b", "c", "d", "e")
    assert paths.a == Path("data/captions") and paths.d == ws / "abs"


# --------------------------------------------------------------------------- write errors


def test_a_file_where_a_folder_should_be_is_cannot_write(ws):
    (ws / "blocker").write_text("a file")
    with pytest.raises(PipelineError, match=r"^cannot write blocker/sub/out: Not a directory$"):
        with atomic_dir("blocker/sub/out"):
            pass
    with pytest.raises(PipelineError, match=r"^cannot write blocker/sub/m.json: Not a directory$"):
        write_json("blocker/sub/m.json", {})
    assert (ws / "blocker").read_text() == "a file"


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_disk_full_inside_the_block_is_cannot_write_and_leaves_no_temp(ws, kind):
    old_output(ws / "out") if kind == "dir" else (ws / "out").write_text("old")
    with pytest.raises(PipelineError, match=r"^cannot write out: No space left on device$"):
        with (atomic_dir if kind == "dir" else atomic_file)("out"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (version(ws / "out") == "old") if kind == "dir" else (ws / "out").read_text() == "old"
    assert siblings(ws / "out") == []


def test_write_json_on_a_read_only_file_system_is_cannot_write(ws, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(gio.os, "replace", read_only)
    with pytest.raises(PipelineError, match=r"^cannot write metrics/m.json: Read-only file system$"):
        write_json("metrics/m.json", {"a": 1})
    assert list((ws / "metrics").iterdir()) == []


def test_other_errors_of_the_block_pass_through_unchanged(ws):
    with pytest.raises(FileNotFoundError):
        with atomic_dir("out"):
            open(ws / "missing-input")
    with pytest.raises(ValueError):
        with atomic_file("f.txt"):
            raise ValueError("bad value")
    assert sorted(p.name for p in ws.iterdir()) == [".dvc", ".git", ".venv"]
