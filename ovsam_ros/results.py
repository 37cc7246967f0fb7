"""What the core returns: instances with a full-resolution mask, a name and where they came from.

A result carries the stamp and frame id of the frame it was computed on; nothing downstream invents
a stamp.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from ovsam_ros.prompts import PromptKind


class TrackState(enum.IntEnum):
    """Values match the TRACK_* constants of ``msg/Instance.msg``."""

    NONE = 0
    TENTATIVE = 1
    CONFIRMED = 2
    LOST = 3
    ENDED = 4


@dataclass
class Instance:
    """One segmented, optionally named object.

    ``bbox`` is the box of the mask, ``[x0, y0, x1, y1]`` with x1/y1 exclusive (pixels).
    ``mask_score`` is the mask-quality score (SAM's predicted IoU where the decoder has an IoU
    head, else the stability score). ``label``/``class_index``/``score`` are empty/-1/0 when
    recognition is off; ``top_k`` holds ``(name, probability)`` pairs, best first. Below the naming
    threshold an instance is unnamed (:mod:`ovsam_ros.recognition`): label "", class_index -1,
    no top_k, ``score`` its top-1 probability.
    ``track_id`` (0 = untracked), ``track_age`` (frames since the track began) and ``track_state``
    are set by :mod:`ovsam_ros.tracking`; a tracked instance's ``id`` is ``str(track_id)``.
    ``embedding`` is the recognizer's L2-normalised region embedding ``[D]`` (float32) when the model
    names masks, else None: tracking's appearance, never published.
    """

    mask: np.ndarray
    bbox: tuple[float, float, float, float]
    mask_score: float
    prompt_kind: PromptKind
    prompt_id: str = ""
    id: str = ""
    label: str = ""
    class_index: int = -1
    score: float = 0.0
    top_k: list[tuple[str, float]] = field(default_factory=list)
    stability_score: float = 0.0
    track_id: int = 0
    track_age: int = 0
    track_state: TrackState = TrackState.NONE
    embedding: np.ndarray | None = None


@dataclass
class FrameResult:
    """All instances answered on one frame."""

    stamp: float
    frame_id: str
    image_size: tuple[int, int]
    instances: list[Instance] = field(default_factory=list)
    vocabulary: str = ""
    errors: list[str] = field(default_factory=list)
    new_frame: bool = False
    """True when the frame was newly encoded and the standing prompts were applied to it (a frame
    that tracks were re-prompted on); False for one-off prompts answered on a cached frame."""


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Box of the positive pixels, x1/y1 exclusive; all zeros for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))
