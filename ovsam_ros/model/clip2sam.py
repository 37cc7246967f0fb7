"""CLIP2SAM recognition head: an FPN over the CLIP stages, one RoI per mask, a 1x1 conv to CLIP width.

The RoI is always the box of the predicted mask (also for box prompts), read off the 256x256
low-res logits, so the head sees what the decoder segmented rather than what the user drew. One
FPN level is chosen per box by mmdet's rule, and torchvision's ``roi_align`` samples it (the same
arithmetic as mmcv's kernel for ``aligned=True``). Key names follow mmdet/mmcv (``lateral_convs.0.conv``,
``roi_conv.0.conv``) so the released ``fpn_neck.*`` and ``mask_decoder.roi_conv.*`` tensors load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

FPN_STRIDES = (4, 8, 16, 32)


class RoIInputError(ValueError):
    """Features or boxes the head cannot use."""


class ConvModule(nn.Module):
    """mmcv's ConvModule without norm: a conv stored under ``.conv`` and an optional ReLU."""

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.activate = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.conv(x))


class FPN(nn.Module):
    """mmdet's FPN with no norm, no activation and no extra levels: C2..C5 -> P2..P5 (256 ch)."""

    def __init__(self, in_channels: tuple[int, ...] = (384, 768, 1536, 3072),
                 out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.lateral_convs = nn.ModuleList(ConvModule(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            ConvModule(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels
        )

    def forward(self, levels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if len(levels) != len(self.in_channels) or any(
            x.dim() != 4 or x.shape[1] != c for x, c in zip(levels, self.in_channels, strict=True)
        ):
            got = [tuple(x.shape) for x in levels]
            raise RoIInputError(f"FPN expects {len(self.in_channels)} maps with channels {self.in_channels}, "
                                f"got {got}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return tuple(conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True))


def mask_boxes(low_res_logits: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """``[N, h, w]`` low-res logits -> ``[N, 4]`` boxes ``[x0, y0, x1 + 1, y1 + 1] * stride`` of the cells
    with sigmoid > 0.5, in input pixels; an empty mask gives ``[0, 0, 0, 0]``. No host sync."""
    if low_res_logits.dim() != 3:
        raise RoIInputError(f"low-res logits must be [N, h, w], got {tuple(low_res_logits.shape)}")
    positive = low_res_logits.sigmoid() > 0.5  # the released rule; differs from > 0 only at |x| < 3e-8
    boxes = []
    for axis in (-2, -1):  # columns present (x), rows present (y)
        present = positive.any(dim=axis)
        idx = torch.arange(present.shape[-1], device=present.device)
        lo = torch.where(present, idx, present.shape[-1]).amin(dim=-1)
        hi = torch.where(present, idx, -1).amax(dim=-1) + 1
        boxes.append((lo, hi))
    (x0, x1), (y0, y1) = boxes
    box = torch.stack([x0, y0, x1, y1], dim=-1).to(low_res_logits.dtype) * stride
    return torch.where(positive.flatten(1).any(dim=1, keepdim=True), box, torch.zeros_like(box))


def map_roi_levels(boxes: torch.Tensor, num_levels: int = 4, finest_scale: float = 56.0) -> torch.Tensor:
    """mmdet's single-level rule: ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to levels."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def boxes_to_rois(boxes: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` boxes of one image -> ``[N, 5]`` RoIs with batch index 0 (torchvision's format)."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise RoIInputError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
    return torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)


def extract_rois(levels: tuple[torch.Tensor, ...], boxes: torch.Tensor, output_size: int,
                 strides: tuple[int, ...] = FPN_STRIDES) -> torch.Tensor:
    """RoIAlign each box on its own level (``map_roi_levels``): ``[N, C, s, s]``.

    Every level is visited with the boxes of the other levels set to zero size, which torchvision
    answers with zeros at almost no cost; this keeps the whole step free of host syncs (mmdet
    gathers per-level indices instead)."""
    if levels[0].shape[0] != 1:
        raise RoIInputError(f"RoI extraction works on one image, got a batch of {levels[0].shape[0]}")
    rois = boxes_to_rois(boxes.to(levels[0].dtype))
    target = map_roi_levels(rois[:, 1:], num_levels=len(levels))
    out = None
    for i, (feat, stride) in enumerate(zip(levels, strides, strict=True)):
        on_level = (target == i).unsqueeze(1)
        pooled = roi_align(feat, torch.where(on_level, rois, 0.0), output_size, spatial_scale=1.0 / stride,
                           sampling_ratio=0, aligned=True)
        out = pooled if out is None else torch.where(on_level[:, :, None, None], pooled, out)
    return out


class RoIHead(nn.Module):
    """RoI features of the mask box -> 768-d region feature (1x1 conv, no bias, ReLU, spatial mean)."""

    def __init__(self, roi_size: int, in_channels: int = 256, embed_dim: int = 768) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.roi_conv = nn.Sequential(ConvModule(nn.Conv2d(in_channels, embed_dim, 1, bias=False), relu=True))

    def forward(self, fpn_levels: tuple[torch.Tensor, ...], boxes: torch.Tensor,
                label_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``boxes`` ``[N, 4]`` in input pixels. ``label_embedding`` (the decoder's label-MLP output)
        is added times 0, as released: it only propagates a non-finite value."""
        feats = self.roi_conv(extract_rois(fpn_levels, boxes, self.roi_size)).mean(dim=(2, 3))
        if label_embedding is not None:
            feats = feats + 0 * label_embedding
        return feats
