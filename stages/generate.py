"""Stage `generate`: `gen.per_real` images per real B image, one per caption, as webdataset shards.

Mini scale samples the committed stand-in generator (gen.scale=mini); paper scale loads
StableDiffusionPipeline / FluxPipeline with from_pretrained, or any diffusers text-to-image model
given as a Hub id pinned to a commit through AutoPipelineForText2Image (gen.scale=paper). Item i of the
manifest is seeded with seed + i, so it depends neither on batch size nor on how the work is
split. Run it under `accelerate launch` (params `launcher`) to split the shards over processes
or GPUs; an interrupted run resumes from its finished shards (gmail/generation/sharded.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import torch

from gmail.core.cli import offline, stage_parser
from gmail.core.config import check_param, get_paths, get_seed, load_params, pick_device, section, set_seed, torch_dtype
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json, write_jsonl
from gmail.core.launch import launch
from gmail.data.records import read_split
from gmail.data.shards import build_manifest, shard_name, shard_ranges
from gmail.generation.sharded import claim_scratch, collect_shards, generate_shards, scratch_key

SCALES = ("mini", "paper")
MAX_GUIDANCE = 50.0


@dataclass
class GenParams:
    model: str    # a family (sd2, flux) whose weights are in the folder `weights`, or a pinned Hub id org/name@<sha>
    weights: str  # the folder (a DVC dep) holding the family's model, or one subfolder per family (<weights>/<model>,
                  # mini: pretrain/models, so `-S gen.model=flux` alone switches family); not read for a Hub id
    scale: str
    per_real: int
    shard_size: int
    steps: int
    guidance: float
    resolution: int
    batch_size: int
    dtype: str
    device: str
    channels_last: bool
    fuse_qkv: bool
    compile_mode: str
    compile_vae: bool
    prefetch: int
    attention_backend: str

    @property
    def model_dir(self) -> str:
        """The folder the family's model loads from: `weights` itself when it holds a model, else its
        `<model>` subfolder when there is one (a folder of families)."""
        from pathlib import Path

        folder = Path(self.weights)
        holds_model = any((folder / name).is_file() for name in ("generator.json", "model_index.json"))
        return str(folder / self.model) if not holds_model and (folder / self.model).is_dir() else self.weights

    def validate(self, name):
        from gmail.generation.paper_pipelines import parse_model

        _, revision = parse_model(self.model, f"{name}.model")
        if self.scale not in SCALES:
            raise PipelineError(f"unknown {name}.scale {self.scale!r}: use one of {', '.join(SCALES)}")
        if revision is not None and self.scale == "mini":
            raise PipelineError(f"{name}.model {self.model!r} is a Hub id, which only paper scale loads: set {name}.scale: paper, "
                                f"or {name}.model to sd2 or flux")
        if revision is None:
            check_weights(self.model, self.model_dir, self.scale, name)
        if min(self.steps, self.batch_size, self.per_real, self.shard_size) < 1 or self.resolution < 0:
            raise PipelineError(f"{name}.steps, batch_size, per_real and shard_size must be positive and {name}.resolution >= 0: "
                                "fix params.yaml")
        from gmail.generation.samplers import TRAIN_TIMESTEPS, train_timesteps

        # A sampler takes at most its scheduler's training timesteps (DDIM raises past them, deep in
        # the first batch): read from a local model's scheduler config; a hub id's (SD2, FLUX) have 1000.
        limit = train_timesteps(self.model_dir) if revision is None else TRAIN_TIMESTEPS
        check_param(self.steps <= limit, f"{name}.steps", self.steps,
                    f"at most {limit}, its scheduler's training timesteps (typical: 10 mini, 50 SD2, 4 FLUX)")
        # Guidance scales in use run 1-15; far beyond, every pixel saturates (black or white images).
        check_param(0 <= self.guidance <= MAX_GUIDANCE, f"{name}.guidance", self.guidance, f"in [0, {MAX_GUIDANCE:g}] (params.yaml: 3; SD2's default: 7.5)")
        check_param(self.resolution <= 4096, f"{name}.resolution", self.resolution, "at most 4096 pixels (0 = the model's native size)")
        torch_dtype(self.dtype)
        from gmail.generation.paper_pipelines import ATTENTION_BACKENDS, COMPILE_MODES

        # "none", not "off": DVC's -S writes YAML 1.2, where a bare off stays a string; PyYAML reads it as False.
        if self.compile_mode not in ("none", *COMPILE_MODES) or self.attention_backend not in ("auto", *ATTENTION_BACKENDS):
            raise PipelineError(f"{name}.compile_mode must be none or one of {', '.join(COMPILE_MODES)}, and {name}.attention_backend "
                                f"auto or one of {', '.join(ATTENTION_BACKENDS)}: fix params.yaml")
        if self.prefetch < 0:
            raise PipelineError(f"{name}.prefetch must be 0 (off) or a number of batches: fix params.yaml")


# The class a family's diffusers folder (model_index.json `_class_name`) holds at paper scale.
PIPELINE_CLASSES = {"sd2": "StableDiffusionPipeline", "flux": "FluxPipeline"}


def check_weights(family: str, weights: str, scale: str, name: str = "gen") -> None:
    """PipelineError unless the folder `weights` holds a `family` generator: with two families and one
    weights folder, `-S gen.model=flux` alone would otherwise sample the SD2 weights under FLUX's name.
    A folder that cannot be read is left to the loader, which says what is missing."""
    import json
    from pathlib import Path

    folder = Path(weights)
    try:
        if scale == "mini":
            from gmail.generation.mini_diffusion import CONFIG_NAME

            found = json.loads((folder / CONFIG_NAME).read_text())["config"]["family"]
            expected = family
        else:
            found = json.loads((folder / "model_index.json").read_text())["_class_name"]
            expected = PIPELINE_CLASSES[family]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if found != expected:
        raise PipelineError(f"{name}.weights {weights!r} holds a {found} model but {name}.model is {family}: point {name}.weights at "
                            f"the {family} weights (e.g. dvc exp run -S {name}.model={family} -S {name}.weights=pretrain/models/{family})")


def load_sampler(p: GenParams, device: str):
    """`sampler(prompts, seeds)` for the configured generator, loaded once."""
    if p.scale == "mini":
        from gmail.generation.samplers import mini_sampler

        return mini_sampler(p.model_dir, p.steps, p.guidance, p.batch_size, device, torch_dtype(p.dtype), p.resolution)
    from gmail.generation.paper_pipelines import is_hub_id, paper_sampler

    # A pinned Hub id loads from the Hugging Face cache at its commit; a family from its folder.
    return paper_sampler(p.model, None if is_hub_id(p.model) else p.model_dir, p.steps, p.guidance, p.resolution or 512, p.batch_size, p.dtype, device,
                         channels_last=p.channels_last, fuse_qkv=p.fuse_qkv,
                         compile_mode=None if p.compile_mode == "none" else p.compile_mode, compile_vae=p.compile_vae,
                         prefetch=p.prefetch, attention_backend=None if p.attention_backend == "auto" else p.attention_backend)


def main(argv=None):
    from accelerate import PartialState

    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    # Deterministic mode also fills every new tensor with NaN, which costs GPU time and changes no
    # result of a program that never reads memory it did not write (diffusers' samplers do not).
    torch.utils.deterministic.fill_uninitialized_memory = False
    p = section(params.get("gen"), GenParams, "gen")
    paths = get_paths(params, "captions", "generated", "scratch", "metrics", "stats")
    offline(p.scale)  # mini: never the network; paper: as the environment says (offline unless it says otherwise)
    # One process per GPU under `accelerate launch`; a plain `python -m` run is a world of one.
    state = PartialState(cpu=pick_device(p.device) == "cpu")
    device = str(state.device) if state.device.type == "cuda" else pick_device(p.device)

    # 1. Manifest and resume state (main process), then every process generates its own shards.
    manifest = build_manifest(read_split(paths.captions / "B.jsonl"), p.per_real, seed)
    # gen.model holds a Hub id's revision, so the key changes with it; a family's folder is stamped.
    settings = {**{k: v for k, v in asdict(p).items() if k not in ("weights", "device")},
                "model_path": p.model_dir, "device_type": device.split(":")[0]}
    key = scratch_key(settings, manifest, p.model_dir)
    # The main process holds the scratch folder (a lock) for the whole run, so a concurrent run with
    # other params never deletes it; it is removed once the output is in place.
    with claim_scratch(paths.scratch, key, owner=state.is_main_process) as scratch:
        state.wait_for_everyone()
        sampler = load_sampler(p, device)
        start = time.time()
        written = generate_shards(manifest, p.shard_size, scratch, sampler, {"model": p.model, "steps": p.steps,
                                  "guidance": p.guidance}, state.process_index, state.num_processes)
        elapsed = time.time() - start
        state.wait_for_everyone()
        if not state.is_main_process:
            return

        # 2. Output: the shards plus manifest.jsonl (id, source_id, caption, index, seed, shard).
        ranges = shard_ranges(len(manifest), p.shard_size)
        shard_of = {i: shard_name(k) for k, r in enumerate(ranges) for i in r}
        with atomic_dir(paths.generated) as tmp:
            names = collect_shards(scratch, manifest, p.shard_size, tmp / "shards")
            write_jsonl(tmp / "manifest.jsonl", [{**it, "shard": f"shards/{shard_of[it['index']]}"} for it in manifest])

    # 3. Metrics hold results only; timings go to stats (they differ between identical runs).
    write_json(paths.metrics / "generate.json", {
        "count": len(manifest), "per_real": p.per_real, "shards": len(names), "model": p.model, "scale": p.scale,
        "steps": p.steps, "guidance": p.guidance, "resolution": p.resolution})
    write_json(paths.stats / "generate.json", {
        "images_per_s_main_process": round(sum(len(ranges[k]) for k in written) / max(elapsed, 1e-9), 3),
        "seconds": round(elapsed, 1), "processes": state.num_processes, "resumed_shards": len(ranges) - len(written)
        if state.num_processes == 1 else None, "device": device})
    print(f"generated {len(manifest)} images ({p.per_real} per real B image) in {len(names)} shards with {p.model} "
          f"-> {paths.generated}")


if __name__ == "__main__":
    sys.exit(launch(main, "stages.generate"))  # params `launcher`: one process, or one per GPU
