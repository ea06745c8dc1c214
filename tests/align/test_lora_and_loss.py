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
