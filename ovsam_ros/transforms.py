"""Resizing, normalisation, padding and coordinate mapping between the original image and the model.

The model sees the image resized so its longest side is ``image_size`` and zero-padded (after
normalisation) at the right and bottom to an ``image_size`` square. Prompts go through the same
per-axis scale; masks come back by the inverse (upscale to the square, crop, resize to the original).
:class:`MaskUpscaler` does that inverse one box at a time, so a mask costs what its box covers.
Two resize flavours exist because the two model families were trained on different ones: SAM and
MobileSAM on PIL's antialiased bilinear (segment_anything's ``ResizeLongestSide``), OVSAM on
``cv2.resize`` with ``INTER_LINEAR`` (mmcv's ``Resize``). Only the predictor uses this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES = ("pil", "cv2")


def resized_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``long_side``, rounded half up as SAM and mmcv do."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(rgb: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize an ``HxWx3`` uint8 image to ``size`` (h, w) the way the model was trained."""
    h, w = size
    if mode == "pil":
        return np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
    if mode == "cv2":
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")


def normalize_and_pad(
    resized: torch.Tensor,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """``HxWx3`` uint8 -> ``[1, 3, S, S]`` float32, normalised, padded with 0 after normalisation."""
    x = resized.permute(2, 0, 1).float()
    x = (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]
    h, w = x.shape[-2:]
    return F.pad(x, (0, image_size - w, 0, image_size - h)).unsqueeze(0)


def scale_xy(original_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[float, float]:
    """Per-axis (sx, sy) from original pixels to resized-input pixels."""
    return input_size[1] / original_size[1], input_size[0] / original_size[0]


def map_points(points: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """``[..., 2]`` (x, y) in original pixels -> the model's input frame."""
    sx, sy = scale_xy(original_size, input_size)
    return np.asarray(points, dtype=np.float64) * np.array([sx, sy])


def map_boxes(boxes: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """``[..., 4]`` (x0, y0, x1, y1) in original pixels -> the model's input frame."""
    sx, sy = scale_xy(original_size, input_size)
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def upscale_logits(
    low_res: torch.Tensor,
    image_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> torch.Tensor:
    """``[N, M, h, w]`` low-res logits -> ``[N, M, H, W]`` logits at the original resolution.

    Bilinear to the padded square, crop the valid part, bilinear to the original size (SAM's
    ``postprocess_masks`` and OVSAM's test-time post-processing do exactly this).
    """
    n, m = low_res.shape[:2]
    x = low_res.reshape(n * m, 1, *low_res.shape[-2:]).float()
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, original_size, mode="bilinear", align_corners=False)
    return x.reshape(n, m, *original_size)


@dataclass(frozen=True)
class _Taps:
    """PyTorch's bilinear taps (``align_corners=False``) from ``out`` samples into ``in`` samples."""

    i0: torch.Tensor  # [out] long
    i1: torch.Tensor  # [out] long
    w1: torch.Tensor  # [out] float32, the weight of i1 (i0 gets 1 - w1)

    @staticmethod
    def of(in_size: int, out_size: int, device: torch.device) -> _Taps:
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)
        src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
        i0 = src.long()
        i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
        return _Taps(i0.to(device), i1.to(device), (src - i0).to(device))

    def apply(self, x: torch.Tensor, dim: int, start: int, stop: int, offset: int) -> torch.Tensor:
        """Resample ``x`` (whose index 0 along ``dim`` is input sample ``offset``) at outputs
        ``start:stop``."""
        i0, i1, w1 = self.i0[start:stop] - offset, self.i1[start:stop] - offset, self.w1[start:stop]
        shape = [1] * x.dim()
        shape[dim] = stop - start
        w1 = w1.view(shape)
        return x.index_select(dim, i0) * (1 - w1) + x.index_select(dim, i1) * w1


class _Axis:
    """One axis of :func:`upscale_logits` (low-res -> padded square -> crop -> original) as two tap
    tables, plus the low-res span each output pixel reads (for choosing crops)."""

    def __init__(self, low: int, square: int, valid: int, out: int, device: torch.device) -> None:
        self.first = _Taps.of(low, square, device)  # square samples 0..valid-1 from low-res
        self.second = _Taps.of(valid, out, device)  # output samples from square 0..valid-1
        first_cpu = _Taps.of(low, square, torch.device("cpu"))
        second_cpu = _Taps.of(valid, out, torch.device("cpu"))
        self.mid_lo, self.mid_hi = second_cpu.i0.numpy(), second_cpu.i1.numpy()
        self.lo = first_cpu.i0[second_cpu.i0].numpy()  # lowest low-res index output o reads
        self.hi = first_cpu.i1[second_cpu.i1].numpy()  # highest
        self.out = out

    def span(self, low_first: int, low_last: int) -> tuple[int, int]:
        """Output range ``[start, stop)`` whose pixels read any low-res sample in ``[first, last]``."""
        start = np.searchsorted(self.hi, low_first, "left")
        return int(start), int(np.searchsorted(self.lo, low_last, "right"))

    def resample(self, x: torch.Tensor, dim: int, start: int, stop: int, low_offset: int) -> torch.Tensor:
        """Output samples ``start:stop`` along ``dim`` of ``x`` (low-res, starting at ``low_offset``)."""
        mid_start, mid_stop = int(self.mid_lo[start]), int(self.mid_hi[stop - 1]) + 1
        mid = self.first.apply(x, dim, mid_start, mid_stop, low_offset)
        return self.second.apply(mid, dim, start, stop, mid_start)


class MaskUpscaler:
    """:func:`upscale_logits` restricted to a box: the same two bilinear passes, computed only for the
    output pixels a box of low-res samples can reach, so a mask costs what its box covers.

    Outside the box of low-res samples above ``floor`` every output pixel is a convex combination of
    samples at or below it, so thresholds at or above ``floor`` see nothing there.
    """

    def __init__(self, low_res: int, image_size: int, input_size: tuple[int, int],
                 original_size: tuple[int, int], device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.original_size = original_size
        self.y = _Axis(low_res, image_size, input_size[0], original_size[0], device)
        self.x = _Axis(low_res, image_size, input_size[1], original_size[1], device)
        # low-res samples any output pixel reads (the rest lie in the padding)
        self.valid = (int(self.y.hi[-1]) + 1, int(self.x.hi[-1]) + 1)

    def crop(self, low: torch.Tensor, low_box: tuple[int, int, int, int]) -> tuple[torch.Tensor, int, int]:
        """Original-resolution logits of ``low`` ``[h, w]`` over the output pixels reading the low-res
        box ``(x0, y0, x1, y1)`` (inclusive): ``(logits [hh, ww], top, left)``."""
        lx0, ly0, lx1, ly1 = low_box
        top, bottom = self.y.span(ly0, ly1)
        left, right = self.x.span(lx0, lx1)
        if top >= bottom or left >= right:
            return low.new_zeros(0, 0), top, left
        row_lo, row_hi = int(self.y.lo[top]), int(self.y.hi[bottom - 1])
        col_lo, col_hi = int(self.x.lo[left]), int(self.x.hi[right - 1])
        block = low[row_lo:row_hi + 1, col_lo:col_hi + 1].float()
        block = self.x.resample(block, 1, left, right, col_lo)
        return self.y.resample(block, 0, top, bottom, row_lo), top, left

    def masks(self, low: torch.Tensor, offset: float = 1.0) -> MaskCrops:
        """``[K, h, w]`` low-res logits -> the masks (logits > 0) at the original resolution as crops,
        with area, box and SAM's stability score (``offset`` around 0) computed on those crops: the
        numbers :func:`upscale_logits` would give on the full frame. One host transfer for the boxes."""
        low = low.float()
        floor = -offset - 1e-3  # the crop holds every pixel above -offset (see the class docstring)
        above = low[:, : self.valid[0], : self.valid[1]] > floor
        boxes = _first_last(above.any(dim=1)), _first_last(above.any(dim=2))
        (x0, x1), (y0, y1) = ((a.tolist(), b.tolist()) for a, b in boxes)
        crops, tops, lefts, stats = [], [], [], []
        for k in range(len(low)):
            if x0[k] > x1[k]:
                logits, top, left = low.new_zeros(0, 0), 0, 0
            else:
                logits, top, left = self.crop(low[k], (x0[k], y0[k], x1[k], y1[k]))
            mask = logits > 0
            crops.append(mask)
            tops.append(top)
            lefts.append(left)
            stats.append(_crop_stats(logits, mask, top, left, offset))
        if not stats:
            empty = low.new_zeros(0)
            return MaskCrops([], [], [], self.original_size, empty, empty.long(), low.new_zeros(0, 4))
        table = torch.stack(stats)
        stability = (table[:, 0] / table[:, 1]).nan_to_num(0.0)
        return MaskCrops(crops, tops, lefts, self.original_size, stability, table[:, 2].long(), table[:, 3:])


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index of each row of ``[K, n]`` bools (first > last for an empty row)."""
    index = torch.arange(flags.shape[1], device=flags.device)
    first = torch.where(flags, index, flags.shape[1]).amin(dim=1)
    last = torch.where(flags, index, -1).amax(dim=1)
    return first, last


def _crop_stats(logits: torch.Tensor, mask: torch.Tensor, top: int, left: int, offset: float) -> torch.Tensor:
    """``[inter, union, area, x0, y0, x1, y1]`` (box x1/y1 exclusive, zeros when empty) of one crop."""
    if mask.numel() == 0:
        return logits.new_tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    inter = torch.count_nonzero(logits > offset)
    union = torch.count_nonzero(logits > -offset)
    area = torch.count_nonzero(mask)
    x0, x1 = _first_last(mask.any(dim=0)[None])
    y0, y1 = _first_last(mask.any(dim=1)[None])
    box = torch.cat([x0 + left, y0 + top, x1 + left + 1, y1 + top + 1]) * (area > 0)
    return torch.cat([torch.stack([inter, union, area]), box]).float()


@dataclass
class MaskCrops:
    """K masks at the original resolution, each held as the bool crop of the pixels its logits can
    reach (``crops[k]`` at row ``tops[k]``, column ``lefts[k]``), plus per-mask numbers on the device:
    ``stability`` [K], ``area`` [K] and ``boxes`` [K, 4] (x0, y0, x1, y1 with x1/y1 exclusive)."""

    crops: list[torch.Tensor]
    tops: list[int]
    lefts: list[int]
    size: tuple[int, int]
    stability: torch.Tensor
    area: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return len(self.crops)

    def pieces(self) -> list[tuple[torch.Tensor, int, int]]:
        """``(crop, top, left)`` per mask, for :func:`paste`."""
        return list(zip(self.crops, self.tops, self.lefts, strict=True))

    def dense(self, index: list[int] | None = None) -> torch.Tensor:
        """The masks at ``index`` (all when None) pasted into full frames: bool ``[k, H, W]``."""
        pieces = self.pieces()
        chosen = pieces if index is None else [pieces[k] for k in index]
        return paste(chosen, self.size, self.boxes.device)


def paste(pieces: list[tuple[torch.Tensor, int, int]], size: tuple[int, int],
          device: torch.device | str) -> torch.Tensor:
    """Bool crops ``(crop, top, left)`` pasted into zero frames: ``[k, H, W]``."""
    out = torch.zeros(len(pieces), *size, dtype=torch.bool, device=device)
    for row, (crop, top, left) in enumerate(pieces):
        out[row, top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return out
