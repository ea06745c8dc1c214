"""CLIP + GMAIL for retrieval and zero-shot classification: CLIP's text tower fine-tuned
contrastively against fixed image embeddings of B (our reading of the paper's "CLIP + GMAIL").

A row (params.yaml `tune_text.rows`) names a captioner variant (`gmail.downstream.variants`):
its B image embeddings (`f_r(generated)`, `f_g(generated)`, `f_r(real)`, ...) stay fixed, as if
the image tower were frozen at them, and the text side (text encoder + CLIP's learnable
temperature) trains with CLIP's symmetric InfoNCE (`gmail.models.contrastive.clip_loss`), one of
an image's reference captions drawn per step. The row `clip` is the text tower as it comes.

Both scales share one interface, `tokenize(texts)` -> tensor and `encode_text(tokens)` ->
embeddings, which is also what CLIP_benchmark's `zero_shot_classifier` calls:

- mini: the committed mini CLIP's `MiniClipTextEncoder` (an MLP); its "tokens" are the frozen
  all-MiniLM-L6-v2 sentence embeddings (`gmail.models.text.encode_texts`), computed once.
- paper: the open_clip model's text tower (`model.encode_text` on `open_clip.get_tokenizer(name)`
  tokens); the visual tower is never called and never saved.

A tuned tower is saved per seed as `<dir>/text.safetensors` (the text-side tensors only) and
`<dir>/text.json` (what it was trained on).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.core.config import check_lr, check_param
from gmail.core.errors import PipelineError, check_loss
from gmail.eval.seeds import summarise_seeds
from gmail.models.contrastive import clip_loss
from gmail.models.text import warn_cut_captions

ROW_CLIP = "clip"  # the untuned text tower: always reported, never trained
WEIGHTS, INFO = "text.safetensors", "text.json"
VISUAL = "model.visual."  # an OpenClipTextTower's image tower: never trained, never saved


@dataclass
class TuneTextParams:
    """params.yaml `tune_text`: read by stage `tune_text@<row>` and, for the rows and seeds, by
    the evaluation stages."""

    rows: list[str]         # variants to tune on; `clip` (untuned) is always reported besides
    seeds: int              # towers per row, seeds seed .. seed+seeds-1
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    device: str

    def validate(self, name):
        if self.seeds < 1 or self.steps < 1 or self.batch_size < 2:
            raise PipelineError(f"{name}.seeds and steps must be positive and batch_size at least 2: fix params.yaml")
        if len(set(self.rows)) != len(self.rows):
            raise PipelineError(f"{name}.rows lists a row twice ({', '.join(self.rows)}): list each once")
        if ROW_CLIP in self.rows:
            raise PipelineError(f"{name}.rows holds {ROW_CLIP!r}, the untuned tower every evaluation reports anyway: drop it")
        check_lr(f"{name}.lr", self.lr)
        check_param(self.weight_decay >= 0, f"{name}.weight_decay", self.weight_decay, ">= 0")

    def seed_list(self, seed: int) -> list[int]:
        """The seeds of the tuned towers: `seed` .. `seed + seeds - 1`."""
        return list(range(seed, seed + self.seeds))


# --------------------------------------------------------------------------- towers


class MiniTextTower(nn.Module):
    """The mini CLIP's text side: MLP over frozen MiniLM sentence embeddings + logit scale."""

    scale = "mini"

    def __init__(self, text: nn.Module, logit_scale: torch.Tensor, minilm_device: str = "cpu"):
        super().__init__()
        self.text = text
        self.logit_scale = nn.Parameter(logit_scale.detach().clone())
        self.minilm_device = minilm_device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(N, 384) frozen MiniLM sentence embeddings: the mini text tower's input."""
        from gmail.models.text import encode_texts

        return torch.from_numpy(encode_texts(list(texts), self.minilm_device))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)


