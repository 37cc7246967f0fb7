"""What a track compares between frames: mask overlap, a mask moved by the track's motion, and the
colour of the pixels under a mask (appearance that every model has, with or without a recognizer)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

MAX_IOU_PIXELS = 1 << 18
"""Masks are compared on a regular subsample of at most this many pixels: IoU to ~1e-3 of the full
resolution one for objects of more than a few hundred pixels, at a fraction of the cost."""

HISTOGRAM_BINS = 8
"""Bins per RGB channel of an appearance histogram (512 in all)."""


def _stride(shape: tuple[int, ...]) -> int:
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / MAX_IOU_PIXELS))))


def mask_iou_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """``[len(a), len(b)]`` mask IoU of same-sized boolean masks (0 where both are empty)."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    step = _stride(a[0].shape)
    fa = np.stack([np.asarray(m)[::step, ::step].reshape(-1) for m in a]).astype(np.float32)
    fb = np.stack([np.asarray(m)[::step, ::step].reshape(-1) for m in b]).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).astype(np.float64)


def box_iou_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of ``[x0, y0, x1, y1]`` boxes (torchvision's ``box_iou``)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    iou = box_iou(torch.as_tensor(np.asarray(a, np.float64)), torch.as_tensor(np.asarray(b, np.float64)))
    return iou.nan_to_num(0.0).numpy()


def shift_mask(mask: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``mask`` moved by (dx, dy) pixels, rounded; what leaves the image is lost, what enters is empty."""
    dx, dy = round(float(dx)), round(float(dy))
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def _window(mask: np.ndarray, bbox: Sequence[float] | None) -> tuple[slice, slice]:
    """The rows and columns of ``bbox`` (``[x0, y0, x1, y1]``, x1/y1 exclusive; the box of the mask,
    as every Instance carries it): per-mask work then costs the object's size, not the image's."""
    if bbox is None:
        return slice(None), slice(None)
    x0, y0, x1, y1 = (int(v) for v in bbox)
    return slice(max(0, y0), max(0, y1)), slice(max(0, x0), max(0, x1))


def colour_histogram(image: np.ndarray, mask: np.ndarray, bbox: Sequence[float] | None = None
                     ) -> np.ndarray | None:
    """L1-normalised joint RGB histogram of the pixels under ``mask`` (within ``bbox``, its box, when
    given); None for an empty mask or a non-RGB image."""
    if image.ndim != 3 or image.shape[2] < 3 or image.shape[:2] != mask.shape:
        return None
    rows, cols = _window(mask, bbox)
    pixels = image[rows, cols][mask[rows, cols] > 0][:, :3]
    if len(pixels) == 0:
        return None
    q = (pixels.astype(np.int64) * HISTOGRAM_BINS) // 256
    index = (q[:, 0] * HISTOGRAM_BINS + q[:, 1]) * HISTOGRAM_BINS + q[:, 2]
    hist = np.bincount(index, minlength=HISTOGRAM_BINS ** 3).astype(np.float64)
    return hist / hist.sum()


def histogram_similarity(p: np.ndarray | None, q: np.ndarray | None) -> float | None:
    """Bhattacharyya coefficient of two distributions (1 = the same), None when one is missing."""
    if p is None or q is None:
        return None
    return float(np.sqrt(p * q).sum())


def embedding_similarity(p: np.ndarray | None, q: np.ndarray | None) -> float | None:
    """Cosine of two region embeddings, clipped at 0 (1 = the same direction); None when one is
    missing or zero (a mask that covered nothing)."""
    if p is None or q is None:
        return None
    norms = float(np.linalg.norm(p) * np.linalg.norm(q))
    return max(0.0, float(p @ q) / norms) if norms > 0 else None


def label_similarity(p: dict[str, float], q: Sequence[tuple[str, float]]) -> float | None:
    """Bhattacharyya coefficient of two top-k class distributions (names outside either top-k count as
    zero), None when either has no names."""
    if not p or not q:
        return None
    total_p, total_q = sum(p.values()), sum(v for _, v in q)
    if total_p <= 0 or total_q <= 0:
        return None
    return float(sum(np.sqrt(p.get(name, 0.0) / total_p * value / total_q) for name, value in q))


def main_box(mask: np.ndarray, bbox: Sequence[float] | None = None) -> np.ndarray:
    """``[x0, y0, x1, y1]`` (x1/y1 exclusive) of the mask's largest connected part (looked for within
    ``bbox``, its box, when given): a stray speck of a neighbour in a mask would otherwise stretch a
    re-prompt box over the neighbour. Zeros when empty."""
    rows, cols = _window(mask, bbox)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask[rows, cols].astype(np.uint8), connectivity=8)
    if count < 2:
        return np.zeros(4)
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    x0, y0 = x + (cols.start or 0), y + (rows.start or 0)
    return np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
