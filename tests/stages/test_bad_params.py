"""Malformed params, run the way DVC runs a stage (a subprocess): exit status 2, one `error:` line
naming the key, and no file in the workspace changed. Also a params set that passes validation but
diverges: the stage stops at the non-finite loss and saves nothing."""

from __future__ import annotations

import shutil

import pytest
from helpers import MAIN_PARAMS, PRETRAIN_PARAMS, assert_one_line_error, changed_files, params_dict, run_stage, snapshot, write_params

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace holding outputs of earlier runs (placeholders): a failing stage must leave them be.
    Params errors come before any input is read, so no real data is needed."""
    root = tmp_path_factory.mktemp("bad_params")
    for rel in ("data/captions/B.jsonl", "data/generated/manifest.jsonl", "data/align/generated/adapter/adapter_config.json",
                "data/captioner/gmail/seed0/clipcap.json", "metrics/generate.json", "metrics/align/generated.json",
                "pretrain/models/sd2/generator.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"earlier output {rel}\n")
    return root


def _misspelt(base, wrong: str, right: str) -> dict:
    params = params_dict(base)
    params[wrong] = params.pop(right)
    return params


ROWS = [
    # (stage and its arguments, params, fragments of the error line)
    (("stages.generate",), params_dict(gen={"steps": 1200}), ["params key gen.steps=1200 must be at most 1000"]),
    (("stages.align", "--source", "generated"), params_dict(align={"lr": NAN}),
     ["params key align.lr must be a finite number, got nan"]),
    (("stages.generate",), params_dict(gen={"guidance": INF}), ["params key gen.guidance must be a finite number, got inf"]),
    (("stages.caption", "--variant", "gmail"), params_dict(caption={"lr": 1e6}),
     ["params key caption.lr=1000000.0 must be in (0, 1]"]),
    (("stages.align", "--source", "generated"), _misspelt(MAIN_PARAMS, "aling", "align"),
     ["unknown params section 'aling' in params.yaml: did you mean 'align'?"]),
    (("stages.pretrain_generator", "--family", "sd2"), _misspelt(PRETRAIN_PARAMS, "genrator", "generator"),
     ["unknown params section 'genrator' in params.yaml: did you mean 'generator'?"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("stage,params,fragments", ROWS,
                         ids=["gen.steps-1200", "align.lr-nan", "gen.guidance-inf", "caption.lr-1e6", "aling", "genrator"])
def test_bad_params_fail_in_one_line_and_change_nothing(workspace, stage, params, fragments):
    write_params(workspace / "params.yaml", params, replace=tuple(params))
    before = snapshot(workspace)
    proc = run_stage(workspace, *stage)
    assert_one_line_error(proc, *fragments)
    assert changed_files(before, snapshot(workspace)) == []


@pytest.mark.slow
def test_alignment_that_diverges_stops_with_an_error_and_saves_nothing(embedded_workspace, tmp_path):
    # Valid params (lr <= 1, weight_decay >= 0) that still blow up: AdamW multiplies every adapter
    # weight by 1 - lr * weight_decay = -99 per step, so f_g's embeddings overflow within ~20 steps.
    ws = tmp_path / "ws"
    shutil.copytree(embedded_workspace, ws, symlinks=True)
    write_params(ws / "params.yaml", ws / "params.yaml", align={"lr": 1.0, "weight_decay": 100.0, "steps": 60})
    before = snapshot(ws)
    proc = run_stage(ws, "stages.align", "--source", "generated")
    line = assert_one_line_error(proc, "alignment loss became", "lower align.lr (now 1) or check the inputs")
    assert "nan at step" in line or "inf at step" in line
    assert changed_files(before, snapshot(ws)) == []