class OpenClipTextTower(nn.Module):
    """An open_clip CLIP used for its text side only: `encode_text` + `logit_scale`."""

    scale = "paper"

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        import open_clip

        self.model = model
        self._tokenizer = open_clip.get_tokenizer(name)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(N, context_length) BPE token ids (open_clip truncates longer texts, as CLIP does; one
        stderr warning counts the captions cut)."""
        texts = list(texts)
        limit = getattr(self._tokenizer, "context_length", None)
        if limit and hasattr(self._tokenizer, "encode"):  # open_clip's BPE tokenizer; its ids exclude start/end
            unique = set(texts)
            warn_cut_captions(texts, {t for t in unique if len(self._tokenizer.encode(t)) > limit - 2}, limit, "CLIP")
        return self._tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def tuned_state_dict(tower: nn.Module) -> dict[str, torch.Tensor]:
    """The text-side tensors of `tower` (text encoder, temperature, logit_bias if any): what a
    tuned tower's `text.safetensors` holds; an open_clip model's image tower is left out."""
    return {k: v.detach().cpu().contiguous() for k, v in tower.state_dict().items() if not k.startswith(VISUAL)}


def trainable_parameters(tower: nn.Module) -> list[nn.Parameter]:
    """Parameters fine-tuning updates: the text side; the image tower is frozen (and unused)."""
    params = []
    for name, p in tower.named_parameters():
        frozen = name.startswith(VISUAL)
        p.requires_grad_(not frozen)
        if not frozen:
            params.append(p)
    return params


def load_text_tower(scale: str, mini_path: str, name: str = "ViT-B-32", pretrained: str = "openai",
                    device: str = "cpu") -> nn.Module:
    """The pretrained CLIP's text tower (the `clip` row), in eval mode on `device`.

    mini: the text MLP and logit scale of the mini CLIP in `mini_path`. paper:
    `open_clip.create_model(name, pretrained=pretrained)` (a cached tag or a checkpoint file).
    """
    if scale == "mini":
        from gmail.models.mini_clip import load_mini_clip

        clip = load_mini_clip(mini_path, "cpu")
        tower = MiniTextTower(clip.text, clip.logit_scale, device)
    elif scale == "paper":
        import open_clip

        try:
            model = open_clip.create_model(name, pretrained=pretrained or None, device="cpu")
        except RuntimeError as exc:
            raise PipelineError(f"cannot load open_clip {name!r} with pretrained={pretrained!r} ({str(exc).splitlines()[0][:120]}): "
                                "use a cached tag or a local checkpoint file") from exc
        tower = OpenClipTextTower(model, name)
    else:
        raise PipelineError(f"unknown encoder.scale {scale!r}: use mini or paper")
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower.to(device).eval()


# --------------------------------------------------------------------------- training


@dataclass
class CaptionTokens:
    """Every reference caption of N images, tokenized once: rows `starts[i] .. starts[i] + counts[i]`
    of `tokens` belong to image i (COCO images have 5-7 captions, so no fixed K)."""

    tokens: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor


def tokenize_captions(tower: nn.Module, caption_lists: list[list[str]]) -> CaptionTokens:
    """Tokenize every caption of every image once (mini: one MiniLM pass over the distinct texts)."""
    if not caption_lists or any(not caps for caps in caption_lists):
        raise PipelineError("every training image needs at least one caption: check the captions file")
    counts = torch.tensor([len(c) for c in caption_lists])
    starts = torch.cumsum(counts, 0) - counts
    return CaptionTokens(tower.tokenize([c for caps in caption_lists for c in caps]), starts, counts)


def tune_text_tower(tower: nn.Module, image_embeddings: torch.Tensor, captions: CaptionTokens, steps: int,
                    batch_size: int, lr: float, weight_decay: float, seed: int, device: str = "cpu",
                    rank: int = 0, world: int = 1) -> list[float]:
    """Fine-tune `tower` in place with CLIP's symmetric InfoNCE against fixed image embeddings.

    Each step draws `batch_size` images without replacement (seeded) and one of each image's
    captions; AdamW with cosine annealing and gradient clipping at 1, as the mini CLIP was
    trained. Returns the loss per step; a NaN or infinite loss is a PipelineError.

    Several processes (`rank` of `world`, see `gmail.downstream.ddp`): every process draws the
    same batch and encodes its share of the captions; the text embeddings are all-gathered (each
    process's own keep their gradient) and every process computes the whole batch's loss,
    multiplied by `world`, so DistributedDataParallel's gradient average is the one-process
    gradient (the temperature, which every process sees whole, enters at 1/`world` weight).
    """
    n = len(image_embeddings)
    if n != len(captions.counts):
        raise PipelineError(f"{n} image embeddings for {len(captions.counts)} caption lists: they must pair one to one")
    if n < 2:
        raise PipelineError("contrastive tuning needs at least 2 training images: check the variant's training set")
    # 1. Fixed image side, trainable text side.
    z_img = F.normalize(image_embeddings.float(), dim=-1).to(device)
    tower.to(device)
    params = trainable_parameters(tower)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    encoder = wrap(_EncodeText(tower), world)  # DistributedDataParallel with several processes

    # 2. Loop: a random batch of images, one random reference caption each.
    tower.train()
    losses = []
    for step in range(1, steps + 1):
        idx = torch.randperm(n, generator=gen)[:batch_size]
        pick = captions.starts[idx] + (torch.rand(len(idx), generator=gen) * captions.counts[idx]).long()
        if world > 1:
            loss = _shared_loss(encoder, captions.tokens[pick].to(device), z_img[idx.to(device)], tower.logit_scale,
                                rank, world)
            opt.zero_grad(set_to_none=True)
            (loss * world).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(check_loss(loss.item(), "text tuning", step, f"lower tune_text.lr (now {lr:g})"))
            continue
        z_txt = tower.encode_text(captions.tokens[pick].to(device))
        if z_txt.shape[-1] != z_img.shape[-1]:
            raise PipelineError(f"the text tower embeds into {z_txt.shape[-1]} dims but the image embeddings have "
                                f"{z_img.shape[-1]}: tune with the encoder params that computed the embeddings")
        loss = clip_loss(z_img[idx.to(device)], z_txt, tower.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(check_loss(loss.item(), "text tuning", step, f"lower tune_text.lr (now {lr:g})"))
    tower.eval()
    return losses


# gmail.downstream.ddp's scheme, its two helpers repeated here: the evaluation stages import this
# module, and importing ddp would make every one of them depend on it.
def share(n: int, rank: int, size: int) -> torch.Tensor:
    """Indices of this rank's rows of an n-row batch (rank, rank + size, ...)."""
    return torch.arange(rank, n, size)


def wrap(model: nn.Module, size: int) -> nn.Module:
    """`model` in DistributedDataParallel (accelerate's prepare_model) with several processes, else itself."""
    if size == 1:
        return model
    from accelerate import Accelerator

    return Accelerator(cpu=next(model.parameters()).device.type == "cpu").prepare_model(model)


class _EncodeText(nn.Module):
    """`tower.encode_text` as a module's forward, what DistributedDataParallel wraps."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.encode_text(tokens)


def _shared_loss(encoder: nn.Module, tokens: torch.Tensor, z_img: torch.Tensor, logit_scale: torch.Tensor,
                 rank: int, world: int) -> torch.Tensor:
    """The batch's CLIP loss on one of `world` processes: this rank encodes rows rank::world, the
    others' text embeddings come from all_gather (no gradient), and the temperature's gradient is
    scaled by 1/world, since every rank computes it whole."""
    mine = share(len(tokens), rank, world).to(tokens.device)
    z_mine = encoder(tokens[mine])
    if z_mine.shape[-1] != z_img.shape[-1]:
        raise PipelineError(f"the text tower embeds into {z_mine.shape[-1]} dims but the image embeddings have "
                            f"{z_img.shape[-1]}: tune with the encoder params that computed the embeddings")
    parts = [torch.zeros(len(share(len(tokens), r, world)), z_mine.shape[-1], dtype=z_mine.dtype, device=z_mine.device)
             for r in range(world)]
    torch.distributed.all_gather(parts, z_mine.detach().contiguous())
    parts[rank] = z_mine
    z_txt = torch.empty(len(tokens), z_mine.shape[-1], dtype=z_mine.dtype, device=z_mine.device)
    z_txt = z_txt.index_copy(0, torch.cat([share(len(tokens), r, world) for r in range(world)]).to(tokens.device),
                             torch.cat(parts))
    scale = logit_scale / world + (logit_scale * (1 - 1 / world)).detach()  # same value, 1/world of the gradient
    return clip_loss(z_img, z_txt, scale)


@torch.no_grad()
def encode_tokens(tower: nn.Module, tokens: torch.Tensor, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """L2-normalised text embeddings of pre-tokenized texts, on the CPU."""
    tower.eval()
    out = [F.normalize(tower.encode_text(tokens[i:i + batch_size].to(device)).float(), dim=-1).cpu()
           for i in range(0, len(tokens), batch_size)]
    return torch.cat(out)


# --------------------------------------------------------------------------- saving, loading


def save_text_tower(tower: nn.Module, directory: str | Path, info: dict) -> None:
    """Write `text.safetensors` (text-side tensors) and `text.json` (`info` + scale) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tuned_state_dict(tower), str(directory / WEIGHTS))
    (directory / INFO).write_text(json.dumps({**info, "scale": tower.scale}, indent=2, sort_keys=True) + "\n")


