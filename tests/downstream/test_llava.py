"""gmail.downstream.llava: connectors, chat prompts, answer-only loss, dual-projection routing,
batched generation, training, save/load, on a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gmail.core.config import section
from gmail.core.errors import PipelineError
from gmail.downstream.llava import (
    CAPTION_PROMPTS,
    IMAGE_MARKER,
    ImageSet,
    LlavaConfig,
    LlmParams,
    answer,
    build_llava,
    check_lora_targets,
    copy_projection,
    load_llava,
    mlp2x_gelu,
    projection_for,
    release_llm,
    save_llava,
    train_llava,
)
from gmail.models.llm import load_llm, smollm2_gguf

DIM = 12  # image embedding width in these tests


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer, 32-wide LlamaForCausalLM + SmolLM2's tokenizer, saved with save_pretrained. Its
    weights are drawn wider than Llama's default (std 0.5, not 0.02) so that the frozen tied LM head
    can give peaked logits at width 32 and LoRA training has something it can fit."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_llama")
    directory, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=len(tokenizer), initializer_range=0.5)).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture
def llm_tok(tiny_dir):
    """A fresh (LLM, tokenizer) per test: LoRA is added to the LLM in place."""
    return load_llm(str(tiny_dir))


def _config(**overrides) -> LlavaConfig:
    base = dict(llm="tiny", image_tokens=2, lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
                lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                max_answer_tokens=8, system_prompt="Be brief.")
    return LlavaConfig(**{**base, **overrides})


def _z(n, seed=0):
    return F.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mlp2x_gelu_has_llavas_shape():
    m = mlp2x_gelu(256, 576)
    assert [type(x).__name__ for x in m] == ["Linear", "GELU", "Linear"]
    assert (m[0].in_features, m[0].out_features, m[2].in_features, m[2].out_features) == (256, 576, 576, 576)
    assert mlp2x_gelu(256, 64, tokens=3)[2].out_features == 3 * 64


def test_chat_prompt_puts_the_image_inside_the_user_turn(llm_tok):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "single")
    rendered = model.prompt.render(CAPTION_PROMPTS[0])
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + IMAGE_MARKER)
    assert rendered.endswith("<|im_start|>assistant\n")
    # before + image + after is the rendered prompt, the marker replaced by the image vectors.
    text = tok.decode(model.prompt.before) + IMAGE_MARKER + tok.decode(model.prompt.after(CAPTION_PROMPTS[0]))
    assert text == rendered


def test_loss_is_cross_entropy_on_the_answer_tokens_only(llm_tok):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "dual", seed=1)
    z, names = _z(2), ["generated", "real"]
    prompts = [model.prompt.after("Describe."), model.prompt.after("What colour is the shape in this image?")]
    answers = [tok("a red circle")["input_ids"] + [tok.eos_token_id], tok("blue")["input_ids"] + [tok.eos_token_id]]
    got = model.loss(z, names, prompts, answers)
    # Reference: full logits over each unpadded sequence, cross-entropy where the answer is predicted.
    terms = []
    for i in range(2):
        prefix = model._prefix(z[i:i + 1], names[i:i + 1])
        ids = torch.tensor([prompts[i] + answers[i]])
        x = torch.cat([prefix, llm.get_input_embeddings()(ids)], dim=1)
        logits = model.llm(inputs_embeds=x).logits[0]
        start = prefix.shape[1] + len(prompts[i]) - 1
        terms.append(F.cross_entropy(logits[start:start + len(answers[i])], torch.tensor(answers[i]), reduction="none"))
    assert got.item() == pytest.approx(torch.cat(terms).mean().item(), rel=1e-5)
    # token_sum (data-parallel training scales it itself): the sum, and `forward` is `loss` (what DDP calls).
    assert model(z, names, prompts, answers, token_sum=True).item() == pytest.approx(torch.cat(terms).sum().item(), rel=1e-5)


def test_several_processes_need_a_row_each(llm_tok):
    """A batch smaller than the process count would leave a process with no rows: a one-line
    error before any distributed call."""
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "single")
    images = ImageSet("single", _z(4), [["a red circle"]] * 4, [[]] * 4)
    with pytest.raises(PipelineError, match="llm.batch_size=1 is smaller than the 2 processes"):
        train_llava(model, tok, [images], 2, 1, 1e-3, 1e-3, 0.0, 0.0, rank=0, world=2, progress=False)


def test_dual_projection_routes_each_row_through_its_own_connector(llm_tok):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "dual")
    assert set(model.projections) == {"generated", "real"}
    z = _z(3)
    before = model.image_embeds(z, ["generated", "real", "generated"]).detach()
    assert before.shape == (3, 2, 32)
    with torch.no_grad():
        model.projections["real"][2].weight.zero_()
        model.projections["real"][2].bias.fill_(1.0)
    after = model.image_embeds(z, ["generated", "real", "generated"]).detach()
    assert torch.equal(after[[0, 2]], before[[0, 2]]) and torch.equal(after[1], torch.ones(2, 32))
    assert projection_for("dual", "noise") == "generated" and projection_for("dual", "real") == "real"
    assert projection_for("single", "generated") == "single"


def test_batched_generation_with_left_padding_matches_one_at_a_time(llm_tok):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "single", seed=2)
    z = _z(3, seed=5)
    questions = ["Describe.", "What colour is the shape in the middle of this image?", "Is there a circle?"]
    together = answer(model, tok, z, "single", questions, max_new_tokens=5, batch_size=3)
    alone = [answer(model, tok, z[i:i + 1], "single", questions[i:i + 1], max_new_tokens=5)[0] for i in range(3)]
    assert together == alone and all(isinstance(t, str) for t in together)


@pytest.mark.slow
def test_training_fits_a_tiny_task_and_trains_only_connectors_that_see_images(llm_tok):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "dual", seed=0)
    real_before = {k: v.clone() for k, v in model.projections["real"].state_dict().items()}
    lora_before = {n: p.clone() for n, p in model.llm.named_parameters() if p.requires_grad}
    base_before = model.base_llm.model.layers[0].mlp.up_proj.base_layer.weight.clone()
    z = _z(4, seed=3)
    sets = [ImageSet("generated", z, [["a red circle"], ["a blue square"], ["a green circle"], ["a red square"]],
                     [[("what colour?", "red")], [("what colour?", "blue")], [], [("what shape?", "square")]])]
    log = train_llava(model, tok, sets, steps=40, batch_size=8, lr=1e-2, lr_projection=1e-2, weight_decay=0.0,
                      vqa_fraction=0.25, seed=0, progress=False)
    assert len(log.losses) == 40 and sum(log.losses[-5:]) < 0.5 * sum(log.losses[:5])
    assert all(torch.equal(v, model.projections["real"].state_dict()[k]) for k, v in real_before.items())
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.llm.named_parameters() if p.requires_grad)
    assert torch.equal(base_before, model.base_llm.model.layers[0].mlp.up_proj.base_layer.weight)  # frozen
    copy_projection(model, "generated", "real")
    assert all(torch.equal(model.projections["real"].state_dict()[k], v) for k, v in model.projections["generated"].state_dict().items())


@pytest.mark.slow
def test_training_is_seeded(llm_tok, tiny_dir):
    llm, tok = llm_tok
    sets = [ImageSet("single", _z(3), [["a red circle"], ["a blue square"], ["a green circle"]], [[], [], []])]
    losses = []
    for seed in (0, 0, 1):
        model = build_llava(_config(), llm, tok, DIM, "single", seed=seed)
        losses.append(train_llava(model, tok, sets, steps=3, batch_size=2, lr=1e-3, lr_projection=1e-3, weight_decay=0.0,
                                  vqa_fraction=0.0, seed=seed, progress=False).losses)
        llm = release_llm(model)
    assert losses[0] == losses[1] and losses[0] != losses[2]


@pytest.mark.slow
def test_save_load_round_trip_gives_the_same_answers(llm_tok, tiny_dir, tmp_path):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "dual", seed=4)
    sets = [ImageSet("generated", _z(2), [["a red circle"], ["a blue square"]], [[], []])]
    train_llava(model, tok, sets, steps=3, batch_size=2, lr=1e-2, lr_projection=1e-2, weight_decay=0.0,
                vqa_fraction=0.0, seed=0, progress=False)
    z, questions = _z(2, seed=9), ["Describe.", "What is it?"]
    expected = answer(model, tok, z, "real", questions, max_new_tokens=4)
    save_llava(model, tmp_path / "m", {"variant": "x"})
    assert (tmp_path / "m/adapter/adapter_config.json").is_file()
    base, tok2 = load_llm(str(tiny_dir))
    loaded = load_llava(tmp_path / "m", base, tok2)
    assert loaded.projection == "dual" and loaded.config == model.config
    assert answer(loaded, tok2, z, "real", questions, max_new_tokens=4) == expected
    with pytest.raises(PipelineError, match="no trained LLaVA model"):
        load_llava(tmp_path / "nothing", base, tok2)


def test_release_llm_gives_back_the_plain_model(llm_tok):
    llm, tok = llm_tok
    x = torch.randn(1, 4, 32)
    reference = llm(inputs_embeds=x).logits
    model = build_llava(_config(), llm, tok, DIM, "single")
    with torch.no_grad():  # make the adapter matter, then drop it
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.fill_(0.5)
    plain = release_llm(model)
    assert not any("lora" in n for n, _ in plain.named_modules())
    assert torch.equal(plain(inputs_embeds=x).logits, reference)


def test_connector_only_model_has_no_adapter(llm_tok, tmp_path):
    llm, tok = llm_tok
    model = build_llava(_config(lora_rank=0), llm, tok, DIM, "single")
    assert model.llm is llm and not any(p.requires_grad for p in llm.parameters())
    save_llava(model, tmp_path / "m")
    assert not (tmp_path / "m/adapter").exists()


def test_bad_configuration_is_a_one_line_error(llm_tok):
    llm, tok = llm_tok
    with pytest.raises(PipelineError, match="LoRA target 'attn' matches no layer"):
        check_lora_targets(llm, _config(lora_targets=["attn"]))
    check_lora_targets(llm, _config(lora_targets=["attn"], lora_rank=0))  # no LoRA, nothing to match
    raw = {"variants": {"v": {"images": "generated", "encoder": "f_g", "projection": "dual"}}, "reading": "abstract",
           "seeds": 1, "steps": 1, "batch_size": 1, "lr": 1e-3, "lr_projection": 1e-3, "weight_decay": 0.0, "vqa": True,
           "vqa_fraction": 0.5, "vqa_test_questions": 0, "generate_batch_size": 1, "dtype": "float32", "wmd": True,
           "benchmarks": {}, "device": "cpu",
           "model": {"llm": "x", "image_tokens": 1, "lora_rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.0,
                     "lora_targets": ["q_proj"], "max_answer_tokens": 4, "system_prompt": ""}}
    p = section(raw, LlmParams, "llm")
    assert p.variant("v").projection == "dual" and p.model.lora_targets == ["q_proj"]
    with pytest.raises(PipelineError, match="unknown LLM variant 'w': use one of v"):
        p.variant("w")
    cases = [({"reading": "b"}, "llm.reading='b' is not one of abstract, algorithm1"),
             ({"variants": {"v": {"images": "real", "encoder": "f_r", "projection": "dual"}}}, "dual projection needs generated"),
             ({"variants": {"v": {"images": "real", "encoder": "f_g", "projection": "single"}}}, "llm.variants.v.encoder"),
             ({"variants": {"v": {"images": "generated", "encoder": "f_g", "projection": "triple"}}}, "projection='triple'"),
             ({"variants": {}}, "llm.variants is empty"),
             ({"model": {**raw["model"], "lora_targets": []}}, "lora_targets is empty"),
             ({"vqa_fraction": 1.0}, "vqa_fraction")]
    for change, message in cases:
        with pytest.raises(PipelineError, match=message):
            section({**raw, **change}, LlmParams, "llm")


@pytest.mark.slow
def test_training_stops_on_a_non_finite_loss(llm_tok):
    llm, tok = llm_tok
    model = build_llava(_config(), llm, tok, DIM, "single", seed=0)
    z = torch.full((2, DIM), float("nan"))
    sets = [ImageSet("single", z, [["a red circle"], ["a blue square"]], [[], []])]
    with pytest.raises(PipelineError, match=r"^LLaVA loss became nan at step 1: lower llm\.lr \(now 0\.001\) or "
                                            r"llm\.lr_projection \(now 0\.01\) or check the inputs$"):
        train_llava(model, tok, sets, steps=2, batch_size=2, lr=1e-3, lr_projection=1e-2, weight_decay=0.0,
                    vqa_fraction=0.0, seed=0, progress=False)


def test_llm_loads_in_the_configured_dtype_and_trains_its_adapters_in_float32(tiny_dir):
    """A Llama saved in float32 loads as bfloat16 when llm.dtype says so (half the memory); LoRA
    and connectors stay float32 and a bfloat16 training step runs and moves them."""
    llm, tok = load_llm(str(tiny_dir), "bfloat16")
    assert {p.dtype for p in llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_llm(str(tiny_dir))[0].parameters()} == {torch.float32}  # the default
    model = build_llava(_config(), llm, tok, DIM, "single", seed=0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    sets = [ImageSet("single", _z(2), [["a red circle"], ["a blue square"]], [[], []])]
    log = train_llava(model, tok, sets, steps=2, batch_size=2, lr=1e-2, lr_projection=1e-2, weight_decay=0.0,
                      vqa_fraction=0.0, seed=0, dtype=torch.bfloat16, progress=False)
    assert len(log.losses) == 2 and all(map(torch.isfinite, map(torch.tensor, log.losses)))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(PipelineError, match="unknown dtype"):
        load_llm(str(tiny_dir), "float8")
