"""Masks as images: roi-cropped per-instance masks, the instance id image and the class image.

A full-resolution mask per instance would cost H*W bytes each on the wire; cropping to the mask's
box keeps an ``InstanceArray`` small while staying a plain sensor_msgs/Image any tool can show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ovsam_ros.results import FrameResult, mask_bbox
from ovsam_ros.ros.factory import MessageFactory
from ovsam_ros.ros.image_conversions import ConversionError, image_to_numpy, numpy_to_image

UNLABELED = 65535
"""Class-image value of pixels no named instance covers: vision_msgs' UNLABELED uint16 class id."""


def mask_to_roi_image(factory: MessageFactory, mask: np.ndarray, header: Any = None) -> tuple[Any, Any]:
    """(mono8 0/255 Image cropped to the mask's box, RegionOfInterest); an empty mask gives 0x0 / zeros."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConversionError(f"a mask must be [H, W], got shape {mask.shape}")
    x0, y0, x1, y1 = (int(v) for v in mask_bbox(mask))
    crop = np.where(mask[y0:y1, x0:x1] > 0, np.uint8(255), np.uint8(0))
    if crop.size == 0:
        fields = {} if header is None else {"header": header}
        image = factory.make("sensor_msgs/msg/Image", encoding="mono8", **fields)
    else:
        image = numpy_to_image(factory, crop, "mono8", header)
    roi = factory.make("sensor_msgs/msg/RegionOfInterest", x_offset=x0, y_offset=y0,
                       width=x1 - x0, height=y1 - y0, do_rectify=False)
    return image, roi


def roi_image_to_mask(image: Any, roi: Any, image_size: tuple[int, int]) -> np.ndarray:
    """The full-resolution bool mask back from an roi-cropped mono8 mask image; ``image_size`` (h, w)."""
    height, width = image_size
    mask = np.zeros((height, width), dtype=bool)
    if int(roi.width) == 0 or int(roi.height) == 0:
        return mask
    if image.encoding != "mono8":
        raise ConversionError(f"a mask image must be mono8, got {image.encoding!r}")
    crop = image_to_numpy(image)
    x0, y0 = int(roi.x_offset), int(roi.y_offset)
    if crop.shape != (int(roi.height), int(roi.width)):
        raise ConversionError(f"mask image is {crop.shape[1]}x{crop.shape[0]} but its roi is "
                              f"{roi.width}x{roi.height}")
    if x0 + crop.shape[1] > width or y0 + crop.shape[0] > height:
        raise ConversionError(f"mask roi ({x0}, {y0}, {roi.width}x{roi.height}) exceeds the "
                              f"{width}x{height} image")
    mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop > 0
    return mask


def _paint(result: FrameResult, values: Sequence[int], background: int) -> np.ndarray:
    """Largest instances first, so a small object on a large one (a mug on a table) stays visible."""
    height, width = result.image_size
    out = np.full((height, width), background, dtype=np.uint16)
    areas = [int(np.count_nonzero(inst.mask)) for inst in result.instances]
    for k in sorted(range(len(areas)), key=lambda k: -areas[k]):
        mask = result.instances[k].mask
        if mask.shape != (height, width):
            raise ConversionError(f"instance {k} mask is {mask.shape}, the frame is {(height, width)}")
        out[mask > 0] = values[k]
    return out


def instance_id_image(result: FrameResult) -> np.ndarray:
    """uint16: 0 = background; each instance's ``track_id`` when all are tracked (ids stay the same
    across frames), else k + 1 = ``result.instances[k]`` (the order of ``InstanceArray.instances``)."""
    if len(result.instances) >= UNLABELED:
        raise ConversionError(f"{len(result.instances)} instances do not fit a 16-bit id image")
    tracked = [inst.track_id for inst in result.instances]
    if tracked and all(0 < t < UNLABELED for t in tracked):
        return _paint(result, tracked, 0)
    return _paint(result, range(1, len(result.instances) + 1), 0)


def class_id_image(result: FrameResult) -> np.ndarray:
    """uint16 class index of the active vocabulary per pixel; :data:`UNLABELED` where none.

    Values are vision_msgs ``VisionClass.class_id``s: see :func:`label_map`.
    """
    for inst in result.instances:
        if inst.class_index >= UNLABELED:
            raise ConversionError(f"class index {inst.class_index} does not fit a 16-bit class image")
    values = [inst.class_index if inst.class_index >= 0 else UNLABELED for inst in result.instances]
    return _paint(result, values, UNLABELED)


def label_map(names: Sequence[str]) -> list[tuple[int, str]]:
    """``(class_id, name)`` pairs for vision_msgs/LabelInfo: class_id = vocabulary index, plus UNLABELED.

    Follows the LabelInfo convention that the largest uint16 value is the "UNLABELED" class; a
    vocabulary may therefore hold at most 65,535 classes (ImageNet-21k has 21,843).
    """
    if len(names) > UNLABELED:
        raise ConversionError(f"a vocabulary of {len(names)} classes does not fit 16-bit class ids")
    return [*enumerate(names), (UNLABELED, "unlabeled")]
