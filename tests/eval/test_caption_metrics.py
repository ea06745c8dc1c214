"""gmail.eval.caption_metrics: pycocoevalcap metrics + WMD on hand-made captions, SPICE skipping."""

from __future__ import annotations

import re

import pytest

from gmail.core.errors import PipelineError
from gmail.eval import caption_metrics
from gmail.eval.caption_metrics import METRICS, score_caption_sets, spice_status, wmd_similarity

REFERENCES = {
    "img1": ["A brown dog runs across the green grass.",
             "a dog is running on a grassy field",
             "the brown dog sprints over the lawn"],
    "img2": ["two children play with a red ball in the park",
             "kids are playing ball outside on a sunny day",
             "a boy and a girl kick a red ball"],
    "img3": ["a man rides a bicycle down a busy city street",
             "a cyclist pedals through heavy traffic",
             "a person on a bike in the middle of town"],
    "img4": ["a plate of pasta with tomato sauce on a wooden table",
             "spaghetti and red sauce served on a dish",
             "a bowl of noodles sits on the kitchen table"],
}
SAME = {i: refs[0] for i, refs in REFERENCES.items()}
# No word in common with any reference of the same image (checked below).
DISJOINT = {
    "img1": "purple elephants juggle metallic spoons",
    "img2": "an astronaut repairs satellites while orbiting",
    "img3": "ancient scrolls describe forgotten kingdoms",
    "img4": "violins echo inside empty cathedrals",
}
# SAME with its whitespace broken by "\r" and "\u2028", which PTBTokenizer treats as line
# breaks: unless flattened first, every later caption would land on the wrong image.
SAME_WRAPPED = {i: c.replace(" ", "\r", 1).replace(" ", "\u2028", 1) for i, c in SAME.items()}
EMPTY = {i: "" for i in REFERENCES}


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def test_disjoint_candidates_really_share_no_word():
    for i, refs in REFERENCES.items():
        assert not _words(DISJOINT[i]) & _words(" ".join(refs))


@pytest.fixture(scope="module")
def no_spice_jars(tmp_path_factory):
    """Point SPICE's lib dir at an empty folder, so the skip path runs whatever is installed."""
    empty = tmp_path_factory.mktemp("spice_lib")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caption_metrics, "_spice_lib_dir", lambda: empty)
        yield empty


@pytest.fixture(scope="module")
def shared_meteor():
    """One METEOR JVM for the whole module: it spends 10-20 s loading its paraphrase table, and
    its stdio protocol is stateless (each EVAL line carries all its own statistics), so reusing
    it across score_caption_sets calls changes no score but saves ~40 s of test time."""
    meteor = caption_metrics.Meteor()
    close = caption_metrics._close_meteor
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caption_metrics, "Meteor", lambda: meteor)
        mp.setattr(caption_metrics, "_close_meteor", lambda m: None)
        yield meteor
    close(meteor)
    assert meteor.meteor_p.poll() is not None  # the JVM is gone


@pytest.fixture(scope="module")
def together(no_spice_jars, shared_meteor):
    return score_caption_sets(
        {"same": SAME, "same_wrapped": SAME_WRAPPED, "disjoint": DISJOINT, "empty": EMPTY}, REFERENCES)


def test_returns_every_metric_as_plain_floats(together):
    assert set(together) == {"same", "same_wrapped", "disjoint", "empty"}
    for row in together.values():
        assert set(METRICS) <= set(row)
        for key in METRICS:
            if key != "spice":
                assert type(row[key]) is float


def test_identical_candidates_score_bleu_100(together):
    for n in (1, 2, 3, 4):
        assert together["same"][f"bleu{n}"] == pytest.approx(100.0)


def test_disjoint_candidates_score_bleu_rouge_cider_0(together):
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert together["disjoint"][key] == pytest.approx(0.0, abs=1e-9)


def test_identical_beats_disjoint_on_every_metric(together):
    same, disjoint = together["same"], together["disjoint"]
    for key in ("meteor", "rouge_l", "cider", "wmd"):
        assert same[key] > disjoint[key] + 10, key
    assert same["wmd"] == pytest.approx(100.0, abs=1e-4)
    # Unit vectors put the WMD similarity floor at exp(-2): unrelated captions are not 0.
    assert 13.5 < disjoint["wmd"] < 60


def test_empty_candidates_are_scored_as_empty(together):
    for key in METRICS:
        if key != "spice":
            assert together["empty"][key] == pytest.approx(0.0, abs=1e-9), key


