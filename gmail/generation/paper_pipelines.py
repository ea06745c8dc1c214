"""Paper-scale text-to-image generation for the `generate` stage.

The GMAIL paper samples its synthetic images with Stable Diffusion 2 (base, DDIM sampler)
and FLUX.1-schnell. This module loads either through diffusers' own `from_pretrained` and
yields images one caption at a time, seeded per caption so that an image depends only on
(caption, seed, sampler settings) and never on batch size or on which batch it landed in.

Speed options (all off by default) leave the sampler's maths alone: no step is skipped and no
feature is cached, so they change images by float rounding only. `speed_up_pipeline` fuses the
attention projections, switches convolutions to channels_last and compiles the denoiser (and
the VAE decoder); `pipeline_sampler` can pick the SDPA kernel and sample the next batch in a
background thread while the caller encodes and writes the previous one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from gmail.core.errors import PipelineError

FAMILIES = ("sd2", "flux")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# FLUX.1-schnell was distilled with a 256-token T5 context; longer contexts only cost time.
FLUX_MAX_SEQUENCE_LENGTH = 256

# torch.compile modes offered. CUDA-graph modes ("reduce-overhead", "max-autotune") are left out:
# CUDA graph trees live per thread, and the prefetching sampler runs a new thread per call.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# SDPA kernel preference, first choice first; the rest are fallbacks for shapes it cannot take
# (e.g. the VAE's single 512-wide attention head).
ATTENTION_BACKENDS = {
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "efficient": ("EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION", "MATH"),
    "math": ("MATH",),
}


def load_paper_pipeline(family: str, id_or_path: str, dtype: str = "float16", device: str = "cuda", *,
                        channels_last: bool = False, fuse_qkv: bool = False, compile_mode: str | None = None,
                        compile_vae: bool = False):
    """Load the paper's text-to-image pipeline and move it to `device`.

    family: "sd2" loads a `StableDiffusionPipeline` (paper: `stabilityai/stable-diffusion-2-base`)
    and switches it to a DDIM scheduler; "flux" loads a `FluxPipeline` (paper:
    `black-forest-labs/FLUX.1-schnell`). `id_or_path` is a Hub id or a local directory saved with
    `save_pretrained`. `dtype` is one of "float32", "float16", "bfloat16".
    The keyword-only speed options are passed to `speed_up_pipeline` (all off by default).
    Raises PipelineError for an unknown family/dtype, an unusable device, or a model that cannot
    be loaded.
    """
    _check_speed_options(compile_mode)
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
    return speed_up_pipeline(pipe, channels_last=channels_last, fuse_qkv=fuse_qkv, compile_mode=compile_mode,
                             compile_vae=compile_vae)


def _check_speed_options(compile_mode: str | None = None, attention_backend: str | None = None, prefetch: int = 0) -> None:
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise PipelineError(f"unknown compile mode {compile_mode!r}: use null (no compile) or one of {', '.join(COMPILE_MODES)}")
    if attention_backend is not None and attention_backend not in ATTENTION_BACKENDS:
        raise PipelineError(f"unknown attention backend {attention_backend!r}: use null (torch's choice) or one of "
                            f"{', '.join(ATTENTION_BACKENDS)}")
    if prefetch < 0:
        raise PipelineError(f"prefetch is {prefetch}: use 0 (off) or a number of batches to sample ahead")


def speed_up_pipeline(pipe, *, channels_last: bool = False, fuse_qkv: bool = False, compile_mode: str | None = None,
                      compile_vae: bool = False):
    """Apply speed options to a loaded SD2 or FLUX pipeline in place and return it.

    None of them changes the sampler's maths (same steps, no caching); images change by float
    rounding only. `fuse_qkv` merges each attention's q/k/v (k/v for cross-attention) projections
    into one matmul, in the denoiser and the VAE. `channels_last` stores the UNet's and the VAE's
    convolution activations as NHWC, the layout tensor-core convolutions run in. `compile_mode`
    (None, or one of COMPILE_MODES) compiles the denoiser with torch.compile: the whole UNet for
    SD2, the repeated transformer blocks for FLUX (regional compilation: the same speed for a
    fraction of the compile time); `compile_vae` compiles the VAE decoder as well. Compiling sets
    process-wide inductor flags (those of the diffusers "accelerate inference" tutorial) and
    happens lazily, on the first batch; shapes are static, so each distinct batch size compiles
    once (keep shard sizes a multiple of the batch size).
    """
    _check_speed_options(compile_mode)
    flux = _is_flux(pipe)
    denoiser = pipe.transformer if flux else pipe.unet
    # 1. Fused projections first: they replace modules that compile would otherwise trace.
    if fuse_qkv:
        denoiser.fuse_qkv_projections()
        pipe.vae.fuse_qkv_projections()
    # 2. Memory layout (the FLUX transformer has no convolutions).
    if channels_last:
        if not flux:
            pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    # 3. Compile last, so that it sees the final modules and layouts.
    if compile_mode is not None:
        import torch._inductor.config as inductor

        inductor.conv_1x1_as_mm = True
        inductor.coordinate_descent_tuning = True
        inductor.coordinate_descent_check_all_directions = True
        inductor.epilogue_fusion = False
        options = {"mode": None if compile_mode == "default" else compile_mode, "fullgraph": True, "dynamic": False}
        if flux:
            pipe.transformer.compile_repeated_blocks(**options)
        else:
            pipe.unet.compile(**options)
        if compile_vae:
            # The decoder module, not `vae.decode`: the SD pipeline passes the generator list to
            # `decode`, which would make every batch a new compile guard.
            pipe.vae.decoder.compile(**options)
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
    output: str = "pil",
) -> Iterator[tuple[int, Image.Image | np.ndarray]]:
    """Yield `(index, PIL.Image)` for every caption, in caption order.

    Image `i` is sampled from `captions[i]` with initial noise drawn from its own generator
    seeded with `seeds[i]`, so it is the same whatever `batch_size` is. `steps` is the number of
    sampler steps and `guidance` the classifier-free guidance scale (FLUX receives it as
    `guidance_scale`; schnell has no guidance embedding and ignores it). `height`/`width` are in
    pixels and must be multiples of the pipeline's latent stride.

    `generator_device` defaults to "cpu": CPU generators draw the same noise on every machine, so
    the same seed gives the same starting latents on a GPU and in CPU tests; the noise is a small
    tensor, so drawing it on the CPU costs nothing noticeable.

    `output="uint8"` yields (H, W, 3) uint8 arrays instead of PIL images, with the same pixels:
    the float-to-uint8 step diffusers does on the CPU (x * 255, round half to even, in float32)
    runs on the pipeline's device, and only uint8 bytes are copied back.
    """
    if output not in ("pil", "uint8"):
        raise PipelineError(f"unknown output {output!r}: use pil or uint8")
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
            output_type="pil" if output == "pil" else "pt",
            **extra,
        )
        images = result.images if output == "pil" else _to_uint8(result.images)
        for offset, image in enumerate(images):
            yield start + offset, image


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) images in [0, 1] as (B, H, W, 3) uint8, exactly as diffusers' numpy_to_pil rounds
    them: float32 x * 255, rounded half to even (torch.round and numpy's round agree)."""
    return (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _attention(backend: str | None):
    """A context preferring `backend`'s SDPA kernel (None: torch's own choice)."""
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name) for name in ATTENTION_BACKENDS[backend]], set_priority=True)


