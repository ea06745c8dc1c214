"""Paper-scale text-to-image generation for the `generate` stage.

The GMAIL paper samples its synthetic images with Stable Diffusion 2 (base, DDIM sampler)
and FLUX.1-schnell. This module loads either through diffusers' own `from_pretrained` and
yields images one caption at a time, seeded per caption so that an image depends only on
(caption, seed, sampler settings) and never on batch size or on which batch it landed in.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from gmail.core.errors import PipelineError

FAMILIES = ("sd2", "flux")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# FLUX.1-schnell was distilled with a 256-token T5 context; longer contexts only cost time.
FLUX_MAX_SEQUENCE_LENGTH = 256


def load_paper_pipeline(family: str, id_or_path: str, dtype: str = "float16", device: str = "cuda"):
    """Load the paper's text-to-image pipeline and move it to `device`.

    family: "sd2" loads a `StableDiffusionPipeline` (paper: `stabilityai/stable-diffusion-2-base`)
    and switches it to a DDIM scheduler; "flux" loads a `FluxPipeline` (paper:
    `black-forest-labs/FLUX.1-schnell`). `id_or_path` is a Hub id or a local directory saved with
    `save_pretrained`. `dtype` is one of "float32", "float16", "bfloat16".
    Raises PipelineError for an unknown family/dtype, an unusable device, or a model that cannot
    be loaded.
    """
    if family not in FAMILIES:
        raise PipelineError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    if dtype not in DTYPES:
        raise PipelineError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    # Fail before the (slow) load rather than after it when the GPU is missing.
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {device!r} requested but CUDA is not available: run on a GPU machine or set the device to cpu")

    # Imported here so that modules importing this one stay cheap when no generation happens.
    import diffusers

    torch_dtype = DTYPES[dtype]
    try:
        if family == "sd2":
            # The safety checker would blacken "unsafe" images and so silently change the
            # synthetic data set; SD2-base ships without one anyway, so make that explicit.
            pipe = diffusers.StableDiffusionPipeline.from_pretrained(
                id_or_path, dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
            )
            # The paper samples SD2 with DDIM; keep the checkpoint's noise schedule settings.
            pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        else:
            pipe = diffusers.FluxPipeline.from_pretrained(id_or_path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        hint = (
            f"HF_HUB_OFFLINE is set, so download it into the cache first (hf download {id_or_path}) or pass a local directory"
            if offline
            else "check the id or path, download it first (hf download ID), or set HF_HUB_OFFLINE=1 to use the local cache"
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"cannot load {family} pipeline from {id_or_path!r} ({first_line}): {hint}") from exc

    try:
        pipe = pipe.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise PipelineError(f"cannot move the {family} pipeline to device {device!r} ({exc}): pick an available device") from exc
    # The stage reports its own progress per image; diffusers' per-step bars would interleave with it.
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _is_flux(pipe) -> bool:
    import diffusers

    return isinstance(pipe, diffusers.FluxPipeline)


def generate_paper_images(
    pipe,
    captions: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    height: int,
    width: int,
    batch_size: int,
    generator_device: str = "cpu",
) -> Iterator[tuple[int, Image.Image]]:
    """Yield `(index, PIL.Image)` for every caption, in caption order.

    Image `i` is sampled from `captions[i]` with initial noise drawn from its own generator
    seeded with `seeds[i]`, so it is the same whatever `batch_size` is. `steps` is the number of
    sampler steps and `guidance` the classifier-free guidance scale (FLUX receives it as
    `guidance_scale`; schnell has no guidance embedding and ignores it). `height`/`width` are in
    pixels and must be multiples of the pipeline's latent stride.

    `generator_device` defaults to "cpu": CPU generators draw the same noise on every machine, so
    the same seed gives the same starting latents on a GPU and in CPU tests; the noise is a small
    tensor, so drawing it on the CPU costs nothing noticeable.
    """
    captions = list(captions)
    seeds = [int(s) for s in seeds]
    if len(captions) != len(seeds):
        raise PipelineError(f"{len(captions)} captions but {len(seeds)} seeds: give exactly one seed per caption")
    if batch_size < 1:
        raise PipelineError(f"batch_size is {batch_size}: use a positive batch size")
    if steps < 1:
        raise PipelineError(f"steps is {steps}: use at least one sampling step")

    flux = _is_flux(pipe)
    # FLUX packs latents into 2x2 patches, so its stride is twice the VAE's; it would silently
    # shrink a non-multiple size, and SD would raise deep inside diffusers.
    stride = pipe.vae_scale_factor * (2 if flux else 1)
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise PipelineError(f"image size {height}x{width} is not a positive multiple of {stride}: choose height and width divisible by {stride}")

    extra: dict = {}
    if flux:
        # A tokenizer without a configured limit reports a huge model_max_length; diffusers
        # rejects anything above 512 and schnell was trained with 256.
        tokenizer_limit = getattr(pipe.tokenizer_2, "model_max_length", FLUX_MAX_SEQUENCE_LENGTH)
        extra["max_sequence_length"] = min(FLUX_MAX_SEQUENCE_LENGTH, int(tokenizer_limit))

    for start in range(0, len(captions), batch_size):
        batch = captions[start : start + batch_size]
        # One generator per prompt: diffusers draws each prompt's noise from its own generator,
        # which is what makes an image independent of its batch neighbours.
        generators = [torch.Generator(device=generator_device).manual_seed(s) for s in seeds[start : start + len(batch)]]
        result = pipe(
            prompt=batch,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            generator=generators,
            output_type="pil",
            **extra,
        )
        for offset, image in enumerate(result.images):
            yield start + offset, image


def paper_images(family: str, id_or_path: str, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                 resolution: int, batch_size: int, dtype: str = "float16",
                 device: str = "cuda") -> Iterator[tuple[int, np.ndarray]]:
    """(index, (R, R, 3) uint8 image) for every prompt from the paper's pipeline (loaded up front)."""
    pipe = load_paper_pipeline(family, id_or_path, dtype, device)
    return ((i, np.asarray(img.convert("RGB")))
            for i, img in generate_paper_images(pipe, prompts, seeds, steps, guidance, resolution, resolution, batch_size))
