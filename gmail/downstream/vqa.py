"""VQA answer classifier on embeddings (paper T10/T15 at mini scale): an MLP over the
concatenation of an image embedding and the MiniLM embedding of the question, softmax over
the answers. Without the image (`image_dim=0`) the same MLP is the question-only baseline.

The paper fine-tunes LLaVA / LLaMA-3 with a projection on ScienceQA and MMMU; no package
ships such weights, and easy-vqa's 13-answer questions are a classification task, so the
mini benchmark trains this classifier instead. The image embedding is its only route to the
answer; the question tells it what is asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gmail.core.errors import PipelineError, check_loss


@dataclass
class VqaSet:
    """One row per question: its image's embedding (None for question-only), the question's
    embedding and the index of its answer."""

    images: torch.Tensor | None   # (Q, D) float
    questions: torch.Tensor       # (Q, 384) float
    answers: torch.Tensor         # (Q,) long

    def __post_init__(self):
        n = len(self.questions)
        if len(self.answers) != n or (self.images is not None and len(self.images) != n):
            raise PipelineError(f"VQA set of {n} questions has {len(self.answers)} answers and "
                                f"{'no' if self.images is None else len(self.images)} image rows: pass one of each per question")

    def __len__(self) -> int:
        return len(self.questions)


class VqaClassifier(nn.Module):
    """MLP: [image embedding ; question embedding] -> `layers` x (Linear, GELU) -> answer logits."""

    def __init__(self, image_dim: int, question_dim: int, n_answers: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        if image_dim < 0 or question_dim < 1 or n_answers < 2 or hidden < 1 or layers < 1:
            raise PipelineError(f"VQA classifier sizes image_dim={image_dim}, question_dim={question_dim}, "
                                f"n_answers={n_answers}, hidden={hidden}, layers={layers} must be positive: fix params.yaml")
        self.image_dim, self.question_dim = image_dim, question_dim
        blocks, width = [], image_dim + question_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, n_answers))

    def forward(self, images: torch.Tensor | None, questions: torch.Tensor) -> torch.Tensor:
        x = questions if self.image_dim == 0 else torch.cat([images, questions], dim=1)
        return self.net(x)


def build_vqa_classifier(image_dim: int, question_dim: int, n_answers: int, hidden: int = 128, layers: int = 2,
                         seed: int = 0) -> VqaClassifier:
    """A freshly initialised classifier whose weights depend only on the sizes and `seed`
    (`image_dim=0`: the question-only baseline)."""
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global generator
        torch.manual_seed(seed)
        return VqaClassifier(image_dim, question_dim, n_answers, hidden, layers)


def _check(model: VqaClassifier, data: VqaSet, what: str) -> None:
    if len(data) == 0:
        raise PipelineError(f"no {what} questions: give the classifier at least one")
    if (data.images is None) != (model.image_dim == 0):
        raise PipelineError(f"{what} questions {'lack' if data.images is None else 'carry'} image embeddings but the "
                            f"classifier is {'question-only' if model.image_dim == 0 else 'image + question'}")
    if data.images is not None and data.images.shape[1] != model.image_dim:
        raise PipelineError(f"{what} image embeddings are {data.images.shape[1]}-d but the classifier expects "
                            f"{model.image_dim}-d: build it for this encoder")
    if data.questions.shape[1] != model.question_dim:
        raise PipelineError(f"{what} question embeddings are {data.questions.shape[1]}-d, not {model.question_dim}-d")


@torch.no_grad()
def answer_logits(model: VqaClassifier, data: VqaSet, batch_size: int = 4096, device: str = "cpu") -> torch.Tensor:
    """(Q, n_answers) logits on CPU, in eval mode."""
    _check(model, data, "scored")
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(data), batch_size):
        images = None if data.images is None else data.images[i:i + batch_size].float().to(device)
        out.append(model(images, data.questions[i:i + batch_size].float().to(device)).cpu())
    model.train(was_training)
    return torch.cat(out)


def predict_answers(model: VqaClassifier, data: VqaSet, device: str = "cpu") -> torch.Tensor:
    """(Q,) index of the most likely answer for each question."""
    return answer_logits(model, data, device=device).argmax(dim=1)


def train_vqa(model: VqaClassifier, data: VqaSet, steps: int, batch_size: int = 128, lr: float = 3e-3,
              weight_decay: float = 0.01, seed: int = 0, device: str = "cpu") -> list[float]:
    """Train the classifier for exactly `steps` steps with cross-entropy on (image, question) ->
    answer; AdamW, learning rate decaying from `lr` to 0 on a cosine, batches of `batch_size`
    questions drawn without replacement at each step. Returns the loss of every step; a NaN or
    infinite loss is a PipelineError.
    """
    # 1. Check inputs.
    if steps < 1 or batch_size < 1:
        raise PipelineError(f"steps={steps} and batch_size={batch_size} must be positive: fix params.yaml")
    _check(model, data, "training")
    images = None if data.images is None else data.images.float().to(device)
    questions, answers = data.questions.float().to(device), data.answers.to(device)

    # 2. Batches come from a seeded generator; the model has no dropout, so nothing else draws.
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # Decaying to 0 makes the final weights, which are the ones kept, a settled point rather than one noisy step.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    # 3. Training loop.
    losses = []
    for step in range(1, steps + 1):
        idx = torch.randperm(len(data), generator=gen)[:batch_size].to(device)
        loss = nn.functional.cross_entropy(model(None if images is None else images[idx], questions[idx]), answers[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(check_loss(loss.item(), "VQA classifier", step, f"lower eval_vqa.lr (now {lr:g})"))
    model.eval()
    return losses


def vqa_set(rows: list[dict], image_ids: list[str], image_embeddings: torch.Tensor | None,
            question_embeddings: dict[str, torch.Tensor], answers: tuple[str, ...]) -> VqaSet:
    """The `VqaSet` of question rows `{"image_id", "question", "answer"}`: each question paired
    with the row of its image in `image_embeddings` (ordered as `image_ids`; None for the
    question-only baseline), its embedding from `question_embeddings` (text -> vector) and the
    index of its answer in `answers`. A question about an image not in `image_ids` is a PipelineError."""
    row_of = {image_id: i for i, image_id in enumerate(image_ids)}
    if image_embeddings is not None and len(image_embeddings) != len(image_ids):
        raise PipelineError(f"{len(image_embeddings)} image embeddings for {len(image_ids)} images: pass one per image")
    index = {a: i for i, a in enumerate(answers)}
    missing = next((r for r in rows if r["image_id"] not in row_of), None)
    if missing is not None:
        raise PipelineError(f"VQA question {missing['question']!r} is about image {missing['image_id']!r}, which has no "
                            "embedding here: select the questions of the embedded images")
    unknown = next((r for r in rows if r["answer"] not in index), None)
    if unknown is not None:
        raise PipelineError(f"unknown VQA answer {unknown['answer']!r}: answers must be one of {', '.join(answers)}")
    images = None
    if image_embeddings is not None:
        images = image_embeddings[torch.tensor([row_of[r["image_id"]] for r in rows], dtype=torch.long)]
    questions = torch.stack([question_embeddings[r["question"]] for r in rows]) if rows else torch.zeros(0, 0)
    return VqaSet(images, questions, torch.tensor([index[r["answer"]] for r in rows], dtype=torch.long))
