"""Benchmark: paper-scale image generation throughput, the stock diffusers call against our generate path.

    python benchmarks/generate_throughput.py                  # --scale gpu on CUDA, cpu otherwise
    python benchmarks/generate_throughput.py --scale cpu --families sd2

Builds SD2-base and FLUX.1-schnell *architecture* pipelines from their published configs with
random weights (nothing is downloaded; compute does not depend on the weights) and times, on
the same captions and seeds:
  stock  the plain diffusers call, pipe(prompt=batch, num_inference_steps, guidance_scale,
         height, width, generator=<one CPU generator per image>, output_type="pil"), per batch;
  ours   the `generate` stage's path: speed_up_pipeline (load_paper_pipeline's speed options),
         pipeline_sampler (generate_paper_images with per-image CPU generators; prefetch, SDPA
         kernel choice) and write_shard, so images/s counts images written into webdataset shards.
Then it reads ours' shards back and compares their pixels with stock's images. --scale gpu is
the paper setting (SD2 512 px, 50 DDIM steps, CFG 7.5, fp16, batch 32; FLUX 4 steps, bf16);
--scale cpu is a tiny model of the same classes that runs in seconds (what the tests run).
Prints a table and writes JSON to --out (default stats/benchmarks/generate_throughput.json).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs here

import numpy as np
import torch

from gmail.core.io import write_json
from gmail.data.shards import read_shards, shard_name, shard_ranges, write_shard
from gmail.generation.paper_pipelines import (
    ATTENTION_BACKENDS,
    COMPILE_MODES,
    pipeline_sampler,
    speed_up_pipeline,
)

# Published configs (config.json of each component), random weights.
# stabilityai/stable-diffusion-2-base: unet, vae, text_encoder (OpenCLIP ViT-H/14 text tower), scheduler.
SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=768, scaling_factor=0.18215,
)
SD2_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512, bos_token_id=0,
    eos_token_id=2, pad_token_id=1,
)
SD2_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)
# black-forest-labs/FLUX.1-schnell: transformer (11.9B), vae (16 latent channels), text_encoder
# (CLIP ViT-L/14 text), text_encoder_2 (T5 v1.1 XXL encoder), scheduler.
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, force_upcast=True, mid_block_add_attention=True,
)
FLUX_CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0,
    eos_token_id=2, pad_token_id=1,
)
FLUX_T5 = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)

# --scale cpu: the same classes and block layout, a few channels wide (vae_scale_factor stays 8).
TINY = {
    "sd2_unet": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=(2, 4, 4, 4),
                     cross_attention_dim=32, norm_num_groups=8, sample_size=8),
    "sd2_vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64),
    "sd2_text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
    "flux_transformer": dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                             joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    "flux_vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64),
    "flux_clip": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
    "flux_t5": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
}

CAPTIONS = [
    "a man riding a wave on top of a surfboard",
    "two dogs playing with a frisbee in a grassy park",
    "a plate of food with broccoli, rice and a fork",
    "a red double decker bus driving down a city street",
    "a kitchen with white cabinets and a stainless steel refrigerator",
    "a giraffe standing next to a tree in a zoo enclosure",
    "a person holding an umbrella on a rainy sidewalk at night",
    "an airplane flying over the mountains under a clear blue sky",
]


@dataclass
class Workload:
    """One family's benchmark setting."""
    family: str
    resolution: int  # pixels, square
    steps: int
    guidance: float  # CFG scale (FLUX.1-schnell has no guidance embedding and samples with 0)
    batch_size: int  # images per pipeline call, both paths
    batches: int  # timed batches per path
    warmup_batches: int  # untimed batches first (ours: compile happens here)
    dtype: str
    t5_tokens: int = 256  # FLUX T5 context; our path uses min(256, tokenizer limit), stock gets the same


WORKLOADS = {
    # SD2 as the issue measured it (stock fp16 batch 32: 3.63 img/s on one H200); FLUX as in DESIGN.md §6.
    "gpu": {"sd2": Workload("sd2", 512, 50, 7.5, 32, batches=6, warmup_batches=2, dtype="float16"),
            "flux": Workload("flux", 512, 4, 0.0, 8, batches=6, warmup_batches=2, dtype="bfloat16")},
    "cpu": {"sd2": Workload("sd2", 64, 3, 7.5, 4, batches=4, warmup_batches=1, dtype="float32"),
            "flux": Workload("flux", 64, 2, 0.0, 4, batches=4, warmup_batches=1, dtype="float32", t5_tokens=64)},
}
# Speed options of our path per scale. CPU: compiling on 2 cores takes minutes, so it is opt-in.
SPEED = {
    "gpu": dict(channels_last=True, fuse_qkv=True, compile_mode="max-autotune-no-cudagraphs", compile_vae=True, prefetch=1,
                attention_backend="cudnn"),
    "cpu": dict(channels_last=False, fuse_qkv=False, compile_mode=None, compile_vae=False, prefetch=1, attention_backend=None),
}


