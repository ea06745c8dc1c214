"""gmail.eval.zeroshot_classification: CLIP_benchmark's zero-shot classifier on our text towers,
its accuracy and mean per-class recall, and datasets it builds offline from a local root."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError
from gmail.downstream.text_tuning import MiniTextTower
from gmail.eval import zeroshot_classification as zc
from gmail.models.mini_clip import MiniClipConfig, MiniClipTextEncoder


class _ScalarNumpy(torch.Tensor):
    """A tensor whose 1-element `.numpy()` is 0-d, so CLIP_benchmark's `accuracy` (which ends in
    `float(<1-element array>)`, an error under NumPy 2.4) can run here as its authors wrote it."""

    def numpy(self, *args, **kwargs):
        arr = torch.Tensor.numpy(self.as_subclass(torch.Tensor), *args, **kwargs)
        return arr.reshape(()) if arr.size == 1 else arr


def mini_tower(dim=16):
    torch.manual_seed(0)
    return MiniTextTower(MiniClipTextEncoder(MiniClipConfig(image_size=64, embed_dim=dim, text_hidden=32)), torch.tensor(2.0))


def test_clip_benchmarks_accuracy_fails_under_our_numpy_so_we_carry_its_computation():
    from clip_benchmark.metrics.zeroshot_classification import accuracy

    logits, target = torch.eye(3), torch.tensor([0, 1, 1])
    with pytest.raises(TypeError):  # when this stops failing, classify can call CLIP_benchmark's accuracy again
        accuracy(logits, target, topk=(1,))


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_accuracy_equals_clip_benchmarks(seed):
    from clip_benchmark.metrics.zeroshot_classification import accuracy

    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    theirs = accuracy(logits.as_subclass(_ScalarNumpy), target, topk=(1, 3))
    assert [zc.topk_accuracy(logits, target, 1), zc.topk_accuracy(logits, target, 3)] == pytest.approx(theirs)
    assert zc.topk_accuracy(logits, target, 1) == pytest.approx(float((logits.argmax(1) == target).float().mean()))


def test_classify_reports_accuracy_and_mean_per_class_recall_in_percent():
    weights = torch.eye(3)  # (D, C): class c is axis c
    images = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 0.8, 0.2], [1, 0, 0]])
    labels = torch.tensor([0, 0, 1, 2, 2, 2])  # two of class 2 misread
    out = zc.classify(images, weights, labels)
    assert out["acc1"] == pytest.approx(100 * 4 / 6)
    # Per class recall 1, 1, 1/3: unbalanced classes pull accuracy and balanced recall apart.
    assert out["mean_per_class_recall"] == pytest.approx(100 * (1 + 1 + 1 / 3) / 3)
    with pytest.raises(PipelineError, match="labels"):
        zc.classify(images[:5], weights, labels)


def test_class_weights_are_renormalised_means_of_normalised_prompt_embeddings():
    tower = mini_tower()
    classes, templates = ["red", "blue"], ["a {c} shape", "a picture of something {c}"]
    w = zc.class_weights(tower, classes, templates)
    assert w.shape == (16, 2)
    for j, c in enumerate(classes):
        with torch.no_grad():
            e = F.normalize(tower.encode_text(tower.tokenize([t.format(c=c) for t in templates])), dim=-1)
        torch.testing.assert_close(w[:, j], F.normalize(e.mean(0), dim=0))


def test_memo_tokenizer_tokenizes_each_distinct_text_once():
    calls = []

    def tokenize(texts):
        calls.append(list(texts))
        return torch.tensor([[float(len(t))] for t in texts])

    memo = zc.MemoTokenizer(tokenize)
    assert memo(["ab", "c", "ab"]).tolist() == [[2.0], [1.0], [2.0]]
    assert memo(["c", "def"]).tolist() == [[1.0], [3.0]]
    assert calls == [["ab", "c"], ["def"]]
    w1 = zc.class_weights(mini_tower(), ["red"], ["a {c} shape"], zc.MemoTokenizer(mini_tower().tokenize))
    torch.testing.assert_close(w1, zc.class_weights(mini_tower(), ["red"], ["a {c} shape"]))


def test_mini_tasks_cover_every_attribute_value_and_reject_unknown_labels():
    assert zc.mini_classnames("shape") == ["circle", "rectangle", "triangle"]
    assert len(zc.mini_classnames("colour")) == 8 and zc.mini_classnames("size") == ["small", "medium", "large"]
    for attr, templates in zc.MINI_TEMPLATES.items():
        assert len(templates) >= 4 and all("{c}" in t for t in templates), attr
    records = [{"image_id": "a", "attributes": {"size": "large"}}, {"image_id": "b", "attributes": {"size": "small"}}]
    assert zc.attribute_labels(records, "size", zc.mini_classnames("size")).tolist() == [2, 0]
    with pytest.raises(PipelineError, match="'b' has size='huge'"):
        zc.attribute_labels([records[0], {"image_id": "b", "attributes": {"size": "huge"}}], "size", zc.mini_classnames("size"))
    with pytest.raises(PipelineError, match="position"):
        zc.mini_classnames("position")


# --------------------------------------------------------------------------- paper scale: CLIP_benchmark datasets


def _fer2013(root):
    """A tiny FER2013 in CLIP_benchmark's layout (`<root>/test/<class>/*.png`, ImageFolder):
    the one dataset here that CLIP_benchmark builds from local files with no download or checksum."""
    from PIL import Image

    classes = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    for i, c in enumerate(classes):
        (root / "test" / c).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (48, 48), (30 * i, 10 * j, 100)).save(root / "test" / c / f"{j}.png")
    return classes


def test_clip_benchmark_builds_an_image_folder_dataset_offline(tmp_path):
    _fer2013(tmp_path / "fer")
    classes, templates, images, labels = zc.clip_benchmark_dataset("fer2013", str(tmp_path / "fer"), 32)
    assert classes == ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]  # CLIP_benchmark's names
    assert isinstance(templates, list) and all("{c}" in t for t in templates)
    assert images.shape == (14, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i // 2 for i in range(14)]
    assert images[2, 0, 0].tolist() == [30, 0, 100]  # class 1's first image
    w = zc.class_weights(mini_tower(), classes, templates[:3])
    assert w.shape == (16, 7)


def test_clip_benchmark_dataset_that_is_not_there_is_a_one_line_error(tmp_path):
    with pytest.raises(PipelineError, match="root .*nowhere not found") as err:  # before CLIP_benchmark tries to download
        zc.clip_benchmark_dataset("fer2013", str(tmp_path / "nowhere"), 32)
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="cannot build dataset 'fer2013'"):  # no test/ folder inside
        zc.clip_benchmark_dataset("fer2013", str(tmp_path / "empty"), 32)
    with pytest.raises(PipelineError, match="'no-such-set'"):
        zc.clip_benchmark_dataset("no-such-set", str(tmp_path), 32)
