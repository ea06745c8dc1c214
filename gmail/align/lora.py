"""`f_g`: a trainable copy of the frozen image tower `f_r`, with peft LoRA (or every targeted
weight, rank "full"), and how it is saved and loaded.

Saved as `<dir>/adapter` (peft `save_pretrained`; `PeftModel.from_pretrained` onto a copy of
`f_r` loads it) or, for rank "full", `<dir>/f_g.safetensors` (the copy's whole state dict).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch.nn as nn

from gmail.align.params import parse_rank
from gmail.core.errors import PipelineError

ADAPTER_DIR = "adapter"
FULL_WEIGHTS = "f_g.safetensors"


def add_lora(encoder: nn.Module, rank, target_modules: str, alpha: float | None = None):
    """A trainable copy of `encoder`: peft LoRA of `rank` on `target_modules` (a regex over
    module names), or a full copy with every weight trainable (`rank="full"`).

    The original `encoder` is left untouched (it stays the frozen `f_r`). LoRA's B matrices
    start at zero, so the copy starts out computing exactly `f_r`.
    """
    rank = parse_rank(rank)
    f_g = copy.deepcopy(encoder)
    if rank == "full":
        for p in f_g.parameters():
            p.requires_grad_(True)
        return f_g
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=target_modules,
                        lora_dropout=0.0, bias="none")
    return get_peft_model(f_g, config)


def base_model(f_g: nn.Module) -> nn.Module:
    """The wrapped encoder inside a peft model (LoRA layers injected in place), or `f_g` itself."""
    return f_g.get_base_model() if hasattr(f_g, "get_base_model") else f_g


def save_f_g(f_g: nn.Module, directory) -> None:
    """Write `f_g` into `directory`: its LoRA adapter, or a full copy's weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(f_g, "save_pretrained"):
        f_g.save_pretrained(str(directory / ADAPTER_DIR))
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in f_g.state_dict().items()}, str(directory / FULL_WEIGHTS))


def load_f_g(f_r: nn.Module, directory) -> nn.Module:
    """The aligned encoder saved by the align stage in `directory`, on top of `f_r`.

    `directory/adapter` holds a peft LoRA adapter (`save_pretrained`), loaded onto a copy of
    `f_r` with `PeftModel.from_pretrained`; `directory/f_g.safetensors` holds a full copy's
    weights (`rank: full`). `f_r` itself is left untouched.
    """
    directory = Path(directory)
    adapter, full = directory / ADAPTER_DIR, directory / FULL_WEIGHTS
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        try:
            f_g = PeftModel.from_pretrained(copy.deepcopy(f_r), str(adapter))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise PipelineError(f"adapter {adapter} does not fit this encoder ({exc.__class__.__name__}): "
                                "use the encoder it was aligned from or rerun `dvc repro align@generated`") from exc
    elif full.is_file():
        from safetensors.torch import load_file

        f_g = copy.deepcopy(f_r)
        try:
            f_g.load_state_dict(load_file(str(full)))
        except RuntimeError as exc:
            raise PipelineError(f"{full} does not fit this encoder: use the encoder it was aligned from or rerun align") from exc
    else:
        raise PipelineError(f"no aligned encoder in {directory} (neither adapter/ nor f_g.safetensors): "
                            "run `dvc repro align@generated` or point --adapter at an align output")
    for p in f_g.parameters():
        p.requires_grad_(False)
    return f_g.eval()