def clip_tokenizer(max_length: int = 77):
    """A CLIP BPE tokenizer over single byte-level characters (no merges), built offline."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in sorted(ByteLevel.alphabet()) + [c + "</w>" for c in sorted(ByteLevel.alphabet())]:
        vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer(max_length: int):
    """A T5 Unigram tokenizer over lowercase letters, built offline."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("▁" + c, -3.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _build(make, device: str, dtype: torch.dtype):
    """Construct a module directly on `device` (fast random init there), cast it, freeze it."""
    with torch.device(device):
        module = make()
    return module.to(dtype=dtype).eval().requires_grad_(False)


def build_pipeline(family: str, scale: str, device: str, dtype: str, t5_tokens: int = 256, seed: int = 0):
    """A StableDiffusionPipeline (DDIM) or FluxPipeline with the family's architecture, random weights."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tiny = TINY if scale == "cpu" else {}
    dt = getattr(torch, dtype)
    if family == "sd2":
        text = {**SD2_TEXT, **tiny.get("sd2_text", {})}
        unet = {**SD2_UNET, **tiny.get("sd2_unet", {}), "cross_attention_dim": text["hidden_size"]}
        pipe = diffusers.StableDiffusionPipeline(
            vae=_build(lambda: diffusers.AutoencoderKL(**{**SD2_VAE, **tiny.get("sd2_vae", {})}), device, dt),
            text_encoder=_build(lambda: CLIPTextModel(CLIPTextConfig(**text)), device, dt),
            tokenizer=clip_tokenizer(),
            unet=_build(lambda: diffusers.UNet2DConditionModel(**unet), device, dt),
            scheduler=diffusers.DDIMScheduler(**SD2_SCHEDULER),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    elif family == "flux":
        clip = {**FLUX_CLIP, **tiny.get("flux_clip", {})}
        t5 = {**FLUX_T5, **tiny.get("flux_t5", {})}
        transformer = {**FLUX_TRANSFORMER, **tiny.get("flux_transformer", {}), "joint_attention_dim": t5["d_model"],
                       "pooled_projection_dim": clip["hidden_size"]}  # CLIPTextModel pools hidden states
        pipe = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
            vae=_build(lambda: diffusers.AutoencoderKL(**{**FLUX_VAE, **tiny.get("flux_vae", {})}), device, dt),
            text_encoder=_build(lambda: CLIPTextModel(CLIPTextConfig(**clip)), device, dt),
            tokenizer=clip_tokenizer(),
            text_encoder_2=_build(lambda: T5EncoderModel(T5Config(**t5)), device, dt),
            tokenizer_2=t5_tokenizer(t5_tokens),
            transformer=_build(lambda: diffusers.FluxTransformer2DModel(**transformer), device, dt),
        )
    else:
        raise SystemExit(f"unknown family {family!r}: use sd2 or flux")
    pipe.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return pipe


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _reset_peak(device: str) -> bool:
    """Start a new peak-memory window; False when this OS cannot reset the CPU peak (then it is the process's)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak resident set
        return True
    except OSError:
        return False


def _peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stock_batch(pipe, wl: Workload, prompts: list[str], seeds: list[int]) -> list:
    """The plain diffusers call (FLUX gets our T5 length so both paths compute the same images)."""
    extra = {"max_sequence_length": wl.t5_tokens} if wl.family == "flux" else {}
    return pipe(prompt=prompts, num_inference_steps=wl.steps, guidance_scale=wl.guidance, height=wl.resolution,
                width=wl.resolution, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pil",
                **extra).images


def run_stock(pipe, wl: Workload, prompts, seeds, warm_prompts, warm_seeds, device: str) -> tuple[dict, list[np.ndarray]]:
    b = wl.batch_size
    for i in range(0, len(warm_prompts), b):
        _stock_batch(pipe, wl, warm_prompts[i:i + b], warm_seeds[i:i + b])
    peak_reset = _reset_peak(device)
    start = time.perf_counter()
    images = []
    for i in range(0, len(prompts), b):
        images += _stock_batch(pipe, wl, prompts[i:i + b], seeds[i:i + b])
    _sync(device)
    seconds = time.perf_counter() - start
    arrays = [np.asarray(img.convert("RGB")) for img in images]
    return {"images": len(arrays), "seconds": seconds, "img_per_s": len(arrays) / seconds, "peak_memory_gib": _peak_gib(device),
            "peak_memory_reset": peak_reset}, arrays


def _write_shards(sampler, prompts, seeds, shard_size: int, folder: Path, prefix: str) -> tuple[int, list[Path]]:
    """The stage's loop (gmail.generation.sharded.generate_shards): one sampler call and one shard per range."""
    written, paths = 0, []
    for k, rng in enumerate(shard_ranges(len(prompts), shard_size)):
        metas = [{"id": f"{prefix}{i:06d}", "caption": prompts[i], "index": i, "seed": seeds[i]} for i in rng]
        images = sampler([prompts[i] for i in rng], [seeds[i] for i in rng])
        path = folder / f"{prefix}{shard_name(k)}"
        written += write_shard(path, zip(metas, images, strict=True))
        paths.append(path)
    return written, paths


def run_ours(pipe, wl: Workload, prompts, seeds, warm_prompts, warm_seeds, device: str, speed: dict, shard_size: int,
             folder: Path, deterministic: bool = False) -> tuple[dict, list[Path]]:
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if deterministic:
        # What the stage's set_seed does: deterministic kernels, and uninitialised memory filled with NaN.
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _run_ours(pipe, wl, prompts, seeds, warm_prompts, warm_seeds, device, speed, shard_size, folder)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _run_ours(pipe, wl, prompts, seeds, warm_prompts, warm_seeds, device, speed, shard_size, folder):
    t0 = time.perf_counter()
    speed_up_pipeline(pipe, channels_last=speed["channels_last"], fuse_qkv=speed["fuse_qkv"], compile_mode=speed["compile_mode"],
                      compile_vae=speed["compile_vae"])
    sampler = pipeline_sampler(pipe, wl.steps, wl.guidance, wl.resolution, wl.batch_size, prefetch=speed["prefetch"],
                               attention_backend=speed["attention_backend"])
    # Warm-up batches go through the same path (compilation happens on the first one).
    _write_shards(sampler, warm_prompts, warm_seeds, wl.batch_size, folder, "warmup-")
    _sync(device)
    warmup_seconds = time.perf_counter() - t0
    peak_reset = _reset_peak(device)
    start = time.perf_counter()
    written, paths = _write_shards(sampler, prompts, seeds, shard_size, folder, "")
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images": written, "seconds": seconds, "img_per_s": written / seconds, "peak_memory_gib": _peak_gib(device),
            "peak_memory_reset": peak_reset, "warmup_seconds": warmup_seconds, "shards": len(paths),
            # PNG size tells whether random weights gave noise (~raw size), flat images (tiny) or something between.
            "kib_per_image": sum(p.stat().st_size for p in paths) / 1024 / max(written, 1)}, paths


