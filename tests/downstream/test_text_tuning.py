"""gmail.downstream.text_tuning: CLIP's text tower fine-tuned against fixed image embeddings,
at mini scale (MLP over MiniLM) and paper scale (a tiny open_clip model loaded through the
same `create_model(name, pretrained=...)` call as ViT-B-32)."""

import json

import pytest
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError
from gmail.downstream import text_tuning as tt
from gmail.models.mini_clip import MiniClipConfig, MiniClipTextEncoder

TINY_VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
CAPTIONS = [["a red circle", "a round red thing"], ["a blue square"], ["a green triangle", "three green corners", "a green shape"],
            ["a yellow circle"], ["a black square", "a dark square"], ["a teal triangle"]]


def mini_tower(seed=0, dim=16):
    torch.manual_seed(seed)
    cfg = MiniClipConfig(image_size=64, embed_dim=dim, text_hidden=32)
    return tt.MiniTextTower(MiniClipTextEncoder(cfg), torch.tensor(2.0))


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("openclip_text")
    (root / "gmail-tiny-text.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(root / "gmail-tiny-text.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("gmail-tiny-text", pretrained=None).state_dict(), root / "tiny.pt")
    return str(root / "tiny.pt")


def image_side(n=6, dim=16, seed=1):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --------------------------------------------------------------------------- training


def test_tokenize_captions_lays_out_variable_caption_counts():
    tokens = tt.tokenize_captions(mini_tower(), CAPTIONS)
    assert tokens.counts.tolist() == [2, 1, 3, 1, 2, 1]
    assert tokens.starts.tolist() == [0, 2, 3, 6, 7, 9]
    assert tokens.tokens.shape == (10, 384)
    # Row starts[i] + j is image i's j-th caption: identical texts give identical MiniLM rows.
    again = mini_tower().tokenize(["a green shape"])
    torch.testing.assert_close(tokens.tokens[3 + 2], again[0])
    with pytest.raises(PipelineError, match="at least one caption"):
        tt.tokenize_captions(mini_tower(), [["x"], []])


def test_tuning_moves_only_the_text_side_lowers_the_loss_and_is_seeded():
    base = mini_tower()
    tokens = tt.tokenize_captions(base, CAPTIONS)
    z = image_side()
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        tower = mini_tower()
        losses = tt.tune_text_tower(tower, z, tokens, steps=60, batch_size=4, lr=3e-3, weight_decay=0.0, seed=seed)
        runs[name] = (tower, losses)
    tower, losses = runs["a"]
    assert len(losses) == 60 and sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert not torch.equal(tower.text.net[0].weight, base.text.net[0].weight)
    assert tower.logit_scale.item() != pytest.approx(base.logit_scale.item())  # the temperature is learnt too
    assert runs["a"][1] == runs["b"][1]  # same seed, same batches, same losses
    assert runs["a"][1] != runs["c"][1]
    # Matching text sits closer to its image after tuning than before.
    before = (tt.encode_tokens(base, tokens.tokens[tokens.starts]) * z).sum(1).mean()
    after = (tt.encode_tokens(tower, tokens.tokens[tokens.starts]) * z).sum(1).mean()
    assert after > before


def test_tuning_rejects_unpaired_or_mismatched_inputs():
    tower = mini_tower()
    tokens = tt.tokenize_captions(tower, CAPTIONS)
    with pytest.raises(PipelineError, match="pair one to one"):
        tt.tune_text_tower(tower, image_side(n=5), tokens, 1, 4, 1e-3, 0.0, 0)
    with pytest.raises(PipelineError, match="dims"):
        tt.tune_text_tower(tower, image_side(dim=8), tokens, 1, 4, 1e-3, 0.0, 0)


# --------------------------------------------------------------------------- saving and loading


