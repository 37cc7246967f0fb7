"""Prompts as the core sees them: plain numpy, in original-image pixels, with no ROS types.

Every adapter (node, bag replay, CLI, evaluator) turns its input into these, and the predictor and
the streaming engine take nothing else. Coordinates are (x right, y down) in pixels of the original
image; boxes are ``[x0, y0, x1, y1]``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class PromptKind(enum.IntEnum):
    """Values match the PROMPT_* constants of ``msg/Instance.msg``."""

    POINT = 0
    BOX = 1
    TEXT = 2
    EVERYTHING = 3


class PromptError(ValueError):
    """A prompt that cannot be answered; the message says why."""


@dataclass(frozen=True)
class Prompt:
    """One request for instances on one frame.

    ``stamp`` is in seconds; ``0.0`` means "the newest frame". Standing prompts (text, everything,
    per-frame detector boxes) are applied to every newly encoded frame until replaced.
    """

    kind: PromptKind
    id: str = ""
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    text: str = ""
    stamp: float = 0.0
    standing: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @staticmethod
    def point(xy: list[tuple[float, float]] | np.ndarray, labels: list[int] | np.ndarray | None = None,
              id: str = "", stamp: float = 0.0) -> Prompt:
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        lab = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        return Prompt(PromptKind.POINT, id=id, points=pts, labels=lab, stamp=stamp)

    @staticmethod
    def from_box(box: list[float] | np.ndarray, id: str = "", stamp: float = 0.0,
                 standing: bool = False) -> Prompt:
        return Prompt(PromptKind.BOX, id=id, box=np.asarray(box, dtype=np.float64).reshape(4),
                      stamp=stamp, standing=standing)

    @staticmethod
    def from_text(text: str, id: str = "", stamp: float = 0.0, standing: bool = True) -> Prompt:
        return Prompt(PromptKind.TEXT, id=id or text, text=text, stamp=stamp, standing=standing)

    @staticmethod
    def everything(id: str = "everything", stamp: float = 0.0, standing: bool = True) -> Prompt:
        return Prompt(PromptKind.EVERYTHING, id=id, stamp=stamp, standing=standing)