def test_line_breaks_inside_captions_do_not_shift_images(together):
    for key in METRICS:
        assert together["same_wrapped"][key] == together["same"][key], key


def test_spice_is_none_with_a_reason_when_jars_are_absent(together, no_spice_jars):
    available, reason = spice_status()
    # The reason lands in metrics files, so it names the package folder, not this machine's path.
    assert not available and "pycocoevalcap/spice/lib" in reason and str(no_spice_jars) not in reason
    for row in together.values():
        assert row["spice"] is None  # never 0: a skipped metric must not look like a bad one
        assert isinstance(row["spice_skipped"], str) and row["spice_skipped"].strip()


def test_spice_status_true_once_both_corenlp_jars_are_there(tmp_path, monkeypatch):
    monkeypatch.setattr(caption_metrics, "_spice_lib_dir", lambda: tmp_path)
    (tmp_path / "stanford-corenlp-3.6.0.jar").touch()
    assert spice_status()[0] is False  # models jar still missing
    (tmp_path / "stanford-corenlp-3.6.0-models.jar").touch()
    assert spice_status()[0] is True


def test_sets_scored_together_match_each_scored_alone(together, no_spice_jars, shared_meteor):
    for name, preds in (("same", SAME), ("disjoint", DISJOINT)):
        alone = score_caption_sets({"solo": preds}, REFERENCES)["solo"]
        assert alone == together[name], name


def test_wmd_false_reports_none_and_keeps_the_other_metrics(together, no_spice_jars, shared_meteor):
    row = score_caption_sets({"same": SAME}, REFERENCES, wmd=False)["same"]
    assert row["wmd"] is None and row["wmd_skipped"]
    assert row["bleu4"] == together["same"]["bleu4"] and row["cider"] == together["same"]["cider"]


def test_spice_runs_all_sets_in_one_call_and_averages_each(monkeypatch):
    calls = []

    class FakeSpice:
        """Per image, F = 1 when the candidate equals the first reference, else 0."""

        def compute_score(self, gts, res):
            calls.append(len(gts))
            keys = sorted(gts)
            per_image = [{"All": {"f": float(res[k][0] == gts[k][0])}} for k in keys]
            return 0.0, per_image

    monkeypatch.setattr(caption_metrics, "Spice", FakeSpice)
    refs = {"a": ["x y"], "b": ["z w"]}
    # 12 sets, so SPICE's sorted keys ("1:0", "10:0", "11:0", "2:0", ...) differ from set order.
    right, half, wrong = {"a": ["x y"], "b": ["z w"]}, {"a": ["x y"], "b": ["q"]}, {"a": ["q"], "b": ["q"]}
    cands = {f"seed{k}": (right, half, wrong)[k // 4] for k in range(12)}
    expected = {f"seed{k}": (1.0, 0.5, 0.0)[k // 4] for k in range(12)}
    assert caption_metrics._spice_by_set(refs, cands) == expected
    assert calls == [24]  # one SPICE run for 12 sets x 2 images


@pytest.mark.parametrize("preds, match", [
    ({"img1": "x", "img2": "x", "img3": "x"}, r"'seed1'.*'img4'"),
    ({**DISJOINT, "img9": "x"}, r"'seed1'.*'img9'"),
])
def test_set_must_cover_exactly_the_reference_ids(preds, match):
    with pytest.raises(PipelineError, match=match):
        score_caption_sets({"seed0": DISJOINT, "seed1": preds}, REFERENCES)


@pytest.mark.parametrize("refs", [[], ["a dog runs on grass", "  "]])
def test_empty_references_raise(refs):
    references = {**REFERENCES, "img4": refs}
    with pytest.raises(PipelineError, match="'img4'"):
        score_caption_sets({"seed0": DISJOINT}, references)


def test_wmd_ignores_word_order_and_stopwords():
    assert wmd_similarity("dog runs grass", ["grass runs dog"]) == pytest.approx(1.0, abs=1e-6)
    assert wmd_similarity("the dog runs on the grass", ["a dog runs in grass"]) == pytest.approx(1.0, abs=1e-6)


def test_wmd_takes_the_best_reference():
    unrelated = wmd_similarity("dog runs grass", ["violins echo cathedrals"])
    assert 0.135 < unrelated < 0.6
    assert wmd_similarity("dog runs grass", ["violins echo cathedrals", "dog runs grass"]) == pytest.approx(1.0, abs=1e-6)


def test_wmd_without_content_words_is_0():
    assert wmd_similarity("it is on the", ["dog runs grass"]) == 0.0
    assert wmd_similarity("dog runs grass", ["it is on the"]) == 0.0
