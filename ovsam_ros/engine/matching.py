"""Which frame answers a prompt: pure rules on stamps, shared by the live engine and the replay.

1. Stamp 0 means the newest frame.
2. The nearest frame within ``slop`` of the prompt's stamp answers it.
3. A prompt newer than the newest frame (beyond the slop) waits for the next frame until its wait
   expires.
4. Otherwise the nearest frame answers it if the prompt is at most ``max_age`` from the newest frame
   (older than anything kept: the oldest frame; between frames: the nearer one; newer after the
   wait: the newest); beyond that it is rejected as too old or too new.
On equal distance an encoded frame wins over a raw one (no encode needed), then the older stamp.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-9


class MatchAction(enum.Enum):
    USE = "use"
    WAIT = "wait"
    REJECT = "reject"


class RejectReason(str, enum.Enum):
    """Why a prompt got no answer; the value is what ``on_error`` receives and stats count."""

    NO_FRAME = "no_frame"  # no frame arrived before the wait expired
    TOO_OLD = "too_old"  # older than max_prompt_age_s before the newest frame
    TOO_NEW = "too_new"  # newer than max_prompt_age_s after the newest frame, after waiting
    QUEUE_FULL = "queue_full"  # dropped from the bounded prompt queue for a newer prompt
    STOPPED = "stopped"  # the engine stopped before answering
    FAILED = "failed"  # the encoder or decoder raised


@dataclass(frozen=True)
class Match:
    """``stamp`` of the chosen frame (USE), ``encoded`` whether it is already encoded, ``exact`` whether
    it lies within the slop; ``reason`` for REJECT."""

    action: MatchAction
    stamp: float | None = None
    encoded: bool = False
    exact: bool = True
    reason: RejectReason | None = None


def _neighbours(stamps: Sequence[float], target: float, encoded: bool) -> list[tuple[float, bool]]:
    i = bisect.bisect_left(stamps, target)
    return [(stamps[j], encoded) for j in (i - 1, i) if 0 <= j < len(stamps)]


def match_stamp(stamp: float, encoded: Sequence[float], raw: Sequence[float], *, slop: float,
                max_age: float, wait_expired: bool) -> Match:
    """Match a prompt ``stamp`` to one of the ``encoded`` or ``raw`` frame stamps (each ascending)."""
    newest = max(s[-1] for s in (encoded, raw) if s) if (encoded or raw) else None
    if newest is None:
        return Match(MatchAction.REJECT, reason=RejectReason.NO_FRAME) if wait_expired else Match(
            MatchAction.WAIT)
    target = newest if stamp == 0 else stamp
    candidates = _neighbours(encoded, target, True) + _neighbours(raw, target, False)
    # Distances compared at nanosecond resolution (ROS stamps), so float noise cannot break a tie.
    best, is_encoded = min(candidates, key=lambda c: (round(abs(c[0] - target), 9), not c[1], c[0]))
    distance = abs(best - target)
    if distance <= slop + _EPS:
        return Match(MatchAction.USE, stamp=best, encoded=is_encoded)
    if target > newest and not wait_expired:
        return Match(MatchAction.WAIT)
    if abs(newest - target) > max_age + _EPS:
        reason = RejectReason.TOO_OLD if target < newest else RejectReason.TOO_NEW
        return Match(MatchAction.REJECT, reason=reason)
    return Match(MatchAction.USE, stamp=best, encoded=is_encoded, exact=False)
