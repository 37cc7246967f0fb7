"""Tracks with the real MobileSAM on sequences made from the real bear photos with known motion, so the
ground-truth masks move with the pixels: bags written with rosbags and replayed as the node runs
(``ovsam-ros bag --track``), scored with motmetrics."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from test_bag import BagBuilder, gt  # noqa: F401 (gt: a fixture)

from ovsam_ros.bag import read_results
from ovsam_ros.cli import main
from ovsam_ros.pipeline import PromptProcessor
from ovsam_ros.results import TrackState, mask_bbox
from ovsam_ros.tracking.metrics import mot_summary

T0 = 1_700_000_000
FPS = 10.0


@pytest.fixture(scope="module")
def toys(gt):  # noqa: F811 (the fixture imported above)
    """3.jpeg and its three toys (top to bottom: grey 5, red 1, blue 4) as (box, mask)."""
    rgb, objects = gt["3.jpeg"]
    return rgb, sorted(objects, key=lambda o: o[0][1])


@pytest.fixture(scope="module")
def processor(mobile_sam_path):
    from ovsam_ros.model.presets import build_model
    from ovsam_ros.predictor import Predictor

    return PromptProcessor(Predictor(build_model("mobilesam", files={"sam": mobile_sam_path})))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _body(mask: np.ndarray) -> tuple[float, float]:
    """A click on a toy's body: a third of its box in from the legs' side, half way down. (A click on
    the round head selects the head alone: that is SAM's answer to that click, not the tracker's.)"""
    x0, y0, x1, y1 = mask_bbox(mask)
    return x0 + 0.35 * (x1 - x0), (y0 + y1) / 2


def _moving_camera(rgb: np.ndarray, masks: list[np.ndarray], t: int, size: int = 420
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame t of a camera that pans (12, 6) px and zooms 2% per frame over the photo: the image and
    the ground-truth masks warped by the same affine map."""
    scale = 0.6 * (1 + 0.02 * t)
    centre = np.array([340.0, 530.0])
    offset = np.array([size / 2 - 60 + 12 * t, size / 2 - 30 + 6 * t]) - scale * centre
    warp = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]])
    image = cv2.warpAffine(rgb, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    moved = [cv2.warpAffine(m.astype(np.uint8), warp, (size, size), flags=cv2.INTER_NEAREST) > 0
             for m in masks]
    return image, moved


def _stamp(t: int) -> float:
    return T0 + t / FPS


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


@pytest.mark.slow
def test_one_click_follows_its_toy_under_pan_and_zoom_with_one_id(tmp_path, toys, mobile_sam_path):
    """`ovsam-ros bag --track`: a single click on frame 0 of 10; no other prompt. The toy (the middle one,
    between two look-alikes) keeps one id and IoU >= 0.85 to the moved ground truth on every frame;
    the MOT and COCO-video exports hold that one track."""
    rgb, objects = toys
    masks = [m for _, m in objects]
    b = BagBuilder()
    truth = []
    for t in range(10):
        image, moved = _moving_camera(rgb, masks, t)
        b.image(image, _stamp(t))
        truth.append(moved[1])
        if t == 0:
            b.points(_stamp(0), [_body(moved[1])], id="click")
    src = b.write(tmp_path / "in")
    out, mot, coco = tmp_path / "out", tmp_path / "tracks.txt", tmp_path / "tracks.json"
    argv = ["-q", "bag", str(src), str(out), "--track", "--tracks-mot", str(mot), "--tracks-coco", str(coco),
            "--model", "mobilesam", "--weights-dir", str(mobile_sam_path.parent)]
    assert main(argv) == 0

    results = [r for _, r in read_results(out)]
    assert [r.stamp for r in results] == pytest.approx([_stamp(t) for t in range(10)], abs=1e-6)
    ious = []
    for result, gt_mask in zip(results, truth, strict=True):
        (inst,) = result.instances
        ious.append(_iou(inst.mask, gt_mask))
        assert inst.prompt_id == "click" and inst.track_state == TrackState.CONFIRMED
    assert min(ious) >= 0.85, ious
    assert {i.track_id for r in results for i in r.instances} == {1}
    assert [r.instances[0].track_age for r in results] == list(range(10))
    lines = mot.read_text().splitlines()
    assert [line.split(",")[:2] for line in lines] == [[str(t + 1), "1"] for t in range(10)]
    (track,) = json.loads(coco.read_text())["annotations"]
    assert track["length"] == 10
    assert _iou(_decode(track["segmentations"][9]), truth[9]) == pytest.approx(ious[9])
    tracked = [{i.track_id: i.mask for i in r.instances} for r in results]
    summary = mot_summary([{1: m} for m in truth], tracked)
    assert summary["mota"] == 1.0 and summary["num_switches"] == 0

