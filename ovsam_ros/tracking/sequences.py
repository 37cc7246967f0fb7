"""Video with known motion, made from a real photo: what the tracker is tested and benchmarked on.

No real video with object masks ships in a package reachable here, so the sequences are made from
the bear photos' third image and its ground-truth polygons (``python -m ovsam_ros.assets fetch``):

- ``pan_and_zoom``: a camera panning (12, 6) px and zooming 2% per frame over the whole photo; one
  click on the middle toy on frame 0;
- ``crossing``: the grey and the blue toy, cut out along their polygons, cross each other over the
  photo's table (the toys inpainted away), the blue one passing in front; boxed once, on frame 0;
- ``leaving``: the grey toy drives out of the picture, the blue one stands still, the red one is put
  down on frame 8; a detector boxes every toy at least a third in view, on every frame.

The ground truth of a toy is its warped or cut-out mask, less what covers it: it moves exactly with
the pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ovsam_ros import assets
from ovsam_ros.results import FrameResult, mask_bbox

FPS = 10.0
START = 1_700_000_000.0
"""Stamp of frame 0 (s): a realistic epoch, exact to the nanosecond in a bag."""
GREY, RED, BLUE = 0, 1, 2
"""The toys of the photo, top to bottom."""


@dataclass
class TrackingSequence:
    """Frames and, per frame, the ground truth ``{toy: visible mask}`` of the toys at least a third in
    view (what an annotator, and the detector of ``boxes``, would mark), the toys with any pixel in
    view, the detector's boxes (``[x0, y0, x1, y1]``, none on most frames of most sequences) and
    the clicks (``(prompt id, (x, y))``)."""

    name: str
    frames: list[np.ndarray]
    truth: list[dict[int, np.ndarray]]
    in_view: list[set[int]]
    boxes: list[list[np.ndarray]]
    clicks: dict[int, list[tuple[str, tuple[float, float]]]] = field(default_factory=dict)

    def stamp(self, t: int, start: float = START) -> float:
        return start + t / FPS

    def tracked(self, results: Iterable[FrameResult], start: float = START) -> list[dict[int, np.ndarray]]:
        """``{track id: mask}`` per frame from the results of a run (what motmetrics scores); the
        results of one frame (the re-prompts, then prompts answered on it) merged."""
        frames: list[dict[int, np.ndarray]] = [{} for _ in self.frames]
        for result in results:
            frames[round((result.stamp - start) * FPS)].update({i.track_id: i.mask for i in result.instances})
        return frames


def toys() -> tuple[np.ndarray, list[np.ndarray]]:
    """The photo (RGB) and its three toys' masks, top to bottom (grey 5, red 1, blue 4)."""
    bear = assets.bear_dataset()
    data = json.loads(bear.annotations.read_text())
    info = next(i for i in data["images"] if i["file_name"] == "3.jpeg")
    rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / info["file_name"])), cv2.COLOR_BGR2RGB)
    masks = []
    for ann in (a for a in data["annotations"] if a["image_id"] == info["id"]):
        rles = mask_utils.frPyObjects(ann["segmentation"], info["height"], info["width"])
        masks.append(mask_utils.decode(mask_utils.merge(rles)).astype(bool))
    return rgb, sorted(masks, key=lambda m: mask_bbox(m)[1])


