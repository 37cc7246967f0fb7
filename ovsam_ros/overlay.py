"""Masks, outlines and names drawn onto an RGB image: what a person looks at (RViz, a PNG from the CLI).

One drawing for every adapter (the node's ``~/overlay``, the bag tool's ``/ovsam/overlay``, the CLI's
``--overlay`` PNG). Instance k gets the colour of its RViz markers (``instance_color``), so an overlay and
the 3D markers of one frame agree. OpenCV does the drawing; nothing here knows about ROS or torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ovsam_ros.results import Instance
from ovsam_ros.ros.message_builders import instance_color


class OverlayError(ValueError):
    """An image or mask that cannot be drawn on; the message says what is wrong."""


def instance_caption(inst: Instance) -> str:
    """``"mug 0.87"`` for a named instance, else its id (or prompt id): something to tell masks apart."""
    if inst.label:
        return f"{inst.label} {inst.score:.2f}"
    return inst.id or inst.prompt_id


def _rgb255(k: int) -> tuple[int, int, int]:
    r, g, b = instance_color(k)
    return round(r * 255), round(g * 255), round(b * 255)


def _check(image: np.ndarray, instances: Sequence[Instance]) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise OverlayError(f"overlay needs an HxWx3 uint8 RGB image, got {type(image).__name__} {shape}")
    for k, inst in enumerate(instances):
        if inst.mask.shape != image.shape[:2]:
            raise OverlayError(f"instance {k} ({instance_caption(inst)!r}) has a {inst.mask.shape} mask "
                               f"for a {image.shape[:2]} image")


def _draw_caption(canvas: np.ndarray, text: str, anchor: tuple[int, int], color: tuple[int, int, int],
                  scale: float, thickness: int) -> None:
    """White text on a box of the instance's colour, kept inside the image."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    h, w = canvas.shape[:2]
    x = int(np.clip(anchor[0], 0, max(w - tw - 4, 0)))
    y = int(np.clip(anchor[1], th + base + 4, h))
    cv2.rectangle(canvas, (x, y - th - base - 4), (x + tw + 4, y), color, cv2.FILLED)
    cv2.putText(canvas, text, (x + 2, y - base - 2), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, instances: Sequence[Instance], alpha: float = 0.45,
                 outline: int | None = None, captions: bool = True) -> np.ndarray:
    """A new RGB image: each mask tinted with its instance colour (``alpha``), its outline drawn, and its
    caption (:func:`instance_caption`) at the top-left of its box. The input image is not modified.

    ``outline`` is the line width in pixels (default: scaled with the image, 2 px at 1000 px).
    """
    _check(image, instances)
    if not 0.0 <= alpha <= 1.0:
        raise OverlayError(f"alpha must be within [0, 1], got {alpha}")
    h, w = image.shape[:2]
    width = max(1, round(max(h, w) / 500)) if outline is None else outline
    canvas = image.astype(np.float32)
    for k, inst in enumerate(instances):
        mask = inst.mask.astype(bool)
        canvas[mask] = canvas[mask] * (1.0 - alpha) + np.array(_rgb255(k), np.float32) * alpha
    out = np.ascontiguousarray(canvas.round().clip(0, 255).astype(np.uint8))
    scale = max(0.4, max(h, w) / 1600)
    for k, inst in enumerate(instances):
        contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, _rgb255(k), width, cv2.LINE_8)
    if captions:
        for k, inst in enumerate(instances):
            text = instance_caption(inst)
            if text and inst.mask.any():
                x0, y0 = int(inst.bbox[0]), int(inst.bbox[1])
                _draw_caption(out, text, (x0, y0), _rgb255(k), scale, max(1, width // 2))
    return out
