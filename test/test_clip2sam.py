"""CLIP2SAM head: FPN, mask box, RoI level rule, RoIAlign on the chosen level, region feature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ovsam_ros.model.clip2sam import FPN, RoIHead, RoIInputError, extract_rois, map_roi_levels, mask_boxes

LAYOUT = Path(__file__).parent / "data" / "ovsam-checkpoint-layout.json"
CHANNELS = (384, 768, 1536, 3072)


def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling written out: output cell i reads input cell floor(i * in / out)."""
    rows = (torch.arange(size[0]) * x.shape[-2]) // size[0]
    cols = (torch.arange(size[1]) * x.shape[-1]) // size[1]
    return x[..., rows, :][..., cols]


@pytest.fixture(scope="module")
def fpn():
    torch.manual_seed(0)
    return FPN().eval()


@pytest.mark.parametrize("sizes", [(32, 16, 8, 4), (30, 15, 8, 4)])
def test_fpn_equals_a_plain_recomputation(fpn, sizes):
    levels = tuple(torch.randn(1, c, s, s) for c, s in zip(CHANNELS, sizes, strict=True))
    with torch.no_grad():
        got = fpn(levels)
        lat = [F.conv2d(x, m.conv.weight, m.conv.bias)
               for x, m in zip(levels, fpn.lateral_convs, strict=True)]
        for i in (3, 2, 1):
            lat[i - 1] = lat[i - 1] + _nearest(lat[i], lat[i - 1].shape[-2:])
        want = [F.conv2d(x, m.conv.weight, m.conv.bias, padding=1)
                for x, m in zip(lat, fpn.fpn_convs, strict=True)]
    for g, w, s in zip(got, want, sizes, strict=True):
        assert g.shape == (1, 256, s, s)
        assert (g - w).abs().max().item() <= 1e-5


def test_fpn_and_roi_conv_names_match_the_released_checkpoint(fpn):
    layout = json.loads(LAYOUT.read_text())["clip2sam_lvis_rn50x16.pth"]["groups"]
    keys = {e["key"]: tuple(e["shape"]) for g in layout for e in g["keys"]}
    fpn_keys = {k[len("fpn_neck."):]: s for k, s in keys.items() if k.startswith("fpn_neck.")}
    assert {k: tuple(v.shape) for k, v in fpn.state_dict().items()} == fpn_keys
    roi_keys = {k[len("mask_decoder."):]: s for k, s in keys.items()
                if k.startswith("mask_decoder.roi_conv.")}
    assert {k: tuple(v.shape) for k, v in RoIHead(7).state_dict().items()} == roi_keys


def test_fpn_rejects_wrong_levels(fpn):
    with pytest.raises(RoIInputError, match="channels"):
        fpn(tuple(torch.randn(1, 8, 4, 4) for _ in range(4)))


def test_mask_boxes_are_the_positive_cells_extent_times_four():
    logits = torch.full((3, 256, 256), -5.0)
    logits[0, 10:21, 30:41] = 3.0  # rows 10..20, cols 30..40
    logits[0, 200, 5] = 0.5  # a lone far cell widens the box
    logits[1, 255, 255] = 1.0  # the last cell
    got = mask_boxes(logits)
    want = torch.tensor([[5 * 4, 10 * 4, 41 * 4, 201 * 4], [255 * 4, 255 * 4, 1024, 1024], [0, 0, 0, 0]],
                        dtype=torch.float32)
    assert torch.equal(got, want)


def test_mask_boxes_rejects_wrong_rank():
    with pytest.raises(RoIInputError):
        mask_boxes(torch.zeros(1, 1, 256, 256))


def test_level_rule_on_hand_picked_boxes():
    side = torch.tensor([0.0, 10.0, 55.9, 56.0, 111.9, 112.0, 223.9, 224.0, 448.0, 1024.0])
    boxes = torch.stack([torch.zeros_like(side), torch.zeros_like(side), side, side], dim=1)
    assert map_roi_levels(boxes).tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 3, 3]
    # Area, not shape, decides: a 28 x 448 strip has sqrt(area) = 112 -> level 1.
    assert map_roi_levels(torch.tensor([[10.0, 20.0, 38.0, 468.0]])).tolist() == [1]


def test_roi_extraction_equals_torchvision_on_the_chosen_level():
    torch.manual_seed(2)
    levels = tuple(torch.randn(1, 16, s, s) for s in (64, 32, 16, 8))  # a 256 px input
    boxes = torch.tensor([
        [3.0, 4.0, 40.0, 50.0],  # level 0
        [10.0, 12.5, 140.0, 130.0],  # level 1
        [0.0, 0.0, 250.0, 256.0],  # level 2
        [0.0, 0.0, 0.0, 0.0],  # empty mask -> zeros
        [100.0, 100.0, 101.0, 300.0],  # thin, partly outside
    ])
    lv = map_roi_levels(boxes)
    assert lv.tolist() == [0, 1, 2, 0, 0]
    got = extract_rois(levels, boxes, 7)
    for i, box in enumerate(boxes):
        rois = torch.cat([torch.zeros(1), box])[None]
        want = roi_align(levels[lv[i]], rois, 7, spatial_scale=1 / (4 * 2 ** lv[i].item()),
                         sampling_ratio=0, aligned=True)
        assert torch.equal(got[i:i + 1], want)
    assert torch.equal(got[3], torch.zeros_like(got[3]))


def test_roi_extraction_rejects_batches_and_bad_boxes():
    levels = tuple(torch.randn(2, 4, s, s) for s in (16, 8, 4, 2))
    with pytest.raises(RoIInputError, match="one image"):
        extract_rois(levels, torch.zeros(1, 4), 7)
    with pytest.raises(RoIInputError, match=r"\[N, 4\]"):
        extract_rois(tuple(x[:1] for x in levels), torch.zeros(4), 7)


def test_region_feature_is_relu_conv_then_mean_and_label_term_only_carries_non_finite():
    torch.manual_seed(3)
    head = RoIHead(12, in_channels=16, embed_dim=32).eval()
    levels = tuple(torch.randn(1, 16, s, s) for s in (64, 32, 16, 8))
    boxes = torch.tensor([[3.0, 4.0, 40.0, 50.0], [10.0, 12.5, 140.0, 130.0]])
    with torch.no_grad():
        got = head(levels, boxes)
        rois = extract_rois(levels, boxes, 12)
        assert rois.shape == (2, 16, 12, 12)
        want = F.relu(torch.einsum("nchw,oc->nohw", rois, head.roi_conv[0].conv.weight[:, :, 0, 0]))
        assert (got - want.mean(dim=(2, 3))).abs().max().item() <= 1e-5
        assert torch.equal(head(levels, boxes, torch.randn(2, 32)), got)
        label = torch.zeros(2, 32)
        label[1, 0] = float("nan")
        poisoned = head(levels, boxes, label)
    assert torch.equal(poisoned[0], got[0])
    assert poisoned[1, 0].isnan()
