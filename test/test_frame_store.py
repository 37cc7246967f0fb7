"""The stamp-keyed ring buffers behind the feature cache and the raw-frame buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovsam_ros.engine import EncodedFrame, RawFrame, StampBuffer
from ovsam_ros.model.base import ImageFeatures


def test_keeps_stamp_order_whatever_the_arrival_order():
    buf: StampBuffer[str] = StampBuffer(4)
    for stamp in (3.0, 1.0, 2.0):
        assert buf.add(stamp, f"f{stamp}") == []
    assert buf.stamps() == [1.0, 2.0, 3.0]
    assert list(buf) == ["f1.0", "f2.0", "f3.0"]
    assert buf.oldest() == "f1.0" and buf.newest() == "f3.0"


def test_full_buffer_evicts_the_oldest_stamp_even_the_one_just_added():
    buf: StampBuffer[int] = StampBuffer(2)
    buf.add(1.0, 1)
    buf.add(2.0, 2)
    assert buf.add(3.0, 3) == [1]
    assert buf.add(0.5, 0) == [0]  # older than everything kept: it is the one to go
    assert buf.stamps() == [2.0, 3.0]
    assert len(buf) == 2


def test_same_stamp_replaces_and_reports_the_old_item():
    buf: StampBuffer[str] = StampBuffer(3)
    buf.add(1.0, "a")
    assert buf.add(1.0, "b") == ["a"]
    assert buf.get(1.0) == "b" and len(buf) == 1


def test_pop_get_contains_clear():
    buf: StampBuffer[int] = StampBuffer(3)
    for i in range(3):
        buf.add(float(i), i)
    assert 1.0 in buf and buf.pop(1.0) == 1 and 1.0 not in buf
    assert buf.pop(1.0) is None and buf.get(7.0) is None
    assert buf.stamps() == [0.0, 2.0]
    assert buf.clear() == [0, 2]
    assert len(buf) == 0 and buf.newest() is None and buf.oldest() is None


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        StampBuffer(0)


def test_frames_report_size_and_bytes():
    image = np.zeros((5, 7, 3), np.uint8)
    raw = RawFrame(1.0, "cam", image)
    assert raw.size == (5, 7)
    features = ImageFeatures(embedding=torch.zeros(1, 256, 4, 4), clip_levels=(torch.zeros(2, 2),))
    without = EncodedFrame(1.0, "cam", raw.size, features)
    with_image = EncodedFrame(1.0, "cam", raw.size, features, image)
    assert without.nbytes() == (256 * 16 + 4) * 4
    assert with_image.nbytes() == without.nbytes() + image.nbytes
