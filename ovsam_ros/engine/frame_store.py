"""Bounded buffers of frames ordered by stamp: encoded frames (the feature cache) and raw frames
waiting to be encoded. Not thread-safe on their own; the engine guards them with its lock."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from ovsam_ros.model.base import ImageFeatures

T = TypeVar("T")


@dataclass(frozen=True)
class RawFrame:
    """A received image the worker has not encoded (yet)."""

    stamp: float
    frame_id: str
    image: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded frame: every prompt on it is answered from ``features`` without re-encoding.

    ``original_size`` is (h, w) of the image; ``image`` is kept only if the engine is configured to.
    """

    stamp: float
    frame_id: str
    original_size: tuple[int, int]
    features: ImageFeatures
    image: np.ndarray | None = None

    def nbytes(self) -> int:
        return self.features.nbytes() + (0 if self.image is None else int(self.image.nbytes))


class StampBuffer(Generic[T]):
    """At most ``capacity`` items keyed by stamp, kept in stamp order; a full buffer evicts its oldest
    stamp (which may be the one just added, if that is the oldest). Insertion is O(capacity) at worst
    and O(log capacity) for frames arriving in order; capacities are small."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._stamps: list[float] = []
        self._items: dict[float, T] = {}

    def __len__(self) -> int:
        return len(self._stamps)

    def __contains__(self, stamp: float) -> bool:
        return stamp in self._items

    def __iter__(self) -> Iterator[T]:
        """Items oldest first."""
        return (self._items[s] for s in self._stamps)

    def stamps(self) -> list[float]:
        """Stamps, ascending (a copy)."""
        return list(self._stamps)

    def add(self, stamp: float, item: T) -> list[T]:
        """Insert ``item``; returns what left the buffer: an item with the same stamp, then overflow."""
        out: list[T] = []
        if stamp in self._items:
            out.append(self._items[stamp])
        else:
            bisect.insort(self._stamps, stamp)
        self._items[stamp] = item
        while len(self._stamps) > self.capacity:
            out.append(self._items.pop(self._stamps.pop(0)))
        return out

    def get(self, stamp: float) -> T | None:
        return self._items.get(stamp)

    def pop(self, stamp: float) -> T | None:
        item = self._items.pop(stamp, None)
        if item is not None:
            del self._stamps[bisect.bisect_left(self._stamps, stamp)]
        return item

    def newest(self) -> T | None:
        return self._items[self._stamps[-1]] if self._stamps else None

    def oldest(self) -> T | None:
        return self._items[self._stamps[0]] if self._stamps else None

    def clear(self) -> list[T]:
        """Empty the buffer; returns the items, oldest first."""
        items = list(self)
        self._stamps.clear()
        self._items.clear()
        return items
