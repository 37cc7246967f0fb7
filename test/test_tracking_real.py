"""Tracks with the real MobileSAM on sequences with known motion made from a real photo
(:mod:`ovsam_ros.tracking.sequences`): bags written with rosbags and replayed as the node runs
(``ovsam-ros bag --track``), scored with motmetrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from test_bag import BagBuilder

from ovsam_ros.bag import ReplayOptions, read_results, replay_bag
from ovsam_ros.cli import main
from ovsam_ros.pipeline import PromptProcessor
from ovsam_ros.results import TrackState
from ovsam_ros.tracking import sequences
from ovsam_ros.tracking.metrics import mot_summary
from ovsam_ros.tracking.sequences import BLUE, GREY, RED, TrackingSequence

T0 = sequences.START


@pytest.fixture(scope="module")
def toys(bear):
    return sequences.toys()


@pytest.fixture(scope="module")
def scene(toys):
    return sequences.Scene(*toys)


@pytest.fixture(scope="module")
def processor(mobile_sam_path):
    from ovsam_ros.model.presets import build_model
    from ovsam_ros.predictor import Predictor

    return PromptProcessor(Predictor(build_model("mobilesam", files={"sam": mobile_sam_path})))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _bag(seq: TrackingSequence, path: Path, storage: str = "sqlite3") -> Path:
    """The sequence as a camera's bag: each frame, then its clicks and its detector boxes."""
    b = BagBuilder()
    for t, image in enumerate(seq.frames):
        b.image(image, seq.stamp(t, T0))
        for prompt_id, xy in seq.clicks.get(t, []):
            b.points(seq.stamp(t, T0), [xy], id=prompt_id)
        if seq.boxes[t]:
            b.boxes(seq.stamp(t, T0), seq.boxes[t])
    return b.write(path, storage)


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


@pytest.mark.slow
def test_one_click_follows_its_toy_under_pan_and_zoom_with_one_id(tmp_path, toys, mobile_sam_path):
    """`ovsam-ros bag --track`: a single click on frame 0 of 10; no other prompt. The toy (the middle one,
    between two look-alikes) keeps one id and IoU >= 0.85 to the moved ground truth on every frame;
    the MOT and COCO-video exports hold that one track."""
    seq = sequences.pan_and_zoom(*toys)
    out, mot, coco = tmp_path / "out", tmp_path / "tracks.txt", tmp_path / "tracks.json"
    argv = ["-q", "bag", str(_bag(seq, tmp_path / "in")), str(out), "--track", "--tracks-mot", str(mot),
            "--tracks-coco", str(coco), "--model", "mobilesam", "--weights-dir", str(mobile_sam_path.parent)]
    assert main(argv) == 0

    results = [r for _, r in read_results(out)]
    assert [r.stamp for r in results] == pytest.approx([seq.stamp(t, T0) for t in range(10)], abs=1e-6)
    ious = []
    for result, truth in zip(results, seq.truth, strict=True):
        (inst,) = result.instances
        ious.append(_iou(inst.mask, truth[RED]))
        assert inst.prompt_id == "click" and inst.track_state == TrackState.CONFIRMED
    assert min(ious) >= 0.85, ious
    assert {i.track_id for r in results for i in r.instances} == {1}
    assert [r.instances[0].track_age for r in results] == list(range(10))
    lines = mot.read_text().splitlines()
    assert [line.split(",")[:2] for line in lines] == [[str(t + 1), "1"] for t in range(10)]
    (track,) = json.loads(coco.read_text())["annotations"]
    assert track["length"] == 10
    assert _iou(_decode(track["segmentations"][9]), seq.truth[9][RED]) == pytest.approx(ious[9])
    summary = mot_summary(seq.truth, seq.tracked(results))
    assert summary["mota"] == 1.0 and summary["num_switches"] == 0


@pytest.mark.slow
def test_two_toys_crossing_keep_their_ids(tmp_path, scene, processor):
    """Two toys boxed once on frame 0 (a detector that ran once), then crossing each other, one passing
    in front of the other: both tracks follow their toy through the crossing with zero id switches,
    and while in full view each mask has IoU >= 0.8 with its toy (0.9 on average)."""
    seq = sequences.crossing(scene)
    out = tmp_path / "out"
    stats = replay_bag(_bag(seq, tmp_path / "in", "mcap"), out, processor,
                       ReplayOptions(track=True, progress=False))
    assert stats["tracks"] == {"started": 2, "ended": 0}

    tracked = seq.tracked(r for _, r in read_results(out))
    assert all(len(frame) == 2 for frame in tracked)
    ids = {toy: next(i for i, m in tracked[0].items() if _iou(m, seq.truth[0][toy]) > 0.85)
           for toy in (GREY, BLUE)}
    full = {toy: seq.truth[0][toy].sum() for toy in ids}
    in_view = [_iou(frame[ids[toy]], mask) for frame, truth in zip(tracked, seq.truth, strict=True)
               for toy, mask in truth.items() if mask.sum() >= 0.95 * full[toy]]
    assert len(in_view) >= 20 and min(in_view) >= 0.8 and np.mean(in_view) >= 0.9, in_view
    summary = mot_summary(seq.truth, tracked)
    assert summary["num_switches"] == 0 and summary["mostly_tracked"] == 2, summary


@pytest.mark.slow
def test_a_toy_leaving_ends_its_track_and_a_new_toy_gets_a_new_id(tmp_path, scene, processor):
    """A detector boxes every toy that is at least a third in view, on every frame. The grey toy drives
    out of the picture: its track (re-prompted, so followed while even a sliver of it shows) ends with
    one event on /ovsam/track_events, tracking.max_lost_frames frames after it was last in view; the
    blue toy stands still and keeps its id throughout; the red toy, put down later, gets a new id."""
    seq = sequences.leaving(scene)
    out = tmp_path / "out"
    options = ReplayOptions(track=True, progress=False)
    stats = replay_bag(_bag(seq, tmp_path / "in"), out, processor, options)

    tracked = seq.tracked(r for _, r in read_results(out))
    ids = [{toy: next(i for i, m in frame.items() if _iou(m, mask) > 0.8) for toy, mask in truth.items()}
           for frame, truth in zip(tracked, seq.truth, strict=True)]
    assert len({frame_ids[BLUE] for frame_ids in ids}) == 1  # one id on every frame
    grey = {frame_ids[GREY] for frame_ids in ids if GREY in frame_ids}
    red = {frame_ids[RED] for frame_ids in ids if RED in frame_ids}
    assert len(grey) == 1 and len(red) == 1 and grey != red and not (grey | red) & {ids[0][BLUE]}
    last_grey = max(t for t, toys in enumerate(seq.in_view) if GREY in toys)
    max_lost = options.config.tracking.max_lost_frames
    assert last_grey < len(seq.frames) - max_lost - 1
    events = read_results(out, "/ovsam/track_events")
    assert [[i.track_id for i in r.instances] for _, r in events] == [list(grey)]
    assert events[0][1].instances[0].track_state == TrackState.ENDED
    assert round((events[0][1].stamp - T0) * sequences.FPS) == last_grey + max_lost + 1
    assert stats["tracks"] == {"started": 3, "ended": 1}
    summary = mot_summary(seq.truth, tracked)
    assert summary["num_switches"] == 0 and summary["num_unique_objects"] == 3, summary
