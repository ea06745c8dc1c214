"""Switch params.yaml between mini scale (the default) and paper scale, in place.

    python -m tools.scale paper [--overlay params.paper.yaml] [--params params.yaml] [--dry-run]
    python -m tools.scale mini  [--overlay params.paper.yaml] [--params params.yaml] [--rev HEAD] [--dry-run]

`paper` merges the overlay into params.yaml: each key the overlay sets takes the overlay's
value; every other key, every comment and the key order stay as they are (ruamel.yaml round
trip; the file is replaced atomically). A mapping whose params.yaml value is a section is merged
key by key; one whose params.yaml value is `{}` (reader arguments, `llm.benchmarks`) is replaced
whole. Every overlay key must already exist in params.yaml: an unknown key is a one-line error
(exit 2) and params.yaml is left untouched.

`mini` stores nothing of its own: it puts each key the overlay sets back to its value in
params.yaml as committed at `--rev` (HEAD by default, which the project keeps at mini scale),
and leaves every other edit alone. `git checkout params.yaml` does the same but also drops
those other edits.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken

from gmail.core.cli import run
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_file

SCALES = ("paper", "mini")


class UnknownKey(PipelineError):
    """An overlay key the params file has not got (`key`: its dotted name)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def round_trip_yaml() -> YAML:
    """ruamel's round-trip loader/dumper, set up to reproduce params.yaml byte for byte."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long flow value or comment
    return yaml


def load_round_trip(text: str, what: str) -> CommentedMap:
    """Parse `text` (the file `what`) keeping comments and order; a YAML error or a non-mapping
    top level is a PipelineError naming the file."""
    try:
        doc = round_trip_yaml().load(text)
    except YAMLError as exc:
        raise PipelineError(f"{what} is not valid YAML ({str(exc).splitlines()[0]}): fix the file") from exc
    if not isinstance(doc, CommentedMap):
        raise PipelineError(f"{what} must be a YAML mapping of params sections: fix the file")
    return doc


def dump_round_trip(doc: CommentedMap) -> str:
    buf = io.StringIO()
    round_trip_yaml().dump(doc, buf)
    return buf.getvalue()


def overlay_leaves(params: Mapping, overlay: Mapping, overlay_name: str = "the overlay",
                   params_name: str = "params.yaml", prefix: tuple = ()) -> list[tuple[tuple, object]]:
    """The (key path, value) pairs `overlay` sets in `params`, or a PipelineError naming the first
    overlay key params has not got. A mapping is descended into where params holds a non-empty
    mapping (a section) and set whole where params holds `{}` or a value."""
    out = []
    for key, value in overlay.items():
        path = (*prefix, key)
        dotted = ".".join(map(str, path))
        if key not in params:
            raise UnknownKey(dotted, f"{overlay_name} sets {dotted}, which {params_name} does not have: fix or remove it in "
                             f"{overlay_name} (or add {dotted} to {params_name}, with its comment and a dataclass field, first)")
        current = params[key]
        if isinstance(current, Mapping) and current:
            if not isinstance(value, Mapping):
                raise PipelineError(f"{overlay_name} sets {dotted} to a {type(value).__name__}, but it is a section in {params_name}: "
                                    f"give its keys in {overlay_name} instead")
            out += overlay_leaves(current, value, overlay_name, params_name, path)
        elif isinstance(value, Mapping) and not isinstance(current, Mapping):
            raise PipelineError(f"{overlay_name} gives {dotted} keys, but {params_name}'s {dotted} is a value, not a section: "
                                f"fix {overlay_name}")
        else:
            out.append((path, value))
    return out


def _fresh(value):
    """A copy of an overlay value for params.yaml: containers in flow style (as params.yaml
    writes them) and free of the overlay's comments; scalars keep the overlay's spelling."""
    if isinstance(value, Mapping):
        out = CommentedMap((k, _fresh(v)) for k, v in value.items())
        out.fa.set_flow_style()
        return out
    if isinstance(value, list):
        out = CommentedSeq(_fresh(v) for v in value)
        out.fa.set_flow_style()
        return out
    return value


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _comment_token(parent: Mapping, key):
    """The end-of-line comment after `parent[key]`'s value, or None."""
    entry = parent.ca.items.get(key) if isinstance(parent, CommentedMap) else None
    return entry[2] if entry and len(entry) > 2 else None


def comment_columns(doc: CommentedMap, paths: list[tuple]) -> dict[tuple, int]:
    """The column of each key's end-of-line comment in `doc` (keys without one are left out)."""
    out = {}
    for path in paths:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        token = _comment_token(parent, path[-1])
        if token is not None and token.start_mark is not None:
            out[path] = token.start_mark.column
    return out


def apply_values(doc: CommentedMap, values: list[tuple[tuple, object]], columns: dict[tuple, int] | None = None) -> list[tuple[str, object, object]]:
    """Set each (key path, value) in `doc`; returns (dotted key, old, new) for the keys whose value
    changed. A key's comment keeps its text and column, or moves to `columns[path]` where given
    (a longer value pushes it right; restoring the shorter one brings it back)."""
    changed = []
    for path, value in values:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        old = parent[path[-1]]
        if _plain(old) != _plain(value):
            changed.append((".".join(map(str, path)), _plain(old), _plain(value)))
        parent[path[-1]] = _fresh(value)
        token = _comment_token(parent, path[-1])
        if columns and path in columns and token is not None:
            parent.ca.items[path[-1]][2] = CommentToken(token.value, CommentMark(columns[path]))
    return changed


