"""Paper-scale text-to-image generation for the `generate` stage.

The GMAIL paper samples its synthetic images with Stable Diffusion 2 (base, DDIM sampler)
and FLUX.1-schnell. This module loads either through diffusers' own `from_pretrained`, or any
diffusers text-to-image model given as a Hub id pinned to a commit (`org/name@<40-hex sha>`,
loaded with `AutoPipelineForText2Image`), and yields images one caption at a time, seeded per caption so that an image depends only on
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
import re
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from gmail.core.errors import PipelineError

FAMILIES = ("sd2", "flux")
# A Hub model pinned to one commit: `org/name@<40-hex sha>`. A branch or tag (`main`) moves, so the
# same params could load other weights while DVC serves the old images; a sha never moves.
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<revision>[0-9a-f]{40})$")
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


def parse_model(model: str, key: str = "gen.model") -> tuple[str, str | None]:
    """`(family, None)` for a family name ("sd2", "flux"), `(repo id, revision)` for a pinned Hub id
    `org/name@<40-hex commit sha>`. Anything else, an unpinned id included, is a PipelineError naming
    `key` that says how to pin it."""
    if model in FAMILIES:
        return model, None
    match = HUB_ID.match(model) if isinstance(model, str) else None
    if match:
        return match["repo"], match["revision"]
    repo = model.split("@", 1)[0] if isinstance(model, str) else ""
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", repo):
        raise PipelineError(
            f"{key} {model!r} is not pinned to a commit (a branch or tag moves, and DVC would serve images of other weights): "
            f"write {repo}@<40-hex commit sha>; on a connected machine `hf download {repo}` prints its snapshots/<sha> folder, "
            f"or run python -c \"from huggingface_hub import HfApi; print(HfApi().model_info('{repo}').sha)\"")
    raise PipelineError(f"unknown {key} {model!r}: use one of {', '.join(FAMILIES)} or a Hub id pinned to a commit, "
                        "org/name@<40-hex sha> (e.g. dvc exp run -S gen.model=flux)")


def is_hub_id(model: str) -> bool:
    """Whether `model` is a pinned Hub id (`org/name@<sha>`) rather than a family name."""
    return isinstance(model, str) and HUB_ID.match(model) is not None


def load_paper_pipeline(family: str, id_or_path: str | None, dtype: str = "float16", device: str = "cuda", *,
                        channels_last: bool = False, fuse_qkv: bool = False, compile_mode: str | None = None,
                        compile_vae: bool = False):
    """Load the paper's text-to-image pipeline and move it to `device`.

    family: "sd2" loads a `StableDiffusionPipeline` (paper: `stabilityai/stable-diffusion-2-base`)
    and switches it to a DDIM scheduler; "flux" loads a `FluxPipeline` (paper:
    `black-forest-labs/FLUX.1-schnell`); for both `id_or_path` is a Hub id or a local directory
    saved with `save_pretrained`. family may instead be a pinned Hub id `org/name@<sha>` (see
    `parse_model`; `id_or_path` is then not read): `AutoPipelineForText2Image` loads that commit,
    an SD 1.x/2.x pipeline switched to DDIM as for "sd2", any other with its own scheduler.
    `dtype` is one of "float32", "float16", "bfloat16".
    The keyword-only speed options are passed to `speed_up_pipeline` (all off by default).
    Raises PipelineError for an unknown family/dtype, an unusable device, or a model that cannot
    be loaded.
    """
    _check_speed_options(compile_mode)
    source, revision = parse_model(family, "model family")
    if revision is None:
        source = id_or_path
    if dtype not in DTYPES:
        raise PipelineError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    # Fail before the (slow) load rather than after it when the GPU is missing.
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {device!r} requested but CUDA is not available: run on a GPU machine or set the device to cpu")

    # Imported here so that modules importing this one stay cheap when no generation happens.
    import diffusers

    torch_dtype = DTYPES[dtype]
    # The safety checker would blacken "unsafe" images and so silently change the synthetic data
    # set; SD2-base ships without one anyway, so make that explicit.
    no_checker = {"safety_checker": None, "requires_safety_checker": False}
    try:
        if revision is not None:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(source, revision=revision, dtype=torch_dtype,
                                                                       **_checker_kwargs(source, revision, no_checker))
            if isinstance(pipe, diffusers.StableDiffusionPipeline):
                # SD 1.x/2.x as the "sd2" family: the paper samples it with DDIM.
                pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        elif family == "sd2":
            pipe = diffusers.StableDiffusionPipeline.from_pretrained(source, dtype=torch_dtype, **no_checker)
            # The paper samples SD2 with DDIM; keep the checkpoint's noise schedule settings.
            pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        else:
            pipe = diffusers.FluxPipeline.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        download = f"hf download {source}" + (f" --revision {revision}" if revision else "")
        hint = (
            f"HF_HUB_OFFLINE is set, so download it into the cache first ({download}; HF_HOME says where the cache is)"
            + ("" if revision else " or pass a local directory")
            if offline
            else "check the id or path, download it first (hf download ID), or set HF_HUB_OFFLINE=1 to use the local cache"
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = family if revision is not None else f"{family} pipeline from {source!r}"
        raise PipelineError(f"cannot load {what} ({first_line[:300]}): {hint}") from exc

    try:
        pipe = pipe.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise PipelineError(f"cannot move the {family} pipeline to device {device!r} ({exc}): pick an available device") from exc
    # The stage reports its own progress per image; diffusers' per-step bars would interleave with it.
    pipe.set_progress_bar_config(disable=True)
    return speed_up_pipeline(pipe, channels_last=channels_last, fuse_qkv=fuse_qkv, compile_mode=compile_mode,
                             compile_vae=compile_vae)


def _checker_kwargs(repo: str, revision: str, no_checker: dict) -> dict:
    """`no_checker` when the pipeline at `repo@revision` has a safety checker (SD 1.x), else nothing:
    other pipeline classes would warn about keyword arguments they do not take."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(repo, revision=revision)
    except (OSError, ValueError):
        return {}  # from_pretrained reports the missing model itself
    return no_checker if "safety_checker" in config else {}


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
    """Apply speed options to a loaded pipeline (SD2, FLUX, or any UNet or transformer one) in place and return it.

    None of them changes the sampler's maths (same steps, no caching); images change by float
    rounding only. `fuse_qkv` merges each attention's q/k/v (k/v for cross-attention) projections
    into one matmul, in the denoiser and the VAE. `channels_last` stores the UNet's and the VAE's
    convolution activations as NHWC, the layout tensor-core convolutions run in. `compile_mode`
    (None, or one of COMPILE_MODES) compiles the denoiser with torch.compile: the whole UNet for
    SD2, the repeated transformer blocks for FLUX and other transformers that declare them, else the whole transformer (regional compilation: the same speed for a
    fraction of the compile time); `compile_vae` compiles the VAE decoder as well. Compiling sets
    process-wide inductor flags (those of the diffusers "accelerate inference" tutorial) and
    happens lazily, on the first batch; shapes are static, so each distinct batch size compiles
    once (keep shard sizes a multiple of the batch size).
    """
    _check_speed_options(compile_mode)
    # A UNet (SD 1.x/2.x, SDXL) or a transformer (FLUX, SD3, PixArt, ...).
    unet = getattr(pipe, "unet", None)
    denoiser = unet if unet is not None else pipe.transformer
    # 1. Fused projections first: they replace modules that compile would otherwise trace.
    if fuse_qkv:
        for module in (denoiser, pipe.vae):
            if not hasattr(module, "fuse_qkv_projections"):
                raise PipelineError(f"{type(module).__name__} has no fused attention projections: set gen.fuse_qkv false")
            module.fuse_qkv_projections()
    # 2. Memory layout (transformers have no convolutions after their patch embedding).
    if channels_last:
        if unet is not None:
            unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    # 3. Compile last, so that it sees the final modules and layouts.
    if compile_mode is not None:
        import torch._inductor.config as inductor

        inductor.conv_1x1_as_mm = True
        inductor.coordinate_descent_tuning = True
        inductor.coordinate_descent_check_all_directions = True
        inductor.epilogue_fusion = False
        options = {"mode": None if compile_mode == "default" else compile_mode, "fullgraph": True, "dynamic": False}
        if unet is None and getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(**options)
        else:
            denoiser.compile(**options)
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
    # shrink a non-multiple size, and SD would raise deep inside diffusers. SD3 keeps its patch
    # size on the pipeline.
    stride = pipe.vae_scale_factor * (2 if flux else int(getattr(pipe, "patch_size", None) or 1))
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


