"""Prompt messages -> core :class:`~ovsam_ros.prompts.Prompt`s, with every check a user can trip.

A malformed prompt (labels that don't match the points, NaN coordinates, a zero-size box, a click
outside the image) raises :class:`~ovsam_ros.prompts.PromptError` naming the prompt, so the node can
log it and carry on and the result's ``errors`` can say what was skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.ros.message_builders import bbox2d_corners, stamp_seconds


def _check_inside(what: str, xy: np.ndarray, image_size: tuple[int, int] | None) -> None:
    if image_size is None:
        return
    height, width = image_size
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.any():
        x, y = xy[np.argmax(outside)]
        raise PromptError(f"{what}: ({x:.1f}, {y:.1f}) is outside the {width}x{height} image")


def point_prompt(msg: Any, image_size: tuple[int, int] | None = None) -> Prompt:
    """An ovsam_ros/PointPrompt; empty ``labels`` means every point is foreground.

    ``image_size`` (h, w), when known, rejects clicks outside the image.
    """
    what = f"point prompt {msg.id!r}"
    points = np.array([[p.x, p.y] for p in msg.points], dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(msg.labels, dtype=np.int64).reshape(-1)
    if len(points) == 0:
        raise PromptError(f"{what} has no points")
    if len(labels) == 0:
        labels = np.ones(len(points), dtype=np.int64)
    if len(labels) != len(points):
        raise PromptError(f"{what} has {len(points)} points but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise PromptError(f"{what}: labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
    if not np.isfinite(points).all():
        raise PromptError(f"{what} has NaN or infinite coordinates")
    _check_inside(what, points, image_size)
    return Prompt.point(points, labels, id=str(msg.id), stamp=stamp_seconds(msg.header.stamp))


def box_prompt(bbox: Any, id: str, stamp: float = 0.0, standing: bool = False,
               image_size: tuple[int, int] | None = None) -> Prompt:
    """A vision_msgs/BoundingBox2D (pixels; rotation ignored) as a box prompt."""
    box = bbox2d_corners(bbox)
    what = f"box prompt {id!r}"
    if not np.isfinite(box).all():
        raise PromptError(f"{what} has NaN or infinite coordinates")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise PromptError(f"{what} has no area (size {bbox.size_x} x {bbox.size_y})")
    _check_inside(what, box.reshape(2, 2), image_size)
    return Prompt.from_box(box, id=id, stamp=stamp, standing=standing)


def detection_prompts(msg: Any, standing: bool = True,
                      image_size: tuple[int, int] | None = None) -> tuple[list[Prompt], list[str]]:
    """One box prompt per detection of a vision_msgs/Detection2DArray, keeping the detection id.

    A detector's boxes stand for the frame whose stamp they carry (the detection's own header when
    set, else the array's). Returns the prompts and the reasons the malformed ones were skipped, so
    one bad box does not drop the rest.
    """
    array_stamp = stamp_seconds(msg.header.stamp)
    prompts, errors = [], []
    for i, det in enumerate(msg.detections):
        stamp = stamp_seconds(det.header.stamp) or array_stamp
        try:
            prompts.append(box_prompt(det.bbox, str(det.id) or f"detection_{i}", stamp, standing, image_size))
        except PromptError as exc:
            errors.append(str(exc))
    return prompts, errors


def segment_request_prompts(req: Any, image_size: tuple[int, int] | None = None) -> list[Prompt]:
    """Every prompt of an ovsam_ros/Segment request, for the frame it names (stamp 0 = that frame)."""
    box_ids = list(req.box_ids)
    if box_ids and len(box_ids) != len(req.boxes):
        raise PromptError(f"{len(req.boxes)} boxes but {len(box_ids)} box_ids (give none or one per box)")
    prompts = []
    for p in req.point_prompts:
        prompt = point_prompt(p, image_size)
        prompts.append(Prompt.point(prompt.points, prompt.labels, id=prompt.id))
    for i, bbox in enumerate(req.boxes):
        prompts.append(box_prompt(bbox, box_ids[i] if box_ids else f"box_{i}", image_size=image_size))
    if str(req.text).strip():
        prompts.append(Prompt.from_text(str(req.text).strip(), standing=False))
    if req.everything:
        prompts.append(Prompt.everything(standing=False))
    if not prompts:
        raise PromptError("the segment request has no prompt: give points, boxes, text or everything")
    return prompts