def test_tuned_tower_round_trips_and_missing_files_are_errors(tmp_path):
    base = mini_tower()
    tokens = tt.tokenize_captions(base, CAPTIONS)
    tuned = mini_tower()
    tt.tune_text_tower(tuned, image_side(), tokens, 5, 4, 1e-2, 0.0, 0)
    tt.save_text_tower(tuned, tmp_path / "gmail/seed3", {"row": "gmail", "seed": 3})
    info = json.loads((tmp_path / "gmail/seed3/text.json").read_text())
    assert info == {"row": "gmail", "seed": 3, "scale": "mini"}
    loaded = tt.load_tuned_tower(base, tmp_path / "gmail/seed3")
    torch.testing.assert_close(tt.encode_tokens(loaded, tokens.tokens), tt.encode_tokens(tuned, tokens.tokens))
    torch.testing.assert_close(loaded.logit_scale, tuned.logit_scale)
    assert not torch.equal(loaded.text.net[0].weight, base.text.net[0].weight)  # base itself untouched

    assert tt.tuned_tower_dirs(tmp_path, "gmail", [3]) == [tmp_path / "gmail/seed3"]
    with pytest.raises(PipelineError, match=r"seed4 lacks text.safetensors.*tune_text@gmail"):
        tt.tuned_tower_dirs(tmp_path, "gmail", [3, 4])
    (tmp_path / "gmail/seed3/text.json").unlink()
    with pytest.raises(PipelineError, match="lacks text.json"):
        tt.load_tuned_tower(base, tmp_path / "gmail/seed3")


def test_a_tower_of_another_shape_or_scale_is_rejected(tmp_path):
    tt.save_text_tower(mini_tower(dim=8), tmp_path / "other", {})
    with pytest.raises(PipelineError, match="does not match"):
        tt.load_tuned_tower(mini_tower(dim=16), tmp_path / "other")
    info = tmp_path / "other/text.json"
    info.write_text(json.dumps({"scale": "paper"}))
    with pytest.raises(PipelineError, match="scale 'paper'"):
        tt.load_tuned_tower(mini_tower(dim=8), tmp_path / "other")


def test_mini_base_tower_is_the_committed_clips_text_side(tmp_path):
    from gmail.models.mini_clip import MiniClip, save_mini_clip

    torch.manual_seed(0)
    clip = MiniClip(MiniClipConfig(image_size=64, embed_dim=32))
    with torch.no_grad():
        clip.logit_scale.fill_(3.0)
    save_mini_clip(clip, tmp_path / "clip")
    tower = tt.load_text_tower("mini", str(tmp_path / "clip"))
    x = torch.randn(3, 384)
    torch.testing.assert_close(tower.encode_text(x), clip.encode_text(x))
    assert tower.logit_scale.item() == 3.0 and not any(p.requires_grad for p in tower.parameters())
    assert set(tt.tuned_state_dict(tower)) == {"logit_scale", "text.net.0.weight", "text.net.0.bias",
                                                "text.net.2.weight", "text.net.2.bias"}
    with pytest.raises(PipelineError, match="unknown encoder.scale"):
        tt.load_text_tower("huge", str(tmp_path / "clip"))


def test_paper_text_tower_tunes_its_text_side_only_and_saves_no_visual_weights(tiny_open_clip, tmp_path):
    base = tt.load_text_tower("paper", "unused", name="gmail-tiny-text", pretrained=tiny_open_clip)
    tokens = tt.tokenize_captions(base, CAPTIONS)
    assert tokens.tokens.shape == (10, 8) and tokens.tokens.dtype == torch.long  # open_clip BPE, context 8
    tuned = tt.load_text_tower("paper", "unused", name="gmail-tiny-text", pretrained=tiny_open_clip)
    visual_before = {k: v.clone() for k, v in tuned.model.visual.state_dict().items()}
    losses = tt.tune_text_tower(tuned, image_side(), tokens, 30, 4, 3e-3, 0.0, 0)
    assert sum(losses[-5:]) < sum(losses[:5])
    for k, v in tuned.model.visual.state_dict().items():
        assert torch.equal(v, visual_before[k]), k
    assert not torch.equal(tuned.model.token_embedding.weight, base.model.token_embedding.weight)

    tt.save_text_tower(tuned, tmp_path / "t", {"row": "real"})
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "t/text.safetensors"))
    assert "model.logit_scale" in saved and "model.token_embedding.weight" in saved
    assert not any(k.startswith("model.visual.") for k in saved)
    loaded = tt.load_tuned_tower(base, tmp_path / "t")
    torch.testing.assert_close(tt.encode_tokens(loaded, tokens.tokens), tt.encode_tokens(tuned, tokens.tokens))
    with pytest.raises(PipelineError, match="scale 'paper', not 'mini'"):
        tt.load_tuned_tower(mini_tower(), tmp_path / "t")


