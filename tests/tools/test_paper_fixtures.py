"""tools.paper_fixtures: every fixture loads through the repository's own paper-scale readers and
loaders (the very calls paper scale makes), and a second build is byte-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gmail.core.errors import PipelineError
from tools import paper_fixtures as pf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    return pf.build_fixtures(tmp_path_factory.mktemp("paper_fixtures") / "fixtures", seed=0)


def _files_exist(records):
    return all(Path(r["path"]).is_file() for r in records)


def test_karpathy_files_read_by_the_karpathy_reader(fx):
    from gmail.core.io import load_image
    from gmail.data.readers import read_source

    coco = fx / "coco"
    train = read_source("karpathy", json_path=str(coco / "dataset_coco.json"), image_root=str(coco), split=["train", "restval"])
    test = read_source("karpathy", json_path=str(coco / "dataset_coco.json"), image_root=str(coco), split="test")
    assert (len(train), len(test)) == (40, 12) and _files_exist(train + test)
    assert all(len(r["captions"]) == 5 for r in train + test)
    assert {Path(r["path"]).parent.name for r in train} == {"train2014", "val2014"}  # restval lives in val2014
    assert {Path(r["path"]).parent.name for r in test} == {"val2014"}
    rec = test[0]
    assert rec["image_id"].isdigit() and Path(rec["path"]).name == f"COCO_val2014_{int(rec['image_id']):012d}.jpg"
    assert load_image(rec["path"]).size == (64, 48)
    entry = json.loads((coco / "dataset_coco.json").read_text())["images"][0]
    assert entry["sentences"][0]["tokens"] == pf.tokens(entry["sentences"][0]["raw"]) and len(entry["sentids"]) == 5

    flickr = fx / "flickr30k"
    test = read_source("karpathy", json_path=str(flickr / "dataset_flickr30k.json"), image_root=str(flickr / "flickr30k-images"),
                       split="test")
    assert len(test) == 12 and _files_exist(test) and all(len(r["captions"]) == 5 for r in test)


def test_cc3m_shard_read_by_the_webdataset_and_parquet_readers(fx, tmp_path, monkeypatch):
    from gmail.data.readers import read_source

    monkeypatch.chdir(tmp_path)  # stage outputs (the extracted images) must lie inside the working directory
    records = read_source("webdataset", tar_paths=str(fx / "cc3m"), out_image_dir="cc3m_images")
    assert len(records) == 23 and _files_exist(records)  # one of the 24 urls failed to download
    assert all(len(r["image_id"]) == 9 and r["captions"][0] == r["captions"][0].lower() for r in records)
    # img2dataset's parquet lists the failed url too; its status column drops it.
    rows = read_source("parquet", parquet_path=str(fx / "cc3m" / "00000.parquet"), image_root=str(tmp_path / "cc3m_images"))
    assert [(r["image_id"], r["captions"]) for r in rows] == [(r["image_id"], r["captions"]) for r in records]


def test_long_caption_sets_read_by_their_readers(fx):
    from gmail.data.paper_long_captions import read_long_source

    urban = read_long_source("urban1k", root=str(fx / "urban1k"))
    assert [r["image_id"] for r in urban] == [str(i) for i in range(1, 13)] and _files_exist(urban)
    share = read_long_source("sharegpt4v", json_path=str(fx / "sharegpt4v" / "sharegpt4v_captions.json"),
                             image_root=str(fx / "sharegpt4v"), limit=1000)
    assert len(share) == 12 and _files_exist(share)
    assert all(len(r["captions"]) == 1 and len(r["captions"][0].split()) > 40 and "\n" not in r["captions"][0] for r in urban + share)


def test_multiple_choice_benchmarks_read_by_their_readers(fx):
    from gmail.data.mc_benchmarks import load_benchmark_images, read_mmmu, read_scienceqa

    sqa = read_scienceqa(str(fx / "scienceqa"), split="test")
    assert len(sqa) == 6 and all(0 <= r["answer"] < len(r["choices"]) for r in sqa)  # the 2 text-only questions are skipped
    mmmu = read_mmmu(str(fx / "mmmu"), split="validation")
    assert [r["id"] for r in mmmu][:2] == ["validation_Art_1", "validation_Art_2"] and len(mmmu) == 8
    assert {r["question_type"] for r in mmmu} == {"open", "multiple-choice"} and {r["subject"] for r in mmmu} == {"Art", "Math"}
    images = load_benchmark_images(sqa + mmmu, 32)
    assert images.shape == (14, 32, 32, 3) and all(images[i].any() for i in range(14))


def test_dtd_built_by_clip_benchmark_offline(fx):
    from gmail.eval.zeroshot_classification import clip_benchmark_dataset

    # eval_zeroshot.root is "<fixtures>/clip_benchmark/{dataset}".
    classes, templates, images, labels = clip_benchmark_dataset("dtd", str(fx / "clip_benchmark" / "dtd"), 32)
    assert classes == list(pf.DTD_CLASSES) and any("texture" in t for t in templates)
    assert images.shape == (15, 32, 32, 3) and labels.tolist() == [c for c in range(5) for _ in range(3)]


def test_open_clip_local_dir_loads_as_the_paper_image_and_text_towers(fx):
    from safetensors.torch import load_file

    from gmail.downstream.text_tuning import load_text_tower
    from gmail.models.image_tower import encode_images, load_image_tower

    name = f"local-dir:{fx / 'models' / 'open_clip'}"
    tower = load_image_tower("paper", "unused", name=name, pretrained="")
    saved = load_file(str(fx / "models" / "open_clip" / "open_clip_model.safetensors"))
    assert torch.equal(tower.visual.conv1.weight, saved["visual.conv1.weight"]) and tower.load_size == 32
    z = encode_images(tower, np.zeros((2, 48, 64, 3), dtype=np.uint8))
    assert z.shape == (2, 16)
    text = load_text_tower("paper", "unused", name=name, pretrained="")
    tokens = text.tokenize(["a red circle on a white background"])
    assert tokens.shape == (1, 77) and text.encode_text(tokens).shape == (1, 16)


@pytest.mark.parametrize("family", ["sd2", "flux"])
def test_diffusion_pipelines_load_with_load_paper_pipeline_and_sample(fx, family):
    from diffusers import DDIMScheduler, FluxPipeline, StableDiffusionPipeline

    from gmail.generation.paper_pipelines import generate_paper_images, load_paper_pipeline

    pipe = load_paper_pipeline(family, str(fx / "models" / family), dtype="float32", device="cpu")
    assert isinstance(pipe, FluxPipeline if family == "flux" else StableDiffusionPipeline)
    if family == "sd2":
        assert isinstance(pipe.scheduler, DDIMScheduler)  # switched from SD2-base's PNDM
    # CLIP's real BPE: the same ids as open_clip's tokenizer (which pads with 0); SD2's pads with "!".
    import open_clip

    text = "A red circle on a white background."
    assert pipe.tokenizer(text).input_ids == [i for i in open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist() if i]
    assert pipe.tokenizer.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
    ((i, image),) = generate_paper_images(pipe, ["a red circle on a white background"], [0], steps=1, guidance=2.0,
                                          height=pf.PIPELINE_SIZE, width=pf.PIPELINE_SIZE, batch_size=1, output="uint8")
    assert i == 0 and image.shape == (pf.PIPELINE_SIZE, pf.PIPELINE_SIZE, 3)


def test_gpt2_loads_as_the_clipcap_decoder(fx, tmp_path):
    from gmail.downstream.clipcap import ClipCapConfig, build_clipcap, gpt2_tokenizer

    tokenizer = gpt2_tokenizer(tmp_path)
    config = ClipCapConfig(prefix_length=2, prefix_hidden=8, decoder=str(fx / "models" / "gpt2"), n_layer=1, n_embd=8, n_head=1,
                           max_length=8, compact_vocab=False, dropout=0.0)
    model = build_clipcap(config, 16, tokenizer, [])
    assert model.decoder.config.vocab_size == len(tokenizer) == 50257 and model.vocab is None
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(fx / "models" / "gpt2"))
    assert saved("a red circle").input_ids == tokenizer("a red circle").input_ids


def test_llm_loads_with_load_llm(fx):
    from gmail.models.llm import load_llm

    model, tokenizer = load_llm(str(fx / "models" / "llm"))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 32
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None


def test_hub_cache_snapshot_loads_offline_by_id_and_revision(fx):
    script = (
        "import sys, torch\n"
        "from diffusers import DiffusionPipeline\n"
        "from gmail.generation.paper_pipelines import load_paper_pipeline\n"
        f"a = DiffusionPipeline.from_pretrained({pf.HUB_SD2_ID!r}, revision={pf.HUB_SD2_REVISION!r})\n"
        f"b = load_paper_pipeline('sd2', {pf.HUB_SD2_ID!r}, dtype='float32', device='cpu')\n"  # refs/main
        f"c = DiffusionPipeline.from_pretrained({str(fx / 'models' / 'sd2')!r})\n"
        "w = lambda p: p.unet.conv_in.weight\n"
        "print(type(a).__name__, torch.equal(w(a), w(c)) and torch.equal(w(b), w(c)))\n"
    )
    env = {**os.environ, "HF_HOME": str(fx / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["StableDiffusionPipeline", "True"]


def test_manifest_lists_every_file_and_a_second_build_is_byte_identical(fx, tmp_path):
    # Runs after the loader tests (file order): none of them may have written into the fixtures.
    recorded = json.loads((fx / pf.MANIFEST).read_text())
    assert recorded["files"] == pf.manifest(fx) and len(recorded["files"]) > 150
    # The command line, as CI runs it, into another folder.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tools.paper_fixtures", str(tmp_path / "again"), "--seed", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "again" / pf.MANIFEST).read_bytes() == (fx / pf.MANIFEST).read_bytes()


def test_a_folder_that_is_not_a_fixture_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not a fixture folder"):
        pf.build_fixtures(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
