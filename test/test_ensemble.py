"""The frozen-CLIP branch (RoIAlign on C5 + CLIP's attention pool) and the released fusion rule."""

from __future__ import annotations

import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d
from torchvision.ops import roi_align

from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.model.classifier import LOGIT_SCALE
from ovsam_ros.model.clip2sam import RoIInputError
from ovsam_ros.model.clip_branch import ClipBranch
from ovsam_ros.model.fusion import EXCLUDED_SCORE, FusionInputError, fuse_log_scores, mask_is_valid
from ovsam_ros.model.ovsam import OVSAMRecognizer


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
        full = pool(crops)  # open_clip's own module (all 145 query rows) on torchvision's crops
        want = _attention_pool_by_hand(crops, pool)
    assert got.shape == (3, 768)
    assert (got - full).abs().max().item() <= 1e-5 * full.abs().max().item()  # the class row alone
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


def _released_fusion(head, clip, valid, base_mask, excluded=None):
    """The released ``open_voc_inference``, literally: powers, product, log, 0/1 masks, then the
    split's indicator (1 base, 2 novel, 0 excluded -> -1000)."""
    q, c = head.softmax(-1), clip.softmax(-1)
    seen = torch.cat([base_mask.float(), torch.ones(1)]) if base_mask is not None else torch.eye(
        head.shape[1])[-1]
    v = valid.float()[:, None]
    alpha, beta = 0.1 * v, 0.9 * v
    fused = (q ** (1 - alpha) * c ** alpha).log() * seen + (q ** (1 - beta) * c ** beta).log() * (1 - seen)
    if excluded is not None:
        indicator = torch.where(base_mask, 1, 2).masked_fill(excluded, 0)
        fused[..., :-1][..., indicator == 0] = -1000.0
    return fused


@pytest.mark.parametrize("with_base", [True, False])
def test_fused_log_scores_equal_the_released_formula(with_base):
    gen = torch.Generator().manual_seed(1)
    head = torch.randn(4, 6, generator=gen) * 3
    clip = torch.randn(4, 6, generator=gen) * 3
    valid = torch.tensor([True, False, True, True])
    base = torch.tensor([True, True, False, True, False]) if with_base else None
    got = fuse_log_scores(head, clip, valid, base)
    assert (got - _released_fusion(head, clip, valid, base)).abs().max().item() <= 1e-5
    # The empty-mask fallback: the head alone.
    assert (got[1] - head[1].log_softmax(-1)).abs().max().item() <= 1e-6


def test_a_split_excludes_classes_with_the_released_sentinel():
    gen = torch.Generator().manual_seed(2)
    head = torch.randn(5, 9, generator=gen) * 4
    clip = torch.randn(5, 9, generator=gen) * 4
    clip[:, 6] = 30.0  # CLIP is sure of class 6, which the split leaves out
    valid = torch.tensor([True, True, False, True, True])
    base = torch.tensor([True, False, True, False, False, True, False, True])
    excluded = torch.tensor([False, False, False, True, False, False, True, False])
    got = fuse_log_scores(head, clip, valid, base, excluded)
    want = _released_fusion(head, clip, valid, base, excluded)
    assert (got - want).abs().max().item() <= 1e-5
    assert (got[:, [3, 6]] == EXCLUDED_SCORE).all()
    probs = got.softmax(-1)
    assert (probs[:, [3, 6]] == 0).all()  # never predicted, no probability mass
    assert torch.allclose(probs.sum(-1), torch.ones(5), atol=1e-6)
    assert not (probs[:, :-1].argmax(-1) == 6).any()
    # without the split class 6 wins wherever CLIP counts
    open_vocab = fuse_log_scores(head, clip, valid, base).softmax(-1)
    assert (open_vocab[valid, :-1].argmax(-1) == 6).all()