_DONE = object()


def _prefetched(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a background thread, holding at most `depth` finished items ahead.

    The caller's work on item i (PNG encoding, tar writing) then overlaps the producer's work on
    later items (GPU sampling). The two threads share the GIL: Pillow's in-memory PNG encoder holds
    it for one 64 KiB output chunk at a time, and the GPU keeps running the kernels already queued
    while the producer waits for it. Errors in the producer are raised in the caller; closing the
    iterator early stops the producer after its current item.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, _DONE))
        except BaseException as exc:  # handed to the caller, which re-raises it
            put((exc, None))

    worker = threading.Thread(target=produce, name="paper-sampler-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            error, item = q.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def pipeline_sampler(pipe, steps: int, guidance: float, resolution: int, batch_size: int, *, prefetch: int = 0,
                     attention_backend: str | None = None) -> Callable[[list[str], list[int]], Iterator[np.ndarray]]:
    """`sampler(prompts, seeds)` over an already loaded pipeline: one (R, R, 3) uint8 image per prompt,
    in order, image i from `seeds[i]`.

    `prefetch` > 0 samples up to that many batches ahead in a background thread, so the caller's
    PNG encoding and shard writing overlap GPU sampling (0: sample only when asked, in the caller's
    thread). `attention_backend` (None, or a key of ATTENTION_BACKENDS) sets the preferred SDPA
    kernel while sampling. Neither changes any image.
    """
    _check_speed_options(attention_backend=attention_backend, prefetch=prefetch)

    def images(prompts: list[str], seeds: list[int]) -> Iterator[np.ndarray]:
        with _attention(attention_backend):
            for _, img in generate_paper_images(pipe, prompts, seeds, steps, guidance, resolution, resolution, batch_size,
                                                output="uint8"):
                yield img

    def sampler(prompts: list[str], seeds: list[int]) -> Iterator[np.ndarray]:
        if prefetch:
            return _prefetched(images(prompts, seeds), depth=prefetch * batch_size)
        return images(prompts, seeds)

    return sampler


def paper_sampler(family: str, id_or_path: str, steps: int, guidance: float, resolution: int, batch_size: int,
                  dtype: str = "float16", device: str = "cuda", *, channels_last: bool = False, fuse_qkv: bool = False,
                  compile_mode: str | None = None, compile_vae: bool = False, prefetch: int = 0,
                  attention_backend: str | None = None) -> Callable[[list[str], list[int]], Iterator[np.ndarray]]:
    """A sampler for the paper's pipeline (loaded here, once): `sampler(prompts, seeds)` yields one
    (R, R, 3) uint8 image per prompt, in order, image i from `seeds[i]`.

    Speed options (all off by default, none changes the sampler's maths): `channels_last`,
    `fuse_qkv`, `compile_mode`, `compile_vae` as in `speed_up_pipeline`; `prefetch` and
    `attention_backend` as in `pipeline_sampler`."""
    _check_speed_options(compile_mode, attention_backend, prefetch)
    pipe = load_paper_pipeline(family, id_or_path, dtype, device, channels_last=channels_last, fuse_qkv=fuse_qkv,
                               compile_mode=compile_mode, compile_vae=compile_vae)
    return pipeline_sampler(pipe, steps, guidance, resolution, batch_size, prefetch=prefetch, attention_backend=attention_backend)
