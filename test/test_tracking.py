"""Tracker logic on synthetic masks (cheap): Hungarian association, hysteresis, ends, ids, labels, export.

The real-model sequences are in test_tracking_real.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovsam_ros.config import TrackingConfig
from ovsam_ros.prompts import PromptKind
from ovsam_ros.results import FrameResult, Instance, TrackState, mask_bbox
from ovsam_ros.tracking import (
    REPROMPT_PREFIX,
    Tracker,
    associate,
    cost_matrix,
    mask_iou_matrix,
    shift_mask,
)
from ovsam_ros.tracking.export import TrackExportError, coco_video, mot_lines
from ovsam_ros.tracking.metrics import mot_summary

H, W = 120, 160


def disc(cx: float, cy: float, r: float = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def inst(mask: np.ndarray, kind: PromptKind = PromptKind.EVERYTHING, prompt_id: str = "everything",
         top_k: list[tuple[str, float]] | None = None) -> Instance:
    top_k = top_k or []
    return Instance(mask=mask, bbox=mask_bbox(mask), mask_score=0.9, prompt_kind=kind, prompt_id=prompt_id,
                    label=top_k[0][0] if top_k else "", score=top_k[0][1] if top_k else 0.0,
                    class_index=0 if top_k else -1, top_k=top_k)


def frame(t: int, instances: list[Instance], new: bool = True) -> FrameResult:
    return FrameResult(stamp=1.0 + 0.1 * t, frame_id="cam", image_size=(H, W), instances=instances,
                       new_frame=new)


def test_iou_matrix_and_shift():
    a, b = disc(40, 40), disc(44, 40)
    iou = mask_iou_matrix([a, b], [a, b, np.zeros_like(a)])
    assert iou[0, 0] == pytest.approx(1.0) and iou[1, 1] == pytest.approx(1.0)
    exact = (a & b).sum() / (a | b).sum()
    assert iou[0, 1] == pytest.approx(exact, abs=1e-6) and iou[0, 2] == 0.0
    assert (shift_mask(a, 4, 0) == b).all()
    assert not shift_mask(a, W, 0).any()


def test_hungarian_prefers_the_global_optimum_and_gates():
    # track 0 overlaps both instances; greedy would give it instance 0 and leave track 1 unmatched
    iou = np.array([[0.6, 0.5], [0.55, 0.0]])
    a = associate(cost_matrix(iou, np.full(iou.shape, np.nan), 0.3, 0.3))
    assert sorted(a.matches) == [(0, 1), (1, 0)]
    gated = associate(cost_matrix(np.array([[0.1]]), np.array([[1.0]]), 0.3, 0.3))
    assert gated.matches == [] and gated.unmatched_tracks == [0] and gated.unmatched_instances == [0]


def test_standing_outputs_keep_ids_through_crossing_and_a_noisy_label():
    tracker = Tracker(TrackingConfig(enabled=True, min_hits=2))
    ids = {}
    for t in range(12):  # two discs cross at t ~ 5.5 (x 20 -> 130 and 130 -> 20), labels noisy on frame 6
        a, b = disc(20 + 10 * t, 50), disc(130 - 10 * t, 70)
        label_a = [("cat", 0.4), ("dog", 0.35)] if t == 6 else [("dog", 0.8), ("cat", 0.1)]
        update = tracker.update(frame(t, [inst(a, top_k=label_a), inst(b, top_k=[("cat", 0.9)])]))
        assert len(update.instances) == 2
        first, second = update.instances
        ids.setdefault("a", first.track_id)
        ids.setdefault("b", second.track_id)
        assert (first.track_id, second.track_id) == (ids["a"], ids["b"])
        assert first.label == "dog" and second.label == "cat"  # mean probability over the track
        assert first.id == str(first.track_id) and first.track_age == t
        assert first.track_state == (TrackState.TENTATIVE if t == 0 else TrackState.CONFIRMED)
    assert ids["a"] != ids["b"]


def test_hysteresis_lost_then_found_then_ended_with_an_event():
    cfg = TrackingConfig(enabled=True, min_hits=1, max_lost_frames=2, match_iou=0.3)
    tracker = Tracker(cfg)
    first = tracker.update(frame(0, [inst(disc(50, 50))])).instances[0]
    assert tracker.update(frame(1, [])).ended == []
    assert tracker.tracks[0].state == TrackState.LOST
    again = tracker.update(frame(2, [inst(disc(52, 50))])).instances[0]
    assert again.track_id == first.track_id and again.track_state == TrackState.CONFIRMED
    assert tracker.update(frame(3, [])).ended == [] and tracker.update(frame(4, [])).ended == []
    ended = tracker.update(frame(5, [])).ended
    assert [e.track_id for e in ended] == [first.track_id] and ended[0].track_state == TrackState.ENDED
    new = tracker.update(frame(6, [inst(disc(50, 50))])).instances[0]
    assert new.track_id != first.track_id  # ids are never reused while the counter has room


def test_a_tentative_track_ends_on_its_first_miss_and_cache_hits_count_no_miss():
    tracker = Tracker(TrackingConfig(enabled=True, min_hits=3))
    tracker.update(frame(0, [inst(disc(50, 50))]))
    tracker.update(frame(1, [], new=False))  # a one-off answered on a cached frame: no standing outputs
    assert len(tracker.tracks) == 1
    assert len(tracker.update(frame(2, [])).ended) == 1 and tracker.tracks == []


def test_a_click_is_reprompted_from_its_moved_box_and_checked():
    cfg = TrackingConfig(enabled=True, keep_iou=0.5, reacquire_iou=0.7, max_lost_frames=1, box_margin=0.0)
    tracker = Tracker(cfg)
    click = tracker.update(frame(0, [inst(disc(40, 60), PromptKind.POINT, "click_1")])).instances[0]
    assert tracker.reprompts()[0].id == f"{REPROMPT_PREFIX}{click.track_id}"
    reprompt = f"{REPROMPT_PREFIX}{click.track_id}"
    for t in range(1, 4):  # moving 5 px per frame: the re-prompt box leads by the learned velocity
        update = tracker.update(frame(t, [inst(disc(40 + 5 * t, 60), PromptKind.BOX, reprompt)]))
        out = update.instances[0]
        assert out.track_id == click.track_id and out.prompt_kind == PromptKind.POINT
        assert out.prompt_id == "click_1"
    box = tracker.reprompts()[0].box
    assert box[0] == pytest.approx(mask_bbox(disc(60, 60))[0], abs=1.0)  # last box + 5 px
    tracker.config = TrackingConfig(enabled=True, max_lost_frames=1, box_margin=0.5)
    grown = tracker.reprompts()[0].box
    assert grown[2] - grown[0] == pytest.approx(2 * (box[2] - box[0]), abs=1.0)
    # a re-prompt that jumped elsewhere is not the object: a miss (lost), then ended
    wrong = inst(disc(120, 20), PromptKind.BOX, reprompt)
    assert tracker.update(frame(4, [wrong])).instances == []
    assert tracker.tracks[0].state == TrackState.LOST
    assert [e.track_id for e in tracker.update(frame(5, [wrong])).ended] == [click.track_id]
    assert tracker.reprompts() == []


def test_everything_finding_a_clicked_object_does_not_duplicate_it():
    tracker = Tracker(TrackingConfig(enabled=True))
    click = inst(disc(40, 60), PromptKind.POINT, "click_1")
    other = inst(disc(120, 60))
    update = tracker.update(frame(0, [click, inst(disc(41, 60)), other]))
    assert [i.prompt_id for i in update.instances] == ["click_1", "everything"]
    assert len({i.track_id for i in update.instances}) == 2


def test_mot_lines_score_perfectly_with_motmetrics_and_coco_video_holds_tracks():
    tracker = Tracker(TrackingConfig(enabled=True, min_hits=1))
    results = []
    for t in range(6):
        result = frame(t, [inst(disc(20 + 10 * t, 50), top_k=[("dog", 0.9)]), inst(disc(130 - 10 * t, 70))])
        result.instances = tracker.update(result).instances
        results.append(result)
    lines = mot_lines(results)
    assert len(lines) == 12 and lines[0].startswith("1,") and len({line.split(",")[1] for line in lines}) == 2
    truth = [{1: disc(20 + 10 * t, 50), 2: disc(130 - 10 * t, 70)} for t in range(6)]
    tracked = [{i.track_id: i.mask for i in r.instances} for r in results]
    perfect = mot_summary(truth, tracked)
    assert perfect["mota"] == 1.0 and perfect["idf1"] == 1.0 and perfect["num_switches"] == 0
    swapped = [dict(zip(frame_ids, frame_masks, strict=True)) for frame_ids, frame_masks in
               ((list(f)[::-1] if t >= 3 else list(f), list(f.values())) for t, f in enumerate(tracked))]
    assert mot_summary(truth, swapped)["num_switches"] == 2  # the metric sees a swap
    video = coco_video(results, ["dog"])
    assert len(video["annotations"]) == 2 and video["videos"][0]["length"] == 6
    dog = next(a for a in video["annotations"] if a["category_id"] == 1)
    assert all(s is not None for s in dog["segmentations"])
    json.dumps(video)
    with pytest.raises(TrackExportError, match="--track"):
        mot_lines([frame(0, [inst(disc(20, 20))])])


def test_a_fast_first_move_keeps_its_id_by_box_overlap():
    """A ring (a toy's outline, non-convex) boxed by a detector moves a third of its width before the
    track has a velocity: its mask overlaps its last one less than the gate, its box more; the id
    stays."""
    def ring(cx: float) -> np.ndarray:
        return disc(cx, 60, 24) & ~disc(cx, 60, 16)

    tracker = Tracker(TrackingConfig(enabled=True, match_iou=0.3))
    first = tracker.update(frame(0, [inst(ring(50), PromptKind.BOX, "det_0")])).instances[0]
    assert mask_iou_matrix([ring(50)], [ring(66)])[0, 0] < 0.3
    moved = tracker.update(frame(1, [inst(ring(66), PromptKind.BOX, "det_0")])).instances[0]
    assert moved.track_id == first.track_id and len(tracker.tracks) == 1
    far = tracker.update(frame(2, [inst(ring(130), PromptKind.BOX, "det_0")])).instances[0]
    assert far.track_id != first.track_id  # no overlap of either kind: a new object


def test_per_mask_work_within_the_instance_box_equals_the_whole_frame():
    """main_box and colour_histogram look only inside the box every Instance carries: same answers."""
    from ovsam_ros.tracking.regions import colour_histogram, main_box

    mask = disc(60, 50, 20) | disc(140, 110, 3)  # an object and a stray speck far from it
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    box = mask_bbox(mask)
    assert main_box(mask, box).tolist() == main_box(mask).tolist() == list(mask_bbox(disc(60, 50, 20)))
    assert np.array_equal(colour_histogram(image, mask, box), colour_histogram(image, mask))


def test_a_reprompt_that_looks_like_another_object_is_not_the_track():
    """Same place, different region embedding (what the recognizer computes for naming anyway): a
    miss; the track's own embedding, a little changed, keeps it."""
    tracker = Tracker(TrackingConfig(enabled=True, keep_iou=0.5, reacquire_iou=0.5, max_lost_frames=3,
                                     min_similarity=0.5))
    own, other = np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1]
    click = inst(disc(40, 60), PromptKind.POINT, "click_1")
    click.embedding = own
    track_id = tracker.update(frame(0, [click])).instances[0].track_id
    reprompt = f"{REPROMPT_PREFIX}{track_id}"

    def answer(embedding: np.ndarray) -> Instance:
        out = inst(disc(40, 60), PromptKind.BOX, reprompt)
        out.embedding = embedding
        return out

    assert tracker.update(frame(1, [answer(other)])).instances == []
    assert tracker.tracks[0].state == TrackState.LOST
    kept = tracker.update(frame(2, [answer(own + 0.3 * other)])).instances
    assert [i.track_id for i in kept] == [track_id] and kept[0].track_state == TrackState.CONFIRMED
    assert tracker.tracks[0].embedding @ other > 0  # the running embedding moved towards the new look