def committed_values(params_path: Path, rev: str, overlay: Mapping, overlay_name: str) -> tuple[list[tuple[tuple, object]], dict]:
    """The (key path, value) pairs that restore every key `overlay` sets to its value in
    `params_path` as committed at git revision `rev` (which must be at mini scale), and the
    columns of those keys' comments there."""
    params_path = params_path.resolve()
    try:
        done = subprocess.run(["git", "-C", str(params_path.parent), "show", f"{rev}:./{params_path.name}"],
                              capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise PipelineError("git is not installed: restore params.yaml by hand") from exc
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["git show failed"])[-1]
        raise PipelineError(f"cannot read {params_path.name} at {rev} from git ({reason}): pass --rev <a commit>, "
                            f"or restore it with `git checkout {rev} -- {params_path.name}` (drops your other edits too)")
    committed = load_round_trip(done.stdout, f"{params_path.name} at {rev}")
    # The committed file's own shape decides what is a section (there paper_b is `{}`, set whole).
    try:
        leaves = overlay_leaves(committed, overlay, overlay_name, f"{params_path.name} at {rev}")
    except UnknownKey as exc:
        raise PipelineError(f"{params_path.name} at {rev} has no {exc.key} (added after that commit?): pass a later --rev, "
                            f"or set {exc.key} by hand") from exc
    out = []
    for path, _ in leaves:
        node = committed
        for key in path:
            node = node[key]
        if path[-1] == "scale" and node != "mini":
            raise PipelineError(f"{params_path.name} at {rev} is not at mini scale ({'.'.join(map(str, path))}: {node}): "
                                "pass --rev <a commit whose params.yaml is mini>")
        out.append((path, node))
    return out, comment_columns(committed, [path for path, _ in out])


def missing_paths(values: list[tuple[tuple, object]]) -> list[str]:
    """Absolute paths among the values (placeholders such as /data/...) that do not exist here."""
    found = []

    def walk(value):
        if isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith("/"):
            stem = value.split("{")[0]  # "/data/clip_benchmark/{dataset}": check the part before the template
            if not Path(stem).exists():
                found.append(value)

    for _, value in values:
        walk(value)
    return list(dict.fromkeys(found))


def switch(scale: str, params_path: Path, overlay_path: Path, rev: str = "HEAD", dry_run: bool = False) -> list[tuple[str, object, object]]:
    """Rewrite `params_path` at `scale` (see the module docstring); returns the changed keys."""
    # 1. Read both files; refuse a params file that ruamel would not reproduce unchanged.
    for path, what in ((params_path, "params file"), (overlay_path, "overlay")):
        if not path.is_file():
            raise PipelineError(f"{what} {path} not found: run from the repository root or pass --params / --overlay")
    text = params_path.read_text()
    doc = load_round_trip(text, str(params_path))
    if dump_round_trip(doc) != text:
        raise PipelineError(f"{params_path} does not round-trip through ruamel.yaml unchanged (unusual indentation or "
                            "quoting?): edit the keys by hand, or normalise the file first")
    overlay = load_round_trip(overlay_path.read_text(), str(overlay_path))

    # 2. The values to set: the overlay's, or the committed file's for the same keys.
    values = overlay_leaves(doc, overlay, overlay_path.name, params_path.name)
    columns = None
    if scale == "mini":
        values, columns = committed_values(params_path, rev, overlay, overlay_path.name)
    changed = apply_values(doc, values, columns)

    # 3. Write atomically (nothing is written on any error above).
    if changed and not dry_run:
        with atomic_file(params_path) as fh:
            fh.write(dump_round_trip(doc))
    missing = missing_paths(values) if scale == "paper" else []
    if missing:
        print(f"note: {len(missing)} paths do not exist on this machine (placeholders?): {', '.join(missing)}; "
              f"edit them in {params_path.name}, or in {overlay_path.name} and switch again", file=sys.stderr)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scale", choices=SCALES, help="paper: apply the overlay; mini: restore the overlay's keys from git")
    parser.add_argument("--overlay", default="params.paper.yaml", help="paper-scale overlay (default: params.paper.yaml)")
    parser.add_argument("--params", default="params.yaml", help="params file rewritten in place (default: params.yaml)")
    parser.add_argument("--rev", default="HEAD", help="mini: git revision whose params file holds the mini values (default: HEAD)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    args = parser.parse_args(argv)
    params_path = Path(args.params)
    changed = switch(args.scale, params_path, Path(args.overlay), args.rev, args.dry_run)
    for key, old, new in changed:
        print(f"{key}: {old!r} -> {new!r}")
    verb = "would set" if args.dry_run else "set"
    print(f"{params_path}: {verb} {len(changed)} keys to {args.scale} scale"
          + ("" if changed else " (already there)")
          + ("; back with: python -m tools.scale mini" if args.scale == "paper" and changed and not args.dry_run else ""))


if __name__ == "__main__":
    sys.exit(run(main))
