"""Which project files each DVC stage imports, directly or not: what its `deps` must list.

    python -m tools.import_closure             # every stage of dvc.yaml, pretrain/dvc.yaml and llm/dvc.yaml, as YAML dep lists
    python -m tools.import_closure stages.align

A stage runs `python -m stages.<name>`; Python then executes that module, every project module
it imports (at the top or inside a function: the source is read with `ast`, not run) and the
`__init__.py` of every package on the way. Any of those files can change the stage's output,
so `dvc.yaml` lists exactly them; `tests/test_dvc_deps.py` fails when it does not.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gmail", "stages")
PIPELINES = ("dvc.yaml", "pretrain/dvc.yaml", "llm/dvc.yaml")
# Every stage command is `python -m stages.<name> --params <file>`, plus `--family ${item}` in pretrain/dvc.yaml
# whose items are written in that file: no params value reaches a command line (a foreach stage reads its key
# from DVC_STAGE, gmail/core/cli.py; generate and align read `launcher` themselves, gmail/core/launch.py).
_CMD = re.compile(r"python -m (stages\.\w+) --params [\w/.]+\.yaml(?: --family \$\{item\})?")


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file that defines module `name` (`pkg/mod.py` or `pkg/__init__.py`), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Project module names that `path` (module `module`) imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            # `from pkg import mod` imports the submodule when one exists by that name.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if module_path(n) is not None}


def closure(entry: str, root: Path = ROOT) -> dict[str, str]:
    """{repo-relative file: the module that first imports it} for `entry` and everything it pulls in."""
    found: dict[str, str] = {}
    todo = [(entry, "(entry point)")]
    while todo:
        module, importer = todo.pop()
        parts = module.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        chain = [".".join(parts[:i]) for i in range(1, len(parts))] + [module]
        for name in chain:
            path = module_path(name, root)
            if path is None:
                continue
            rel = path.relative_to(root).as_posix()
            if rel in found:
                continue
            found[rel] = importer
            todo.extend((m, rel) for m in imported_modules(path, name))
    return found


def pipeline_stages(root: Path = ROOT) -> dict[str, tuple[str, str, list]]:
    """{"<dvc.yaml>:<stage>": (pipeline file, entry module, declared deps)} for every stage that runs a module."""
    out = {}
    for pipeline in PIPELINES:
        spec = yaml.safe_load((root / pipeline).read_text())
        for name, stage in spec["stages"].items():
            body = stage.get("do", stage)
            match = _CMD.fullmatch(body["cmd"])
            if not match:
                raise ValueError(f"{pipeline}:{name} runs {body['cmd']!r}, not `python -m stages.<name> --params <file>`: a command holds no params value (see _CMD)")
            out[f"{pipeline}:{name}"] = (pipeline, match.group(1), list(body.get("deps", [])))
    return out


def check_deps(root: Path = ROOT) -> list[str]:
    """One line per disagreement between a stage's declared `.py` deps and its import closure."""
    problems = []
    for stage, (pipeline, entry, declared) in pipeline_stages(root).items():
        declared_py = {d for d in declared if isinstance(d, str) and d.endswith(".py")}
        needed = closure(entry, root)
        for rel in sorted(set(needed) - declared_py):
            problems.append(f"{stage} imports {rel} (via {needed[rel]}) but its deps in {pipeline} do not list it")
        for rel in sorted(declared_py - set(needed)):
            problems.append(f"{stage} lists {rel} in {pipeline} but never imports it: drop it, or a change there reruns the stage for nothing")
    return problems


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    entries = args or sorted({entry for _, entry, _ in pipeline_stages().values()})
    for entry in entries:
        print(f"# {entry}")
        for rel in sorted(closure(entry)):
            print(f"      - {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