def tuned_tower_dirs(root: str | Path, row: str, seeds: list[int]) -> list[Path]:
    """`<root>/<row>/seed<k>` for each seed, checked to hold a saved tower (a PipelineError otherwise)."""
    dirs = [Path(root) / row / f"seed{s}" for s in seeds]
    for d in dirs:
        missing = [f for f in (WEIGHTS, INFO) if not (d / f).is_file()]
        if missing:
            raise PipelineError(f"tuned text tower {d} lacks {missing[0]}: run `dvc repro tune_text@{row}` "
                                f"(or python -m stages.tune_text --row {row})")
    return dirs


def load_tuned_tower(base: nn.Module, directory: str | Path, device: str = "cpu") -> nn.Module:
    """A copy of `base` with the tuned text-side tensors of `directory` loaded, in eval mode."""
    from safetensors.torch import load_file

    d = Path(directory)
    for f in (WEIGHTS, INFO):
        if not (d / f).is_file():
            raise PipelineError(f"tuned text tower {d} lacks {f}: rerun the tune_text stage that writes it")
    info = json.loads((d / INFO).read_text())
    if info.get("scale") != base.scale:
        raise PipelineError(f"tuned text tower {d} was trained at scale {info.get('scale')!r}, not {base.scale!r}: "
                            "rerun tune_text with the current encoder params")
    state = load_file(str(d / WEIGHTS))
    expected = {k: v.shape for k, v in tuned_state_dict(base).items()}
    if {k: v.shape for k, v in state.items()} != expected:
        raise PipelineError(f"{d / WEIGHTS} does not match the text tower of encoder {base.scale!r}: rerun tune_text")
    tower = copy.deepcopy(base)
    tower.load_state_dict(state, strict=False)
    return tower.to(device).eval()


