"""gmail.eval.retrieval: CLIP_benchmark's recall@k on precomputed embeddings, checked against a
brute-force reference (ties from repeated captions, images with several captions) and against
CLIP_benchmark's own `evaluate`; Karpathy split files as the paper-scale test sets."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError
from gmail.data.readers import read_karpathy
from gmail.eval import retrieval as rt


def brute_force(images, texts_emb, texts, text_image, image_captions, rule, k):
    """R@k both ways (percent) with plain loops: a query hits when one of its k best candidates,
    best first and ties by position, is positive."""
    img, txt = images.double().numpy(), texts_emb.double().numpy()
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)

    def positive(t, i):
        return text_image[t] == i or (rule == "text" and texts[t] in image_captions[i])

    def hit(scores, is_pos):
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
        return any(is_pos(j) for j in order[:k])

    i2t = [hit([float(img[i] @ txt[t]) for t in range(len(txt))], lambda t, i=i: positive(t, i)) for i in range(len(img))]
    t2i = [hit([float(txt[t] @ img[i]) for i in range(len(img))], lambda i, t=t: positive(t, i)) for t in range(len(txt))]
    return 100 * float(np.mean(i2t)), 100 * float(np.mean(t2i))


def templated_set(seed=0, n_images=12, dim=8):
    """Images with 1-4 captions drawn from a small pool, so texts repeat across and within images:
    repeated texts share one embedding, hence tie exactly in every score."""
    rng = np.random.default_rng(seed)
    pool = [f"caption {j}" for j in range(10)]
    pool_emb = F.normalize(torch.from_numpy(rng.normal(size=(len(pool), dim))).float(), dim=-1)
    records = [{"image_id": str(i), "captions": list(rng.choice(pool, size=rng.integers(1, 5)))} for i in range(n_images)]
    texts, index = rt.retrieval_texts(records)
    text_emb = pool_emb[[pool.index(t) for t in texts]]
    images = F.normalize(torch.from_numpy(rng.normal(size=(n_images, dim))).float(), dim=-1)
    return records, texts, index, text_emb, images


def test_retrieval_texts_flatten_every_caption_with_its_image_index():
    records = [{"captions": ["a", "b"]}, {"captions": ["c"]}, {"captions": ["a", "d", "e"]}]
    assert rt.retrieval_texts(records) == (["a", "b", "c", "a", "d", "e"], [0, 0, 1, 2, 2, 2])


def test_text_positives_add_every_image_whose_references_hold_the_same_text():
    texts, index = ["a", "b", "c", "a", "d"], [0, 0, 1, 2, 2]
    caps = [["a", "b"], ["c"], ["a", "d"]]
    by_index = rt.positive_pairs(texts, index, caps, "index")
    by_text = rt.positive_pairs(texts, index, caps, "text")
    assert by_index.sum() == 5 and by_index[0].tolist() == [True, False, False]
    assert by_text[0].tolist() == [True, False, True] and by_text[3].tolist() == [True, False, True]
    assert (by_text & ~by_index).sum() == 2  # only the repeated "a" gains positives
    with pytest.raises(PipelineError, match="positives rule"):
        rt.positive_pairs(texts, index, caps, "fuzzy")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recalls_match_brute_force_with_ties_and_several_captions_per_image(seed):
    records, texts, index, text_emb, images = templated_set(seed)
    caps = [r["captions"] for r in records]
    assert len(set(texts)) < len(texts)  # repeated captions: exact ties
    got = rt.retrieval_recalls(images, text_emb, rt.positive_pairs(texts, index, caps, "text"), batch_size=5)
    for k in rt.RECALL_KS:
        i2t, t2i = brute_force(images, text_emb, texts, index, caps, "text", k)
        assert got[f"i2t_r{k}"] == pytest.approx(i2t) and got[f"t2i_r{k}"] == pytest.approx(t2i), k


def test_index_positives_match_brute_force_on_distinct_texts():
    rng = np.random.default_rng(3)
    records = [{"captions": [f"img{i} cap{j}" for j in range(rng.integers(1, 4))]} for i in range(15)]
    texts, index = rt.retrieval_texts(records)
    caps = [r["captions"] for r in records]
    text_emb, images = torch.randn(len(texts), 6), torch.randn(15, 6)
    got = rt.retrieval_recalls(images, text_emb, rt.positive_pairs(texts, index, caps, "index"), ks=(1, 3), batch_size=4)
    for k in (1, 3):
        assert (got[f"i2t_r{k}"], got[f"t2i_r{k}"]) == pytest.approx(brute_force(images, text_emb, texts, index, caps, "index", k))


def test_index_positives_reproduce_clip_benchmarks_evaluate():
    """Our recalls on precomputed embeddings equal CLIP_benchmark's `zeroshot_retrieval.evaluate`
    run through a model whose towers return those embeddings."""
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate

    rng = np.random.default_rng(4)
    records = [{"captions": [f"image {i} caption {j}" for j in range(rng.integers(1, 4))]} for i in range(20)]
    texts, index = rt.retrieval_texts(records)
    text_emb = {t: torch.from_numpy(rng.normal(size=8)).float() for t in texts}
    images = torch.from_numpy(rng.normal(size=(20, 8))).float()

    class Towers:
        def encode_image(self, x):
            return x

        def encode_text(self, x):
            return x

    loader = [(images[i:i + 6], [records[j]["captions"] for j in range(i, min(i + 6, 20))]) for i in range(0, 20, 6)]
    theirs = evaluate(Towers(), loader, lambda ts: torch.stack([text_emb[t] for t in ts]), "cpu", amp=False,
                      recall_k_list=[1, 5, 10])
    ours = rt.retrieval_recalls(images, torch.stack([text_emb[t] for t in texts]),
                                rt.positive_pairs(texts, index, [r["captions"] for r in records], "index"))
    for k in (1, 5, 10):
        assert ours[f"t2i_r{k}"] == pytest.approx(100 * theirs[f"image_retrieval_recall@{k}"])
        assert ours[f"i2t_r{k}"] == pytest.approx(100 * theirs[f"text_retrieval_recall@{k}"])


def test_k_beyond_the_candidates_retrieves_them_all_and_perfect_embeddings_score_100():
    images = torch.eye(3)
    texts, index = ["a", "b", "c"], [0, 1, 2]
    pos = rt.positive_pairs(texts, index, [["a"], ["b"], ["c"]])
    assert set(rt.retrieval_recalls(images, torch.eye(3), pos).values()) == {100.0}
    shuffled = rt.retrieval_recalls(images, torch.eye(3)[[1, 2, 0]], pos)
    assert shuffled["i2t_r1"] == 0.0 and shuffled["t2i_r1"] == 0.0 and shuffled["i2t_r5"] == 100.0


def test_mismatched_embeddings_are_errors():
    pos = rt.positive_pairs(["a", "b"], [0, 1], [["a"], ["b"]])
    with pytest.raises(PipelineError, match="embed every test image"):
        rt.retrieval_recalls(torch.randn(3, 4), torch.randn(2, 4), pos)
    with pytest.raises(PipelineError, match="dims"):
        rt.retrieval_recalls(torch.randn(2, 4), torch.randn(2, 5), pos)


# --------------------------------------------------------------------------- paper-scale test sets


def _karpathy(path, images, with_filepath):
    rows = []
    for i, (split, n_caps) in enumerate(images):
        row = {"filename": f"im{i}.jpg", "imgid": i, "split": split,
               "sentences": [{"raw": f" image {i} sentence {j} ", "tokens": ["image", str(i)]} for j in range(n_caps)]}
        if with_filepath:
            row.update(filepath="val2014", cocoid=1000 + i)
        rows.append(row)
    path.write_text(json.dumps({"images": rows, "dataset": "x"}))
    return path


def test_karpathy_test_splits_give_every_sentence_as_a_retrieval_text(tmp_path):
    """COCO's Karpathy test images have 5 (a few 6-7) sentences; Flickr30k's have 5 and no
    `filepath`. `read_karpathy(split="test")` keeps all of them, stripped, with paths."""
    coco = _karpathy(tmp_path / "dataset_coco.json", [("test", 5), ("train", 5), ("test", 6), ("restval", 5), ("val", 5)], True)
    flickr = _karpathy(tmp_path / "dataset_flickr30k.json", [("test", 5), ("test", 5), ("train", 5)], False)
    c = read_karpathy(coco, tmp_path / "coco", split="test")
    assert [r["image_id"] for r in c] == ["1000", "1002"]
    assert c[1]["path"] == str(tmp_path / "coco/val2014/im2.jpg") and c[1]["captions"][0] == "image 2 sentence 0"
    texts, index = rt.retrieval_texts(c)
    assert len(texts) == 11 and index == [0] * 5 + [1] * 6
    f = read_karpathy(flickr, tmp_path / "flickr", split="test")
    assert [r["image_id"] for r in f] == ["0", "1"] and f[0]["path"] == str(tmp_path / "flickr/im0.jpg")
    assert rt.positive_pairs(*rt.retrieval_texts(f), [r["captions"] for r in f], "text").sum() == 10


def test_embed_record_images_embeds_at_the_towers_size(tmp_path):
    from PIL import Image

    class Tower(torch.nn.Module):
        load_size = 16

        def forward(self, x):
            assert x.shape[-2:] == (16, 16)
            return x.mean(dim=(2, 3))

    records = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{i}.png")
        records.append({"image_id": str(i), "path": str(tmp_path / f"{i}.png"), "captions": ["x"]})
    z = rt.embed_record_images(records, Tower())
    torch.testing.assert_close(z, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
