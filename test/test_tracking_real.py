"""Tracks with the real MobileSAM on sequences made from the real bear photos with known motion, so the
ground-truth masks move with the pixels: bags written with rosbags and replayed as the node runs
(``ovsam-ros bag --track``), scored with motmetrics.

Two kinds of sequence: a camera panning and zooming over a whole photo, and scenes composed from the
photo's own toys (cut out along their ground-truth polygons) moved over its table (the toys inpainted
away), where the ground truth of each toy is the part of its cut-out that is still visible."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from test_bag import BagBuilder, gt  # noqa: F401 (gt: a fixture)

from ovsam_ros.bag import ReplayOptions, read_results, replay_bag
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


class Scene:
    """The toys of 3.jpeg at 0.6 scale, moved over its empty table (480 x 360)."""

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

    def frame(self, placements: list[tuple[int, int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Toys ``(index, x, y)`` painted in order (later ones in front); the image and each toy's
        visible mask."""
        image, visible = self.table.copy(), []
        for k, x, y in placements:
            cut, mask = self.toys[k]
            full = np.zeros((self.H, self.W), bool)
            h, w = mask.shape
            xs, ys, xe, ye = max(0, -x), max(0, -y), min(w, self.W - x), min(h, self.H - y)
            if xe > xs and ye > ys:
                full[y + ys:y + ye, x + xs:x + xe] = mask[ys:ye, xs:xe]
                region = image[y + ys:y + ye, x + xs:x + xe]
                region[mask[ys:ye, xs:xe]] = cut[ys:ye, xs:xe][mask[ys:ye, xs:xe]]
            for behind in visible:
                behind &= ~full
            visible.append(full)
        return image, visible


def _by_frame(results: list, frames: int) -> list[dict[int, np.ndarray]]:
    """{track id: mask} per frame; the results of one frame (re-prompts, then the boxes answered on
    it) merged."""
    tracked: list[dict[int, np.ndarray]] = [{} for _ in range(frames)]
    for result in results:
        tracked[round((result.stamp - T0) * FPS)].update({i.track_id: i.mask for i in result.instances})
    return tracked


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



@pytest.mark.slow
def test_two_toys_crossing_keep_their_ids(tmp_path, toys, processor):
    """Two toys boxed once on frame 0 (a detector that ran once), then crossing each other, one passing
    in front of the other: both tracks follow their toy through the crossing with zero id switches,
    and away from it each mask has IoU >= 0.85 with its toy."""
    rgb, objects = toys
    scene = Scene(rgb, [m for _, m in objects])
    b, truth = BagBuilder(), []
    frames = 14
    for t in range(frames):
        grey_x, blue_x = 20 + 26 * t, scene.W - 20 - scene.toys[2][1].shape[1] - 26 * t
        image, (grey, blue) = scene.frame([(0, grey_x, 110), (2, blue_x, 150)])
        b.image(image, _stamp(t))
        truth.append({1: grey, 2: blue})
        if t == 0:
            b.boxes(_stamp(0), [np.array(mask_bbox(grey)), np.array(mask_bbox(blue))])
    out = tmp_path / "out"
    options = ReplayOptions(track=True, progress=False)
    stats = replay_bag(b.write(tmp_path / "in", "mcap"), out, processor, options)
    assert stats["tracks"] == {"started": 2, "ended": 0}

    tracked = _by_frame([r for _, r in read_results(out)], frames)
    assert all(len(frame) == 2 for frame in tracked)
    ids = {k: next(i for i, m in tracked[0].items() if _iou(m, truth[0][k]) > 0.85) for k in (1, 2)}
    full = {k: truth[0][k].sum() for k in (1, 2)}
    in_view = [_iou(frame[ids[k]], gt_mask) for frame, gt_masks in zip(tracked, truth, strict=True)
               for k, gt_mask in gt_masks.items() if gt_mask.sum() >= 0.95 * full[k]]
    assert len(in_view) >= 20 and min(in_view) >= 0.8 and np.mean(in_view) >= 0.9, in_view
    summary = mot_summary([{ids[k]: m for k, m in f.items()} for f in truth], tracked)
    assert summary["num_switches"] == 0 and summary["mostly_tracked"] == 2, summary


@pytest.mark.slow
def test_a_toy_leaving_ends_its_track_and_a_new_toy_gets_a_new_id(tmp_path, toys, processor):
    """A detector boxes every toy that is at least a third in view, on every frame. The grey toy drives
    out of the picture: its track (re-prompted, so followed while even a sliver of it shows) ends with
    one event on /ovsam/track_events, tracking.max_lost_frames frames after it was last in view; the
    blue toy stands still and keeps its id throughout;
    the red toy, put down later, gets a new id."""
    rgb, objects = toys
    scene = Scene(rgb, [m for _, m in objects])
    b, truth, grey_in_view = BagBuilder(), [], []
    frames, red_from = 14, 8
    for t in range(frames):
        placements = [(2, 40, 200), (0, 150 + 50 * t, 40)] + ([(1, 40, 20)] if t >= red_from else [])
        image, visible = scene.frame(placements)
        b.image(image, _stamp(t))
        seen = {k: m for (k, _, _), m in zip(placements, visible, strict=True)
                if m.sum() >= scene.toys[k][1].sum() / 3}
        truth.append(seen)
        grey_in_view.append(bool(visible[1].any()))
        b.boxes(_stamp(t), [np.array(mask_bbox(m)) for m in seen.values()])
    out = tmp_path / "out"
    options = ReplayOptions(track=True, progress=False)
    stats = replay_bag(b.write(tmp_path / "in"), out, processor, options)

    tracked = _by_frame([r for _, r in read_results(out)], frames)
    ids = [{k: next(i for i, m in f.items() if _iou(m, gt_mask) > 0.8) for k, gt_mask in seen.items()}
           for f, seen in zip(tracked, truth, strict=True)]
    assert len({frame_ids[2] for frame_ids in ids}) == 1  # blue: one id on every frame
    grey = {frame_ids[0] for frame_ids in ids if 0 in frame_ids}
    red = {frame_ids[1] for frame_ids in ids if 1 in frame_ids}
    assert len(grey) == 1 and len(red) == 1 and grey != red and not (grey | red) & {ids[0][2]}
    last_grey = max(t for t, in_view in enumerate(grey_in_view) if in_view)
    assert last_grey < frames - options.config.tracking.max_lost_frames - 1
    events = read_results(out, "/ovsam/track_events")
    assert [[i.track_id for i in r.instances] for _, r in events] == [list(grey)]
    assert events[0][1].instances[0].track_state == TrackState.ENDED
    ended_at = round((events[0][1].stamp - T0) * FPS)
    assert ended_at == last_grey + options.config.tracking.max_lost_frames + 1
    assert stats["tracks"] == {"started": 3, "ended": 1}
    summary = mot_summary([{ids[t][k]: m for k, m in seen.items()} for t, seen in enumerate(truth)],
                          tracked)
    assert summary["num_switches"] == 0 and summary["num_unique_objects"] == 3, summary