# --------------------------------------------------------------------------- rows


def check_rows(rows: list[str], variants: dict) -> None:
    """Every tuned row must name a variant of params.yaml `variants`; `clip` is never tuned."""
    names = ", ".join(variants) or "(none defined)"
    for row in rows:
        if row == ROW_CLIP:
            raise PipelineError(f"row {ROW_CLIP!r} is the untuned text tower, evaluated as it is: "
                                f"tune one of the variants {names}")
        if row not in variants:
            raise PipelineError(f"unknown row {row!r}: a tuned row names a variant of params.yaml `variants` ({names})")


def row_tower_dirs(root: str | Path, rows: list[str], seeds: list[int]) -> dict[str, list[Path | None]]:
    """{row: tower folders}: `clip` -> [None] (the base tower), each tuned row -> one folder per
    seed, all checked up front so a missing tower fails before any output is written."""
    out: dict[str, list[Path | None]] = {ROW_CLIP: [None]}
    for row in rows:
        out[row] = tuned_tower_dirs(root, row, seeds)
    return out


def evaluate_rows(base: nn.Module, tower_dirs: dict[str, list[Path | None]], score, device: str = "cpu") -> dict:
    """{row: {metric: {"mean", "std"}}}: `score(tower)` -> {metric: value} for every seed's tower
    of every row (loaded one at a time: paper-scale text towers are large), summarised over seeds."""
    out = {}
    for row, dirs in tower_dirs.items():
        per_seed = []
        for d in dirs:
            tower = base if d is None else load_tuned_tower(base, d, device)
            per_seed.append(score(tower))
        out[row] = summarise_seeds(per_seed)
    return out
