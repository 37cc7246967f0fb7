"""The engine's settings, validated on construction so an invalid engine never starts.

The defaults equal those of ``ovsam_ros.config.StreamConfig`` (the user-facing parameters), which
hands its values over with ``StreamConfig.engine_config()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ovsam_ros.engine.policy import EncodeMode


class EngineConfigError(ValueError):
    """An engine setting out of range; the message names it."""


def _check_int(name: str, value: object, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise EngineConfigError(f"{name} must be an integer >= {lowest}, got {value!r}")


def _check_seconds(name: str, value: object, allow_inf: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if not ok or math.isnan(value) or (math.isinf(value) and not allow_inf):  # type: ignore[arg-type]
        raise EngineConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    """How many frames to keep, how prompts meet frames in time, and when to encode.

    ``raw_buffer_size`` counts frames received but not yet encoded; 0 behaves as 1 (the newest frame
    is always kept, it is how a frame reaches the worker). ``max_prompt_age_s`` bounds the stamp
    distance between a prompt and the newest frame when no frame lies within ``sync_slop_s``.
    ``max_encode_rate_hz`` 0 means no cap. ``keep_images`` keeps each encoded frame's image beside
    its features (for overlays).
    """

    cache_size: int = 8
    raw_buffer_size: int = 8
    sync_slop_s: float = 0.05
    prompt_wait_s: float = 0.2
    max_prompt_age_s: float = 2.0
    encode_mode: EncodeMode | str = EncodeMode.AUTO
    max_encode_rate_hz: float = 5.0
    prompt_queue_size: int = 64
    keep_images: bool = False

    def __post_init__(self) -> None:
        _check_int("cache_size", self.cache_size, 1)
        _check_int("raw_buffer_size", self.raw_buffer_size, 0)
        _check_int("prompt_queue_size", self.prompt_queue_size, 1)
        _check_seconds("sync_slop_s", self.sync_slop_s)
        _check_seconds("prompt_wait_s", self.prompt_wait_s)
        _check_seconds("max_prompt_age_s", self.max_prompt_age_s)
        _check_seconds("max_encode_rate_hz", self.max_encode_rate_hz, allow_inf=True)
        try:
            mode = EncodeMode(self.encode_mode)
        except ValueError:
            choices = ", ".join(m.value for m in EncodeMode)
            raise EngineConfigError(
                f"encode_mode must be one of {choices}, got {self.encode_mode!r}") from None
        object.__setattr__(self, "encode_mode", mode)
        if not isinstance(self.keep_images, bool):
            raise EngineConfigError(f"keep_images must be a bool, got {self.keep_images!r}")
