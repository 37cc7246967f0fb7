"""Filtering before upscaling gives what upscaling every mask to the full frame gave.

The reference here is the computation the package used before (and SAM's ``postprocess_masks``
does): every low-res mask upscaled to a full-resolution float frame, stability score, area and box
on that frame, box NMS on those boxes. The real MobileSAM decodes real photos; prompts are the
photos' ground-truth boxes, clicks at their centres and SAM's point grid.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils import amg
from torchvision.ops import batched_nms

from ovsam_ros.config import EverythingConfig
from ovsam_ros.everything import LOW_RES_STABILITY_MARGIN, generate_candidates, point_grid
from ovsam_ros.model.sam import build_mobile_sam
from ovsam_ros.predictor import STABILITY_OFFSET, Predictor
from ovsam_ros.transforms import MaskUpscaler, upscale_logits

GRID = EverythingConfig(points_per_side=8)


@pytest.fixture(scope="module")
def photos(mobile_sam_path, bear):
    predictor = Predictor(build_mobile_sam(mobile_sam_path))
    coco = json.loads(bear.annotations.read_text())
    out = []
    for image in coco["images"]:
        rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / image["file_name"])), cv2.COLOR_BGR2RGB)
        boxes = np.array([[x, y, x + w, y + h] for a in coco["annotations"] if a["image_id"] == image["id"]
                          for x, y, w, h in [a["bbox"]]], dtype=np.float64)
        out.append((predictor.encode(rgb), boxes))
    return predictor, out


def _reference(predictor: Predictor, features, low: torch.Tensor) -> dict[str, torch.Tensor]:
    """The old full-frame post-processing of ``[K, 256, 256]`` low-res logits."""
    logits = upscale_logits(low[:, None], predictor.model.image_size, features.input_size,
                            features.original_size)[:, 0]
    masks = logits > 0
    return {"masks": masks, "logits": logits,
            "stability": amg.calculate_stability_score(logits, 0.0, STABILITY_OFFSET).nan_to_num(0.0),
            "area": masks.flatten(1).sum(1), "boxes": amg.batched_mask_to_box(masks)}


def _within_a_pixel(ours: torch.Tensor, logits: torch.Tensor) -> None:
    """Pixels that differ from the reference mask sit on its boundary: their reference logit is
    within float rounding of 0."""
    differ = ours != (logits > 0)
    assert differ.sum() <= 2
    assert torch.all(logits[differ].abs() < 1e-4)


@pytest.mark.slow
def test_crop_upscaling_matches_the_full_frame(photos) -> None:
    predictor, frames = photos
    for features, boxes in frames:
        upscaler = predictor.upscaler(features)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        low = predictor.decode_clicks(features, centres)[0].flatten(0, 1)
        ref = _reference(predictor, features, low)
        crops = upscaler.masks(low, STABILITY_OFFSET)
        torch.testing.assert_close(crops.stability, ref["stability"], atol=1e-4, rtol=0)
        assert torch.all((crops.area - ref["area"]).abs() <= 2)
        inclusive = crops.boxes.clone()
        inclusive[:, 2:] -= 1
        assert torch.all((inclusive - ref["boxes"]).abs() <= 1)
        for k, dense in enumerate(crops.dense()):
            _within_a_pixel(dense, ref["logits"][k])


@pytest.mark.slow
def test_predictions_match_the_full_frame(photos) -> None:
    predictor, frames = photos
    for features, boxes in frames:
        pred = predictor.predict_on(features, boxes=boxes, multimask_output=True, return_logits=True)
        ref = _reference(predictor, features, pred.low_res_logits.flatten(0, 1))
        torch.testing.assert_close(pred.logits.flatten(0, 1), ref["logits"])
        torch.testing.assert_close(pred.stability_score.flatten(), ref["stability"], atol=1e-4, rtol=0)
        for ours, logits in zip(pred.masks.flatten(0, 1), ref["logits"], strict=True):
            _within_a_pixel(ours, logits)


def _old_candidates(predictor: Predictor, features, config: EverythingConfig) -> dict[str, torch.Tensor]:
    """The old everything mode: every mask of every click upscaled, filtered, box NMS."""
    grid = point_grid(config.points_per_side, features.original_size)
    low, iou = predictor.decode_clicks(features, grid)
    low, iou = low.flatten(0, 1), iou.flatten()
    ref = _reference(predictor, features, low)
    keep = ((iou >= config.pred_iou_threshold) & (ref["stability"] >= config.stability_score_threshold)
            & (ref["area"] >= max(config.min_area, 1)))
    rows = keep.nonzero().flatten()
    boxes = ref["boxes"][rows].float()
    rows = rows[batched_nms(boxes, iou[rows], torch.zeros_like(rows), config.nms_threshold)]
    rows = rows[torch.argsort(iou[rows], descending=True, stable=True)]
    points = torch.as_tensor(grid, dtype=torch.float32).repeat_interleave(low.shape[0] // len(grid), 0)
    return {"masks": ref["masks"][rows], "boxes": ref["boxes"][rows].float(), "score": iou[rows],
            "stability": ref["stability"][rows], "points": points[rows], "iou": iou, "low": low,
            "full_stability": ref["stability"]}


@pytest.mark.slow
def test_everything_keeps_the_same_masks(photos) -> None:
    predictor, frames = photos
    for features, _ in frames:
        old = _old_candidates(predictor, features, GRID)
        new = generate_candidates(predictor, features, GRID, skip_covered_points=False)  # SAM's: every click
        assert len(new) == len(old["masks"]) > 0
        torch.testing.assert_close(new.points, old["points"])
        torch.testing.assert_close(new.mask_score, old["score"])
        torch.testing.assert_close(new.stability_score, old["stability"], atol=1e-4, rtol=0)
        assert torch.all((new.boxes - old["boxes"]).abs() <= 1)
        ious = mask_utils.iou(new.rles, mask_utils.encode(np.asfortranarray(
            old["masks"].permute(1, 2, 0).numpy().astype(np.uint8))), [0] * len(new))
        assert np.all(np.diag(np.asarray(ious)) > 0.999)
        # the low-res pre-filter's margin is far wider than the gap it has to cover: how far below
        # the full-resolution score the low-res one lies, for masks near or above the threshold
        h, w = predictor.upscaler(features).valid
        rough = amg.calculate_stability_score(old["low"][:, :h, :w], 0.0, STABILITY_OFFSET).nan_to_num(0.0)
        near = (old["iou"] >= GRID.pred_iou_threshold) & (old["full_stability"] >= 0.8)
        assert near.sum() > 0
        assert float((old["full_stability"] - rough)[near].max()) < LOW_RES_STABILITY_MARGIN / 2


def test_upscaler_crop_equals_full_frame_on_constructed_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = (((1024, 768), (1008, 756)), ((681, 1024), (300, 451)), ((1024, 1024), (64, 64)))
    for input_size, original in sizes:
        low = torch.randn(3, 256, 256, generator=generator) * 2 - 4
        low[1, 40:90, 30:70] += 10
        low[2] -= 20  # empty
        full = upscale_logits(low[:, None], 1024, input_size, original)[:, 0]
        crops = MaskUpscaler(256, 1024, input_size, original).masks(low)
        stability = amg.calculate_stability_score(full, 0.0, 1.0).nan_to_num(0.0)
        torch.testing.assert_close(crops.stability, stability)
        assert torch.equal(crops.area, (full > 0).flatten(1).sum(1))
        assert torch.equal(crops.dense(), full > 0)
        assert crops.boxes[2].tolist() == [0.0, 0.0, 0.0, 0.0]
