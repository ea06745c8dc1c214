"""Sharded, resumable, multi-process generation (stage `generate`).

The manifest (`gmail.data.shards.build_manifest`) is cut into fixed index ranges; process
`rank` of `world` takes shards k with k % world == rank, so every shard has one owner and the
assignment depends only on (shard count, world size). Each image is sampled from its own seed
(`seed + index`), so the images are the same with one process or eight.

Resume state lives in a scratch folder outside the stage's outputs, keyed by a fingerprint
of everything that decides the images (params, manifest, generation code, model files).
DVC deletes a stage's outputs before it runs it, so shards kept in the output folder would
not survive to the rerun; shards kept under `paths.scratch/generate-<key>/` do, and a rerun
with the same key skips every finished shard and redoes the rest. A changed param or code
file gives a new key, so stale shards are never reused. Once every shard exists, the main
process hard-links them into the output folder (atomically) and removes the scratch folder.

Several runs may share one scratch root (two `dvc exp run --temp`, queue workers, runs with
other params in one checkout): each holds a lock on its own folder while it lives
(`claim_scratch`), and only folders whose lock is free are deleted as stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from gmail.core.errors import PipelineError
from gmail.data.shards import fingerprint, list_shards, shard_name, shard_ranges, write_shard
from gmail.generation.samplers import Sampler

CODE_FILES = ("gmail/generation/mini_diffusion.py", "gmail/generation/mini_sampling.py", "gmail/generation/samplers.py",
              "gmail/generation/paper_pipelines.py", "gmail/generation/sharded.py", "gmail/data/shards.py",
              "gmail/models/text.py")


def _file_stamps(path: str) -> list:
    """(relative name, size, mtime) of the files under a local model dir; a hub id stands for itself."""
    root = Path(path)
    if not root.exists():
        return [path]
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [(str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def scratch_key(settings: dict, manifest: list[dict], model_path: str) -> str:
    """Fingerprint of what decides the images: settings, manifest, generation code, model files."""
    package = Path(__file__).resolve().parents[2]
    code = [(f, hashlib.sha256((package / f).read_bytes()).hexdigest()) for f in CODE_FILES if (package / f).is_file()]
    return fingerprint(settings, manifest, code, _file_stamps(model_path))


LOCK = ".lock"  # inside each scratch folder; its owner holds an exclusive flock on it for the whole run


def _lock_scratch(scratch: Path) -> int:
    """Create `scratch` and take its lock, waiting while another run with the same key holds it;
    returns the locked file descriptor.

    A lock taken on a lock file that was deleted meanwhile (its folder removed by the run that
    finished or by a cleaner) guards nothing, so it is retaken on the file now at that path.
    """
    waiting = False
    while True:
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(scratch / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # the folder was removed between mkdir and open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waiting:
                print(f"waiting for another generate run that uses {scratch} to finish", file=sys.stderr)
                waiting = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_current(fd, scratch / LOCK):
            return fd
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """Whether open file `fd` is still the file at `path` (not deleted or replaced)."""
    try:
        here = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def remove_unowned_scratch(root: str | os.PathLike, keep: str | os.PathLike | None = None) -> list[Path]:
    """Delete the `<root>/generate-*` folders (except `keep`) that no running generate holds; returns them.

    A folder is free when its lock can be taken without waiting: its run finished, crashed or
    was killed (the kernel drops the lock of a dead process). A folder whose lock is held belongs
    to a run going on now (another `dvc exp run --temp`, a queue worker) and is left alone.
    """
    root = Path(root)
    removed = []
    for old in sorted(root.glob("generate-*")) if root.is_dir() else []:
        if (keep is not None and old == Path(keep)) or not old.is_dir() or old.is_symlink():
            continue
        try:
            fd = os.open(old / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue  # gone meanwhile, or not ours to touch
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Holding the current lock file, no run can own this folder until it is gone.
            if _is_current(fd, old / LOCK):
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
        except BlockingIOError:
            pass  # a live run holds it
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def claim_scratch(root: str | os.PathLike, key: str, owner: bool = True) -> Iterator[Path]:
    """`<root>/generate-<key>/`, held by this run for the duration of the block.

    The owner (the main process; the other ranks of an `accelerate launch` pass `owner=False`
    and share its folder) takes the folder's lock, waiting for a run with the same key to finish,
    then deletes the folders of other keys that no live run holds and its own half-written
    shards. If the block succeeds the folder is deleted (the shards are in the output by then);
    if it fails the finished shards stay for the rerun to resume from. The lock is released
    when the block ends, or by the kernel when the process dies.
    """
    scratch = Path(root) / f"generate-{key}"
    if not owner:
        yield scratch
        return
    try:
        fd = _lock_scratch(scratch)
    except OSError as exc:
        raise PipelineError(f"cannot write {scratch}: {exc.strerror or exc}") from exc
    try:
        remove_unowned_scratch(root, keep=scratch)
        for partial in scratch.glob(".shard-*.tmp-*"):
            partial.unlink(missing_ok=True)
        yield scratch
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(fd)


def my_shards(n_shards: int, rank: int = 0, world: int = 1) -> list[int]:
    """Shards owned by process `rank` of `world`: a disjoint, deterministic cover of all shards."""
    if not 0 <= rank < world:
        raise PipelineError(f"process rank {rank} is outside a world of {world}")
    return list(range(rank, n_shards, world))


def generate_shards(manifest: list[dict], shard_size: int, scratch: str | os.PathLike, sampler: Sampler, meta: dict,
                    rank: int = 0, world: int = 1, progress: bool = True) -> list[int]:
    """Write this process's unfinished shards into `scratch`; returns the shards it wrote.

    `meta` (model, steps, guidance) is stored with every item; `sampler(prompts, seeds)` yields
    one uint8 image per prompt in order.
    """
    scratch = Path(scratch)
    ranges = shard_ranges(len(manifest), shard_size)
    todo = [k for k in my_shards(len(ranges), rank, world) if not (scratch / shard_name(k)).is_file()]
    total = sum(len(ranges[k]) for k in todo)
    bar = tqdm(total=total, desc=f"generate ({meta.get('model', '?')}, rank {rank}/{world})", unit="img",
               disable=not progress or total == 0)
    for k in todo:
        items = [manifest[i] for i in ranges[k]]
        images = sampler([it["caption"] for it in items], [it["seed"] for it in items])

        def samples(items=items, images=images):
            for item, image in zip(items, images, strict=True):
                bar.update(1)
                yield {**item, **meta}, image

        write_shard(scratch / shard_name(k), samples())
    bar.close()
    return todo


def collect_shards(scratch: str | os.PathLike, manifest: list[dict], shard_size: int, out: str | os.PathLike) -> list[str]:
    """Hard-link (or copy) every shard from `scratch` into `out`; returns the shard names.

    Raises PipelineError when a shard is missing (a process failed), naming it.
    """
    scratch, out = Path(scratch), Path(out)
    names = [shard_name(k) for k in range(len(shard_ranges(len(manifest), shard_size)))]
    missing = [n for n in names if not (scratch / n).is_file()]
    if missing:
        raise PipelineError(f"{len(missing)} shards were not generated (first: {scratch / missing[0]}): "
                            "rerun `dvc repro generate`; finished shards are kept and skipped")
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        try:
            os.link(scratch / n, out / n)
        except OSError:
            shutil.copy2(scratch / n, out / n)
    extra = sorted(set(p.name for p in list_shards(scratch)) - set(names))
    if extra:
        raise PipelineError(f"scratch folder {scratch} holds unexpected shard {extra[0]}: delete {scratch} and rerun")
    return names