def paper_sampler(family: str, id_or_path: str | None, steps: int, guidance: float, resolution: int, batch_size: int,
                  dtype: str = "float16", device: str = "cuda", *, channels_last: bool = False, fuse_qkv: bool = False,
                  compile_mode: str | None = None, compile_vae: bool = False, prefetch: int = 0,
                  attention_backend: str | None = None) -> Callable[[list[str], list[int]], Iterator[np.ndarray]]:
    """A sampler for the paper's pipeline (loaded here, once, as `load_paper_pipeline(family,
    id_or_path)`: a family and its weights, or a pinned Hub id): `sampler(prompts, seeds)` yields one
    (R, R, 3) uint8 image per prompt, in order, image i from `seeds[i]`.

    Speed options (all off by default, none changes the sampler's maths): `channels_last`,
    `fuse_qkv`, `compile_mode`, `compile_vae` as in `speed_up_pipeline`; `prefetch` and
    `attention_backend` as in `pipeline_sampler`."""
    _check_speed_options(compile_mode, attention_backend, prefetch)
    pipe = load_paper_pipeline(family, id_or_path, dtype, device, channels_last=channels_last, fuse_qkv=fuse_qkv,
                               compile_mode=compile_mode, compile_vae=compile_vae)
    return pipeline_sampler(pipe, steps, guidance, resolution, batch_size, prefetch=prefetch, attention_backend=attention_backend)