def benchmark_family(wl: Workload, scale: str, device: str, speed: dict, shard_size: int | None, folder: Path,
                     deterministic: bool = False) -> dict:
    t0 = time.perf_counter()
    pipe = build_pipeline(wl.family, scale, device, wl.dtype, wl.t5_tokens)
    build_seconds = time.perf_counter() - t0
    denoiser = pipe.transformer if wl.family == "flux" else pipe.unet
    params_m = round(sum(p.numel() for p in denoiser.parameters()) / 1e6, 2)  # before fuse_qkv adds fused copies
    n, w = wl.batches * wl.batch_size, wl.warmup_batches * wl.batch_size
    prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    seeds = list(range(1000, 1000 + n))
    warm_prompts, warm_seeds = [CAPTIONS[i % len(CAPTIONS)] for i in range(w)], list(range(w))

    stock, stock_images = run_stock(pipe, wl, prompts, seeds, warm_prompts, warm_seeds, device)
    # Ours second: speed_up_pipeline changes the pipeline in place.
    ours, paths = run_ours(pipe, wl, prompts, seeds, warm_prompts, warm_seeds, device, speed, shard_size or n, folder,
                           deterministic)
    ours_images = [img for _, img in read_shards(paths)]
    diff = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(stock_images, ours_images)]
    return {
        "settings": {**asdict(wl), "denoiser_params_m": params_m,
                     "shard_size": shard_size or n, "build_seconds": build_seconds},
        "stock": stock,
        "ours": {**ours, "options": speed, "deterministic": deterministic},
        "ours_over_stock": ours["img_per_s"] / stock["img_per_s"],
        "same_count": len(stock_images) == len(ours_images) == ours["images"],
        "max_pixel_diff": int(max(d.max() for d in diff)) if diff else None,
        "mean_pixel_diff": float(np.mean([d.mean() for d in diff])) if diff else None,
        "stock_pixel_std": float(np.std(np.stack(stock_images))) if stock_images else None,  # ~0 would mean blank images
    }


