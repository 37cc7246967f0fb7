"""The frozen-CLIP branch (RoIAlign on C5 + CLIP's attention pool) and the released fusion rule."""

from __future__ import annotations

import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d
from torchvision.ops import roi_align

from ovsam_ros.model.clip2sam import RoIInputError
from ovsam_ros.model.clip_branch import ClipBranch
from ovsam_ros.model.fusion import FusionInputError, fuse, mask_is_valid


def _attention_pool_by_hand(crops: torch.Tensor, pool: AttentionPool2d) -> torch.Tensor:
    """CLIP's attention pool written out: mean token first, positional embedding, one multi-head
    attention whose query is the mean token, output projection."""
    x = crops.flatten(2).transpose(1, 2)  # [N, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.positional_embedding
    n, length, c = x.shape
    heads = pool.num_heads
    q = (x[:, :1] @ pool.q_proj.weight.T + pool.q_proj.bias).view(n, 1, heads, -1).transpose(1, 2)
    k = (x @ pool.k_proj.weight.T + pool.k_proj.bias).view(n, length, heads, -1).transpose(1, 2)
    v = (x @ pool.v_proj.weight.T + pool.v_proj.bias).view(n, length, heads, -1).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(n, c)
    return out @ pool.c_proj.weight.T + pool.c_proj.bias


def test_clip_branch_is_roialign_12x12_on_c5_then_clips_attention_pool():
    torch.manual_seed(0)
    pool = AttentionPool2d(12, 3072, 48, 768).eval()  # RN50x16's pool
    branch = ClipBranch(pool).eval()
    assert branch.roi_size == 12
    c5 = torch.randn(1, 3072, 22, 32)  # a 704 x 1024 input
    boxes = torch.tensor([[10.0, 20.0, 300.0, 500.0], [512.0, 100.0, 1023.0, 700.0], [0.0, 0.0, 32.0, 32.0]])
    with torch.no_grad():
        got = branch(c5, boxes)
        crops = roi_align(c5, torch.cat([torch.zeros(3, 1), boxes], 1), 12, spatial_scale=1 / 32,
                          sampling_ratio=0, aligned=True)
        assert torch.equal(got, pool(crops))  # open_clip's own module on torchvision's crops
        want = _attention_pool_by_hand(crops, pool)
    assert got.shape == (3, 768)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_clip_branch_rejects_batches_and_non_square_pools():
    pool = AttentionPool2d(4, 32, 4, 16)
    with pytest.raises(RoIInputError, match="one image"):
        ClipBranch(pool)(torch.randn(2, 32, 8, 8), torch.zeros(1, 4))
    with pytest.raises(RoIInputError, match=r"\[N, 4\]"):
        ClipBranch(pool)(torch.randn(1, 32, 8, 8), torch.zeros(1, 5))
    pool.positional_embedding = torch.nn.Parameter(torch.zeros(12, 32))
    with pytest.raises(ValueError, match="square"):
        ClipBranch(pool)


def _released_fusion(head, clip, valid, base_mask):
    """The released formula, literally: powers, product, log, 0/1 masks; then softmax."""
    q, c = head.softmax(-1), clip.softmax(-1)
    seen = torch.cat([base_mask.float(), torch.ones(1)]) if base_mask is not None else torch.eye(
        head.shape[1])[-1]
    v = valid.float()[:, None]
    alpha, beta = 0.1 * v, 0.9 * v
    fused = (q ** (1 - alpha) * c ** alpha).log() * seen + (q ** (1 - beta) * c ** beta).log() * (1 - seen)
    return fused.softmax(-1)


@pytest.mark.parametrize("with_base", [True, False])
def test_fusion_equals_the_released_formula(with_base):
    gen = torch.Generator().manual_seed(1)
    head = torch.randn(4, 6, generator=gen) * 3
    clip = torch.randn(4, 6, generator=gen) * 3
    valid = torch.tensor([True, False, True, True])
    base = torch.tensor([True, True, False, True, False]) if with_base else None
    got = fuse(head, clip, valid, base)
    assert (got - _released_fusion(head, clip, valid, base)).abs().max().item() <= 1e-6
    # The empty-mask fallback: the head alone.
    assert (got[1] - head[1].softmax(-1)).abs().max().item() <= 1e-6


def test_fusion_lets_clip_name_a_novel_class_and_stays_finite_on_underflow():
    head = torch.tensor([[50.0, 0.0, 0.0, 10.0]])  # head: base class 0
    clip = torch.tensor([[0.0, 0.0, 200.0, 0.0]])  # CLIP: novel class 2, so sure that c underflows to 0
    base = torch.tensor([True, True, False])
    probs = fuse(head, clip, torch.tensor([True]), base)
    assert torch.isfinite(probs).all()
    assert _released_fusion(head, clip, torch.tensor([True]), base).isnan().any()  # log(0) * 0
    assert probs[0, :-1].argmax().item() == 2
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    alone = fuse(head, clip, torch.tensor([False]), base)
    assert alone[0, :-1].argmax().item() == 0


def test_mask_validity_at_the_clip_grid():
    logits = torch.full((3, 256, 256), -1.0)
    logits[0, 3, 3] = 10.0  # sits under the first 32x32 sample (rows/cols 3..4): kept
    logits[1, 0, 0] = 10.0  # the corner cell is never sampled when shrinking by 8: dropped
    assert mask_is_valid(logits, (32, 32)).tolist() == [True, False, False]


def test_fusion_rejects_mismatched_inputs():
    with pytest.raises(FusionInputError, match="C \\+ 1"):
        fuse(torch.zeros(2, 5), torch.zeros(2, 6), torch.ones(2, dtype=torch.bool))
    with pytest.raises(FusionInputError, match="valid"):
        fuse(torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(3, dtype=torch.bool))
    with pytest.raises(FusionInputError, match="base_mask"):
        fuse(torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(2, dtype=torch.bool),
             torch.ones(5, dtype=torch.bool))
