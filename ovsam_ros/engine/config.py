"""The engine's settings, validated on construction so an invalid engine never starts.

This is their one definition: default, valid range, description and whether they may change while
running. The user config (:mod:`ovsam_ros.config`) takes these fields as its ``engine`` section and
the node declares them as ROS parameters (``engine.cache_size``, ...), so nothing is repeated there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsam_ros.engine.policy import EncodeMode
from ovsam_ros.settings import setting, validate_settings


class EngineConfigError(ValueError):
    """An engine setting out of range; the message names it."""


@dataclass(frozen=True)
class EngineConfig:
    """How many frames to keep, how prompts meet frames in time, and when to encode.

    ``raw_buffer_size`` counts frames received but not yet encoded; 0 behaves as 1 (the newest frame
    is always kept, it is how a frame reaches the worker). ``max_prompt_age_s`` bounds the stamp
    distance between a prompt and the newest frame when no frame lies within ``sync_slop_s``.
    """

    cache_size: int = setting(8, "encoded frames kept (ring buffer by stamp)", range=(1, 1024))
    raw_buffer_size: int = setting(8, "raw frames kept for prompts that arrive later than their frame",
                                   range=(0, 1024))
    sync_slop_s: float = setting(0.05, "largest stamp difference for a prompt to match a frame (s)",
                                 range=(0.0, 10.0), dynamic=True)
    prompt_wait_s: float = setting(0.2, "how long a prompt newer than the newest frame waits for it (s)",
                                   range=(0.0, 60.0), dynamic=True)
    max_prompt_age_s: float = setting(2.0, "prompts older than this (vs the newest frame) are dropped (s)",
                                      range=(0.0, 3600.0), dynamic=True)
    encode_mode: str = setting("auto", "on_demand: encode only prompted frames; continuous: every frame "
                                       "up to the rate cap; auto: continuous while standing prompts exist",
                               choices=tuple(m.value for m in EncodeMode), dynamic=True)
    max_encode_rate_hz: float = setting(5.0, "cap on image encodes per second; 0 = no cap",
                                        range=(0.0, 1000.0), dynamic=True)
    prompt_queue_size: int = setting(64, "pending prompts kept; the oldest are dropped beyond this",
                                     range=(1, 100000))
    keep_images: bool = setting(False, "keep each encoded frame's image beside its features, for overlays "
                                       "(set by the session, not a parameter)", parameter=False)

    def __post_init__(self) -> None:
        validate_settings(self, error=EngineConfigError)