def print_table(result: dict) -> None:
    print(f"device: {result['device']}  (scale {result['scale']}, torch {result['torch']}, diffusers {result['diffusers']})")
    print(f"{'family':<7}{'path':<7}{'images':>7}{'seconds':>10}{'img/s':>9}{'peak GiB':>10}")
    for family in result["families"]:
        r = result[family]
        for path in ("stock", "ours"):
            p = r[path]
            print(f"{family:<7}{path:<7}{p['images']:>7}{p['seconds']:>10.2f}{p['img_per_s']:>9.3f}{p['peak_memory_gib']:>10.2f}")
        print(f"{family}: ours/stock {r['ours_over_stock']:.2f}x, max pixel diff {r['max_pixel_diff']}, "
              f"mean {r['mean_pixel_diff']:.4f}; ours warm-up (incl. compile) {r['ours']['warmup_seconds']:.1f} s")
    print(f"peak memory: {result['peak_memory_kind']}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(WORKLOADS), help="gpu: paper setting (default on CUDA); cpu: tiny models")
    ap.add_argument("--device", help="default: cuda for --scale gpu, cpu for --scale cpu")
    ap.add_argument("--families", default="sd2,flux", help="comma-separated: sd2, flux")
    ap.add_argument("--batch-size", type=int, help="images per call, both paths (default per scale and family)")
    ap.add_argument("--batches", type=int, help="timed batches per path")
    ap.add_argument("--warmup-batches", type=int, help="untimed batches per path first")
    ap.add_argument("--steps", type=int, help="sampler steps (default: SD2 50 / FLUX 4 at gpu scale)")
    ap.add_argument("--sd2-resolution", type=int)
    ap.add_argument("--flux-resolution", type=int, help="FLUX pixels (gpu default 512; the paper setting may be 1024)")
    ap.add_argument("--shard-size", type=int, help="images per shard for ours (default: all timed images in one)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--fuse-qkv", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--compile-mode", choices=["none", *COMPILE_MODES], help="torch.compile of the denoiser (cpu default none)")
    ap.add_argument("--compile-vae", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--prefetch", type=int, help="batches ours samples ahead in a background thread (0: off)")
    ap.add_argument("--attention-backend", choices=["default", *ATTENTION_BACKENDS], help="preferred SDPA kernel for ours")
    ap.add_argument("--deterministic", action="store_true",
                    help="run ours under torch.use_deterministic_algorithms(True), as the generate stage's set_seed does")
    ap.add_argument("--threads", type=int, help="torch CPU threads (cpu default 1: on a busy 2-core machine OpenMP threads "
                    "competing with other processes made timings vary 40x; one also leaves a core for ours' writer)")
    ap.add_argument("--out", default="stats/benchmarks/generate_throughput.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import diffusers

    scale = args.scale or ("gpu" if torch.cuda.is_available() else "cpu")
    device = args.device or ("cuda" if scale == "gpu" else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device} but CUDA is not available: use --scale cpu")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as set_seed does; read when cuBLAS starts
    threads = args.threads or (1 if scale == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    # Building from configs and casting with .to() makes diffusers warn once per model; nothing is wrong.
    diffusers.utils.logging.set_verbosity_error()
    speed = dict(SPEED[scale])
    for key in ("channels_last", "fuse_qkv", "compile_vae", "prefetch"):
        if getattr(args, key) is not None:
            speed[key] = getattr(args, key)
    if args.compile_mode is not None:
        speed["compile_mode"] = None if args.compile_mode == "none" else args.compile_mode
    speed["compile_vae"] = bool(speed["compile_vae"] and speed["compile_mode"])  # it compiles with compile_mode
    if args.attention_backend is not None:
        speed["attention_backend"] = None if args.attention_backend == "default" else args.attention_backend

    result = {"scale": scale, "device": device_name(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak RSS (VmHWM)",
              "families": [f.strip() for f in args.families.split(",") if f.strip()]}
    for family in result["families"]:
        if family not in WORKLOADS[scale]:
            raise SystemExit(f"unknown family {family!r} in --families: use sd2, flux")
        wl = WORKLOADS[scale][family]
        overrides = {"batch_size": args.batch_size, "batches": args.batches, "warmup_batches": args.warmup_batches,
                     "steps": args.steps, "resolution": getattr(args, f"{family}_resolution")}
        wl = replace(wl, **{k: v for k, v in overrides.items() if v is not None})
        with tempfile.TemporaryDirectory(prefix=f"bench-{family}-") as tmp:
            result[family] = benchmark_family(wl, scale, device, speed, args.shard_size, Path(tmp), args.deterministic)
        if speed["compile_mode"]:
            torch._dynamo.reset()  # the next family's models would otherwise recompile against these graphs
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print_table(result)
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
