"""Counters and latency percentiles the node reports in /diagnostics; safe to update from any thread."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np


class LatencyWindow:
    """Percentiles over the last ``size`` samples (recent behaviour), maximum over all of them."""

    def __init__(self, size: int = 1024) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._count = 0
        self._max = 0.0

    def add(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self._samples.append(ms)
        self._count += 1
        self._max = max(self._max, ms)

    def summary(self) -> dict[str, float]:
        """``count``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``max_ms`` (zeros before the first sample)."""
        if not self._samples:
            return {"count": 0, "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        p50, p90, p99 = np.percentile(np.fromiter(self._samples, float), [50, 90, 99])
        return {"count": self._count, "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
                "max_ms": self._max}


class EngineStats:
    """Named counters, rejections by reason, and encode/decode latency windows, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._encode = LatencyWindow()
        self._decode = LatencyWindow()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def encode_took(self, seconds: float) -> None:
        with self._lock:
            self._encode.add(seconds)

    def decode_took(self, seconds: float) -> None:
        with self._lock:
            self._decode.add(seconds)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self, names: tuple[str, ...]) -> dict:
        """The counters in ``names`` (zero when never counted), rejections and latencies."""
        with self._lock:
            out: dict = {name: self._counts[name] for name in names}
            out["prompts_rejected"] = sum(self._rejected.values())
            out["rejected_by_reason"] = dict(self._rejected)
            out["encode_latency"] = self._encode.summary()
            out["decode_latency"] = self._decode.summary()
            return out
