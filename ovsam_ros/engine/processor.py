"""What the engine needs from the network: encode a frame once, answer a batch of prompts on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ovsam_ros.prompts import PromptError

if TYPE_CHECKING:
    from ovsam_ros.model.base import ImageFeatures
    from ovsam_ros.predictor import Namer, Predictor
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.results import Instance


@runtime_checkable
class FrameProcessor(Protocol):
    """``encode`` runs once per frame (the expensive part); ``answer`` gets ALL prompts that hit one
    frame in one call, so they are decoded as one batch. Both run on the engine's worker thread only."""

    def encode(self, image: np.ndarray) -> ImageFeatures: ...

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]: ...


class PredictorProcessor:
    """The engine's view of :class:`ovsam_ros.predictor.Predictor`; typed lazily so that importing the
    engine loads no model code."""

    def __init__(self, predictor: Predictor, namer: Namer | None = None) -> None:
        self.predictor = predictor
        self.namer = namer

    def encode(self, image: np.ndarray) -> ImageFeatures:
        return self.predictor.encode(image)

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]:
        """Raises if any prompt was skipped, so the engine can tell the caller which one failed."""
        errors: list[str] = []
        instances = self.predictor.predict_prompts(features, prompts, errors, self.namer)
        if errors:
            raise PromptError("; ".join(errors))
        return instances
