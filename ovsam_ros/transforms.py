"""Resizing, normalisation, padding and coordinate mapping between the original image and the model.

The model sees the image resized so its longest side is ``image_size`` and zero-padded (after
normalisation) at the right and bottom to an ``image_size`` square. Prompts go through the same
per-axis scale; masks come back by the inverse (upscale to the square, crop, resize to the original).
Two resize flavours exist because the two model families were trained on different ones: SAM and
MobileSAM on PIL's antialiased bilinear (segment_anything's ``ResizeLongestSide``), OVSAM on
``cv2.resize`` with ``INTER_LINEAR`` (mmcv's ``Resize``). Only the predictor uses this module.
"""

from __future__ import annotations

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
