import pytest
import torch
import torch.nn as nn

from gmail.align.lora import add_lora
from gmail.align.loss import gmail_loss, paired_cosine
from gmail.align.params import parse_rank
from gmail.core.errors import PipelineError


def test_loss_is_low_for_matched_pairs_and_high_for_shuffled():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    matched = gmail_loss(z, z)
    shuffled = gmail_loss(z, z[torch.randperm(16, generator=g)])
    assert matched < 0.1 < shuffled


def test_loss_is_one_directional():
    # Generated rows all close to real row 0: generated->real InfoNCE only asks each generated
    # row to pick its own real row, so it differs from the real->generated direction.
    g = torch.Generator().manual_seed(1)
    real = torch.randn(8, 16, generator=g)
    gen = real[0].expand(8, 16) + 0.01 * torch.randn(8, 16, generator=g)
    assert not torch.isclose(gmail_loss(gen, real), gmail_loss(real, gen))


def test_loss_matches_hand_computation_with_tau():
    z_gen = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_real = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    cos = torch.tensor([[1.0, 2 ** -0.5], [0.0, 2 ** -0.5]])
    expected = -(torch.log_softmax(cos / 0.07, dim=1).diagonal()).mean()
    assert torch.isclose(gmail_loss(z_gen, z_real, tau=0.07), expected, atol=1e-5)


def test_mismatched_pair_counts_are_an_error():
    with pytest.raises(PipelineError, match="pairs"):
        gmail_loss(torch.randn(4, 8), torch.randn(5, 8))


@pytest.mark.parametrize("rank", [0, -1, 2.5, "four", True])
def test_bad_ranks_are_rejected(rank):
    with pytest.raises(PipelineError, match="rank"):
        parse_rank(rank)


def test_good_ranks():
    assert parse_rank(4) == 4 and parse_rank("full") == "full"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_pw = nn.Conv2d(3, 8, 1)
        self.proj = nn.Linear(8, 4)

    def forward(self, x):
        return self.proj(self.conv_pw(x).mean((2, 3)))


def test_lora_copy_starts_equal_trains_only_adapters_and_leaves_original_alone():
    torch.manual_seed(0)
    f_r = Tiny()
    before = {k: v.clone() for k, v in f_r.state_dict().items()}
    f_g = add_lora(f_r, rank=2, target_modules=r".*(conv_pw|proj)$")
    x = torch.randn(5, 3, 4, 4)
    assert torch.allclose(f_g(x), f_r(x))  # LoRA B starts at zero
    trainable = [n for n, p in f_g.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.SGD([p for p in f_g.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        gmail_loss(f_g(x), f_r(x).detach()[torch.arange(5).flip(0)]).backward()
        opt.step()
    assert not torch.allclose(f_g(x), f_r(x))
    assert all(torch.equal(before[k], v) for k, v in f_r.state_dict().items())


def test_full_rank_copy_trains_everything():
    f_g = add_lora(Tiny(), rank="full", target_modules="unused")
    assert all(p.requires_grad for p in f_g.parameters())


def test_paired_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert paired_cosine(a, a) == pytest.approx(1.0)
    assert paired_cosine(a, -a) == pytest.approx(-1.0)


def test_twin_columns_are_not_negatives():
    """Two rows of a batch with the same real image (groups): neither counts as the other's negative."""
    g = torch.Generator().manual_seed(1)
    z_gen, z_real = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    groups = torch.tensor([0, 1, 1, 2])
    masked = gmail_loss(z_gen, z_real, groups=groups, reduction="none")
    logits = torch.nn.functional.normalize(z_gen, dim=-1) @ torch.nn.functional.normalize(z_real, dim=-1).t() / 0.07
    keep = {0: [0, 1, 2, 3], 1: [0, 1, 3], 2: [0, 2, 3], 3: [0, 1, 2, 3]}
    expected = torch.stack([-(logits[i, i] - torch.logsumexp(logits[i, keep[i]], 0)) for i in range(4)])
    assert torch.allclose(masked, expected, atol=1e-5)
    assert not torch.allclose(masked, gmail_loss(z_gen, z_real, reduction="none"))  # row 1 and 2 differ unmasked


def test_a_share_of_rows_scored_against_the_whole_batch_sums_to_the_batch_loss():
    """What each DDP process computes (its rows, every real column) adds up to the one-process loss."""
    g = torch.Generator().manual_seed(2)
    z_gen, z_real, groups = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.tensor([0, 1, 2, 0, 3, 4])
    whole = gmail_loss(z_gen, z_real, groups=groups)
    parts = sum(gmail_loss(z_gen[r::2], z_real, targets=torch.arange(r, 6, 2), groups=groups, reduction="sum") for r in (0, 1))
    assert torch.isclose(parts / 6, whole, atol=1e-6)


def test_draw_batch_takes_distinct_real_images_one_row_each():
    from gmail.align.train import draw_batch

    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        idx = draw_batch(groups, 3, g)
        assert len(idx) == 3 and len(set(groups[idx].tolist())) == 3
        seen.update(idx.tolist())
    assert seen == set(range(12))  # every generated image of every real image gets drawn
    assert len(draw_batch(groups, 10, g)) == 4  # at most one row per real image
    assert torch.equal(draw_batch(groups, 3, torch.Generator().manual_seed(5)), draw_batch(groups, 3, torch.Generator().manual_seed(5)))


def test_training_stops_on_a_non_finite_loss():
    from gmail.align.train import train_alignment

    g = torch.Generator().manual_seed(0)
    generated, z_real = torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)
    z_real[2] = float("nan")  # one bad real embedding poisons the batch loss
    f_g = nn.Linear(8, 4)
    with pytest.raises(PipelineError, match=r"^alignment loss became nan at step 1: lower align\.lr \(now 0\.001\) or check the inputs$"):
        train_alignment(f_g, generated, z_real, steps=3, batch_size=6, lr=1e-3, progress=False)