def test_paper_text_tower_unknown_model_is_an_error():
    with pytest.raises(PipelineError, match="open_clip"):
        tt.load_text_tower("paper", "unused", name="gmail-no-such-model", pretrained="")


# --------------------------------------------------------------------------- rows


def test_rows_must_name_variants_and_clip_is_never_tuned():
    variants = {"gmail": {}, "real": {}}
    tt.check_rows(["gmail", "real"], variants)
    with pytest.raises(PipelineError, match="unknown row 'gmial'.*gmail, real"):
        tt.check_rows(["gmial"], variants)
    with pytest.raises(PipelineError, match="untuned"):
        tt.check_rows(["clip"], variants)


def test_tune_text_params_reject_clip_and_repeated_rows():
    from gmail.core.config import section

    good = {"rows": ["gmail"], "seeds": 3, "steps": 10, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.0, "device": "cpu"}
    p = section(good, tt.TuneTextParams, "tune_text")
    assert p.seed_list(7) == [7, 8, 9]
    for bad, match in (({"rows": ["clip"]}, "untuned"), ({"rows": ["gmail", "gmail"]}, "twice"), ({"seeds": 0}, "positive")):
        with pytest.raises(PipelineError, match=match):
            section({**good, **bad}, tt.TuneTextParams, "tune_text")


def test_evaluate_rows_scores_clip_once_and_every_seed_of_a_tuned_row(tmp_path):
    base = mini_tower()
    for s in (0, 1):
        tuned = mini_tower(seed=10 + s)
        tt.save_text_tower(tuned, tmp_path / "gmail" / f"seed{s}", {})
    dirs = tt.row_tower_dirs(tmp_path, ["gmail"], [0, 1])
    assert dirs == {"clip": [None], "gmail": [tmp_path / "gmail/seed0", tmp_path / "gmail/seed1"]}
    x = torch.ones(1, 384)
    out = tt.evaluate_rows(base, dirs, lambda tower: {"m": float(tower.encode_text(x)[0, 0].detach())})
    expected = [float(mini_tower(seed=10 + s).encode_text(x)[0, 0].detach()) for s in (0, 1)]
    assert out["clip"] == {"m": {"mean": pytest.approx(float(base.encode_text(x)[0, 0].detach())), "std": 0.0}}
    assert out["gmail"]["m"]["mean"] == pytest.approx(sum(expected) / 2)
    assert out["gmail"]["m"]["std"] == pytest.approx(abs(expected[0] - expected[1]) / 2)  # population std


def test_paper_tokenizer_warns_once_with_the_count_of_cut_captions(tiny_open_clip, capsys):
    base = tt.load_text_tower("paper", "unused", name="gmail-tiny-text", pretrained=tiny_open_clip)
    capsys.readouterr()
    base.tokenize(["a cat", "a cat on a mat with a hat and a bat and a rat", "dog " * 1000])
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: 2 captions longer than 8 CLIP tokens were cut to 8"]


def test_tuning_stops_on_a_non_finite_loss():
    tower = mini_tower()
    z = image_side()
    z[0] = float("inf")
    with pytest.raises(PipelineError, match=r"^text tuning loss became nan at step 1: lower tune_text\.lr \(now 0\.0001\) or check the inputs$"):
        tt.tune_text_tower(tower, z, tt.tokenize_captions(tower, CAPTIONS), steps=3, batch_size=6, lr=1e-4, weight_decay=0.0, seed=0)
