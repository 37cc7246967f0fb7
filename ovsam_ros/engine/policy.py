"""When to encode a frame nobody asked for: the encode modes and the rate cap.

Pure functions of stamps and times, so the threaded engine and the offline replay share them; the
caller supplies ``now`` (wall-clock seconds live, stream seconds in replay).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-9


class EncodeMode(str, enum.Enum):
    ON_DEMAND = "on_demand"  # encode a frame only when a one-off prompt needs it
    CONTINUOUS = "continuous"  # encode the newest frame at up to the rate cap
    AUTO = "auto"  # continuous while standing prompts exist, otherwise on demand


@dataclass(frozen=True)
class EncodeDecision:
    """``stamp`` of the frame to encode now, or None; ``retry_in_s``: when asking again may say yes."""

    stamp: float | None = None
    retry_in_s: float | None = None


class EncodePolicy:
    """Picks the newest unencoded frame in continuous mode, never an older one (no stale backlog)."""

    def __init__(self, mode: EncodeMode | str, max_rate_hz: float) -> None:
        self.mode = EncodeMode(mode)
        self.min_interval_s = 0.0 if max_rate_hz <= 0 or math.isinf(max_rate_hz) else 1.0 / max_rate_hz

    def is_continuous(self, has_standing: bool) -> bool:
        if self.mode is EncodeMode.AUTO:
            return has_standing
        return self.mode is EncodeMode.CONTINUOUS

    def choose(self, raw: Sequence[float], newest_encoded: float | None, has_standing: bool,
               now: float, last_encode: float | None) -> EncodeDecision:
        """``raw``: stamps of unencoded frames, ascending; ``last_encode``: ``now`` of the last encode."""
        if not raw or not self.is_continuous(has_standing):
            return EncodeDecision()
        candidate = raw[-1]
        if newest_encoded is not None and candidate <= newest_encoded:
            return EncodeDecision()
        if last_encode is not None:
            remaining = last_encode + self.min_interval_s - now
            if remaining > _EPS:
                return EncodeDecision(retry_in_s=remaining)
        return EncodeDecision(stamp=candidate)