class Scene:
    """The toys at 0.6 scale, moved over the photo's empty table (480 x 360)."""

    W, H, SCALE = 480, 360, 0.6

    def __init__(self, rgb: np.ndarray, masks: list[np.ndarray]) -> None:
        holes = cv2.dilate(np.any(masks, axis=0).astype(np.uint8), np.ones((25, 25), np.uint8))
        table = cv2.inpaint(rgb, holes, 15, cv2.INPAINT_TELEA)
        self.table = cv2.resize(table[100:700], (self.W, self.H), interpolation=cv2.INTER_AREA)
        self.toys = []
        for mask in masks:
            x0, y0, x1, y1 = (int(v) for v in mask_bbox(mask))
            cut = cv2.resize(rgb[y0:y1, x0:x1], None, fx=self.SCALE, fy=self.SCALE,
                             interpolation=cv2.INTER_AREA)
            size = (cut.shape[1], cut.shape[0])
            self.toys.append((cut, cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), size,
                                              interpolation=cv2.INTER_NEAREST) > 0))

    def width(self, toy: int) -> int:
        return self.toys[toy][1].shape[1]

    def frame(self, placements: list[tuple[int, int, int]]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Toys ``(toy, x, y)`` painted in order (later ones in front); the image and each toy's
        visible mask."""
        image, visible = self.table.copy(), {}
        for toy, x, y in placements:
            cut, mask = self.toys[toy]
            full = np.zeros((self.H, self.W), bool)
            h, w = mask.shape
            xs, ys, xe, ye = max(0, -x), max(0, -y), min(w, self.W - x), min(h, self.H - y)
            if xe > xs and ye > ys:
                inside = mask[ys:ye, xs:xe]
                full[y + ys:y + ye, x + xs:x + xe] = inside
                image[y + ys:y + ye, x + xs:x + xe][inside] = cut[ys:ye, xs:xe][inside]
            for behind in visible.values():
                behind &= ~full
            visible[toy] = full
        return image, visible

    def annotated(self, visible: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The toys at least a third in view."""
        return {toy: m for toy, m in visible.items() if m.sum() >= self.toys[toy][1].sum() / 3}


def _body(mask: np.ndarray) -> tuple[float, float]:
    """A click on a toy's body: a third of its box in from the legs' side, half way down. (A click on
    the round head selects the head alone: that is SAM's answer to that click, not the tracker's.)"""
    x0, y0, x1, y1 = mask_bbox(mask)
    return x0 + 0.35 * (x1 - x0), (y0 + y1) / 2


def pan_and_zoom(rgb: np.ndarray, masks: list[np.ndarray], frames: int = 10, size: int = 420
                 ) -> TrackingSequence:
    """The whole photo under a panning, zooming camera; the middle toy clicked on frame 0."""
    images, truth = [], []
    for t in range(frames):
        scale = 0.6 * (1 + 0.02 * t)
        centre = np.array([340.0, 530.0])
        offset = np.array([size / 2 - 60 + 12 * t, size / 2 - 30 + 6 * t]) - scale * centre
        warp = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]])
        images.append(cv2.warpAffine(rgb, warp, (size, size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT))
        truth.append({RED: cv2.warpAffine(masks[RED].astype(np.uint8), warp, (size, size),
                                          flags=cv2.INTER_NEAREST) > 0})
    return TrackingSequence("pan_and_zoom", images, truth, [{RED}] * frames, [[] for _ in range(frames)],
                            {0: [("click", _body(truth[0][RED]))]})


def crossing(scene: Scene, frames: int = 14) -> TrackingSequence:
    """Grey left to right, blue right to left and in front, 26 px a frame each; both boxed on frame 0."""
    images, truth = [], []
    for t in range(frames):
        blue_x = scene.W - 20 - scene.width(BLUE) - 26 * t
        image, visible = scene.frame([(GREY, 20 + 26 * t, 110), (BLUE, blue_x, 150)])
        images.append(image)
        truth.append(visible)
    boxes = [[np.array(mask_bbox(m)) for m in truth[0].values()]] + [[] for _ in range(frames - 1)]
    return TrackingSequence("crossing", images, truth, [set(v) for v in truth], boxes)


def leaving(scene: Scene, frames: int = 14, red_from: int = 8) -> TrackingSequence:
    """Grey drives right at 50 px a frame and out; blue stands; red is put down on ``red_from``."""
    images, truth, in_view, boxes = [], [], [], []
    for t in range(frames):
        placements = [(BLUE, 40, 200), (GREY, 150 + 50 * t, 40)] + ([(RED, 40, 20)] if t >= red_from else [])
        image, visible = scene.frame(placements)
        images.append(image)
        truth.append(scene.annotated(visible))
        in_view.append({toy for toy, m in visible.items() if m.any()})
        boxes.append([np.array(mask_bbox(m)) for m in truth[-1].values()])
    return TrackingSequence("leaving", images, truth, in_view, boxes)


def all_sequences() -> list[TrackingSequence]:
    rgb, masks = toys()
    scene = Scene(rgb, masks)
    return [pan_and_zoom(rgb, masks), crossing(scene), leaving(scene)]
