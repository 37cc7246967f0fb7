"""The overlay drawing: tint inside masks only, outlines on mask borders, captions, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from ovsam_ros.overlay import OverlayError, draw_overlay, instance_caption
from ovsam_ros.prompts import PromptKind
from ovsam_ros.results import Instance, mask_bbox
from ovsam_ros.ros.message_builders import instance_color


def _instance(mask: np.ndarray, label: str = "", id: str = "a") -> Instance:
    return Instance(mask=mask, bbox=mask_bbox(mask), mask_score=0.9, prompt_kind=PromptKind.BOX, prompt_id=id,
                    id=id, label=label, class_index=0 if label else -1, score=0.87 if label else 0.0)


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_tint_inside_mask_only_and_outline_on_border():
    image = np.full((120, 160, 3), 100, np.uint8)
    mask = _square(120, 160, 40, 90, 50, 120)
    out = draw_overlay(image, [_instance(mask)], alpha=0.5, outline=1, captions=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, np.full((120, 160, 3), 100, np.uint8)), "the input must stay untouched"
    colour = np.array(instance_color(0)) * 255
    expected = np.round(100 * 0.5 + colour * 0.5)
    assert np.abs(out[65, 85].astype(float) - expected).max() <= 1  # interior: tinted
    assert np.array_equal(out[5, 5], image[5, 5])  # far outside: untouched
    border = out[40, 50:120].astype(float)  # top edge of the mask: the outline colour
    assert np.abs(border - np.round(colour)).max(axis=1).min() <= 1


def test_caption_named_and_unnamed():
    mask = _square(50, 50, 10, 20, 10, 20)
    assert instance_caption(_instance(mask, label="mug")) == "mug 0.87"
    assert instance_caption(_instance(mask, id="click_3")) == "click_3"


def test_caption_is_drawn_near_the_box():
    image = np.zeros((200, 200, 3), np.uint8)
    mask = _square(200, 200, 100, 180, 60, 150)
    plain = draw_overlay(image, [_instance(mask, label="toy")], captions=False)
    captioned = draw_overlay(image, [_instance(mask, label="toy")])
    changed = np.argwhere((plain != captioned).any(axis=2))
    assert len(changed) > 0
    assert changed[:, 0].max() <= 100 and changed[:, 0].min() >= 60  # a text box just above the mask
    assert changed[:, 1].min() >= 60


def test_several_instances_get_distinct_colours():
    image = np.zeros((64, 64, 3), np.uint8)
    a, b = _square(64, 64, 0, 30, 0, 30), _square(64, 64, 34, 64, 34, 64)
    out = draw_overlay(image, [_instance(a, id="a"), _instance(b, id="b")], captions=False)
    assert not np.array_equal(out[15, 15], out[50, 50])


def test_empty_instance_list_returns_a_copy():
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    out = draw_overlay(image, [])
    assert np.array_equal(out, image) and out is not image


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                   np.zeros((10, 10, 4), np.uint8)])
def test_bad_image_is_a_clear_error(image):
    with pytest.raises(OverlayError, match="HxWx3 uint8"):
        draw_overlay(image, [])


def test_mask_size_mismatch_is_a_clear_error():
    with pytest.raises(OverlayError, match="mask"):
        draw_overlay(np.zeros((10, 10, 3), np.uint8), [_instance(np.zeros((5, 5), bool))])
    with pytest.raises(OverlayError, match="alpha"):
        draw_overlay(np.zeros((10, 10, 3), np.uint8), [], alpha=2.0)
