"""A cache you can trust: every stage's deps list exactly the project files it imports."""

from __future__ import annotations

import shutil

import yaml

from tools.import_closure import ROOT, check_deps, closure


def test_every_stage_lists_exactly_its_import_closure():
    problems = check_deps()
    assert not problems, "\n".join(problems + ["print the right lists with: python -m tools.import_closure"])


def _copy_repo(tmp_path):
    for rel in ("gmail", "stages", "dvc.yaml", "pretrain/dvc.yaml", "llm/dvc.yaml"):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return tmp_path


def test_a_removed_dep_is_reported_with_stage_and_module(tmp_path):
    root = _copy_repo(tmp_path)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["eval_caption"]["deps"].remove("gmail/models/text.py")  # the WMD word vectors
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    problems = check_deps(root)
    assert len(problems) == 1
    assert problems[0].startswith("dvc.yaml:eval_caption imports gmail/models/text.py (via gmail/eval/caption_metrics.py)")


def test_a_new_import_inside_a_function_is_caught(tmp_path):
    root = _copy_repo(tmp_path)
    path = root / "gmail/generation/mini_sampling.py"
    path.write_text(path.read_text() + "\n\ndef _late():\n    from gmail.viz import grids  # noqa: F401\n")
    problems = check_deps(root)
    # generate (which imports mini_sampling) now needs the module and its package; fidelity already lists both.
    assert sorted(p.split(" (via")[0] for p in problems) == ["dvc.yaml:generate imports gmail/viz/__init__.py",
                                                             "dvc.yaml:generate imports gmail/viz/grids.py"], problems


def test_an_unused_dep_is_reported(tmp_path):
    root = _copy_repo(tmp_path)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["generate"]["deps"].append("gmail/eval/caption_metrics.py")
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert check_deps(root) == ["dvc.yaml:generate lists gmail/eval/caption_metrics.py in dvc.yaml but never imports it: "
                                "drop it, or a change there reruns the stage for nothing"]


def test_metrics_code_is_not_in_generate_closure():
    assert "gmail/eval/caption_metrics.py" not in closure("stages.generate")
    assert "gmail/models/text.py" in closure("stages.eval_caption")