def test_fusion_lets_clip_name_a_novel_class_and_stays_finite_on_underflow():
    head = torch.tensor([[50.0, 0.0, 0.0, 10.0]])  # head: base class 0
    clip = torch.tensor([[0.0, 0.0, 200.0, 0.0]])  # CLIP: novel class 2, so sure that c underflows to 0
    base = torch.tensor([True, True, False])
    scores = fuse_log_scores(head, clip, torch.tensor([True]), base)
    assert torch.isfinite(scores).all()
    assert _released_fusion(head, clip, torch.tensor([True]), base).isnan().any()  # log(0) * 0
    assert scores[0, :-1].argmax().item() == 2
    alone = fuse_log_scores(head, clip, torch.tensor([False]), base)
    assert alone[0, :-1].argmax().item() == 0


def test_mask_validity_at_the_clip_grid():
    logits = torch.full((3, 256, 256), -1.0)
    logits[0, 3, 3] = 10.0  # sits under the first 32x32 sample (rows/cols 3..4): kept
    logits[1, 0, 0] = 10.0  # the corner cell is never sampled when shrinking by 8: dropped
    assert mask_is_valid(logits, (32, 32)).tolist() == [True, False, False]


def test_fusion_rejects_mismatched_inputs():
    with pytest.raises(FusionInputError, match="C \\+ 1"):
        fuse_log_scores(torch.zeros(2, 5), torch.zeros(2, 6), torch.ones(2, dtype=torch.bool))
    with pytest.raises(FusionInputError, match="valid"):
        fuse_log_scores(torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(3, dtype=torch.bool))
    with pytest.raises(FusionInputError, match="base_mask"):
        fuse_log_scores(torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(2, dtype=torch.bool),
                        torch.ones(5, dtype=torch.bool))
    with pytest.raises(FusionInputError, match="excluded"):
        fuse_log_scores(torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(2, dtype=torch.bool),
                        excluded=torch.ones(3, dtype=torch.bool))


def test_the_region_embedding_is_what_the_clip_scores_came_from():
    """OVSAM's recognizer hands out the frozen-CLIP region feature (open_clip's pool on torchvision's
    RoIAlign crop, normalised) as its embedding, in clip and ensemble mode alike; in clip mode the
    class logits are 100 x its cosine with each class's text embedding."""
    torch.manual_seed(1)
    pool = AttentionPool2d(12, 3072, 48, 768).eval()
    recognizer = OVSAMRecognizer(pool, roi_size=7, mode="clip").eval()
    text = torch.nn.functional.normalize(torch.randn(4, 1, 768), dim=-1)
    recognizer.set_text_embeddings(text)
    c5 = torch.randn(1, 3072, 32, 32)
    levels = tuple(torch.zeros(1, 256, s, s) for s in (256, 128, 64, 32))  # the head is unused in clip mode
    features = ImageFeatures(embedding=torch.zeros(1, 256, 64, 64), clip_levels=(*levels, c5),
                             input_size=(1024, 1024), original_size=(1024, 1024))
    low = torch.full((2, 256, 256), -4.0)
    low[0, 20:120, 30:90] = 4.0
    low[1, 150:250, 100:240] = 4.0
    boxes = torch.tensor([[120.0, 80.0, 360.0, 480.0], [400.0, 600.0, 960.0, 1000.0]])
    with torch.no_grad():
        clip = recognizer.recognize(features, low, boxes)
        crops = roi_align(c5, torch.cat([torch.zeros(2, 1), boxes], 1), 12, spatial_scale=1 / 32,
                          sampling_ratio=0, aligned=True)
        want = torch.nn.functional.normalize(pool(crops), dim=-1)
        recognizer.set_mode("ensemble")
        fused = recognizer.recognize(features, low, boxes)
    assert clip.embedding.shape == (2, 768)
    torch.testing.assert_close(clip.embedding, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.embedding, clip.embedding)
    torch.testing.assert_close(clip.log_scores[:, :4], LOGIT_SCALE * clip.embedding @ text[:, 0].T,
                               rtol=1e-4, atol=1e-3)
    assert clip.log_scores[:, 4].eq(0).all()  # background
