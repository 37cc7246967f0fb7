"""The streaming engine's time and thread logic, with a small deterministic stand-in for the network
(it 'encodes' a frame to its first pixel value and names every answer after it), plus one run of the
real MobileSAM through the real Predictor."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ovsam_ros.engine import Engine, EngineConfig, EngineConfigError, EngineError, EngineStateError
from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.results import FrameResult, Instance

T0 = 1_700_000_000.0  # a realistic ROS time, so float precision of stamps is exercised


def image(k: int, size: tuple[int, int] = (4, 6)) -> np.ndarray:
    return np.full((*size, 3), k % 256, np.uint8)


def stamp(k: int, hz: float = 10.0) -> float:
    return T0 + k / hz


class StampProcessor:
    """Stand-in for the network in unit tests of time/thread logic (not a model): records which frames
    it encoded and which prompt batches it answered; ``gate`` holds an encode until set."""

    def __init__(self, gate: threading.Event | None = None, fail_encode: int | None = None) -> None:
        self.gate = gate
        self.fail_encode = fail_encode
        self.entered = threading.Event()
        self.encoded: list[int] = []
        self.batches: list[tuple[int, list[str]]] = []
        self.cond = threading.Condition()

    def encode(self, rgb: np.ndarray) -> ImageFeatures:
        value = int(rgb.flat[0])
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if value == self.fail_encode:
            raise RuntimeError("sensor garbage")
        with self.cond:
            self.encoded.append(value)
            self.cond.notify_all()
        return ImageFeatures(embedding=torch.full((1, 8), float(value)), original_size=rgb.shape[:2])

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]:
        ids = [p.id for p in prompts]
        if "bad" in ids:
            raise PromptError("box outside the image")
        value = int(features.embedding[0, 0])
        self.batches.append((value, ids))
        h, w = features.original_size
        return [Instance(mask=np.ones((h, w), bool), bbox=(0.0, 0.0, float(w), float(h)), mask_score=1.0,
                         prompt_kind=p.kind, prompt_id=p.id, label=f"frame{value}") for p in prompts]


class Sink:
    """Collects results and errors; events let tests wait without sleeping."""

    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.errors: list[tuple[str, Prompt | None]] = []
        self.cond = threading.Condition()

    def on_result(self, result: FrameResult) -> None:
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()

    def on_error(self, message: str, prompt: Prompt | None) -> None:
        with self.cond:
            self.errors.append((message, prompt))
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def labels(self) -> list[list[tuple[str, str]]]:
        return [[(i.prompt_id, i.label) for i in r.instances] for r in self.results]


def replay_engine(processor: StampProcessor, **config) -> tuple[Engine, Sink]:
    sink = Sink()
    engine = Engine(processor, EngineConfig(**config), on_result=sink.on_result, on_error=sink.on_error,
                    replay=True)
    return engine, sink


def feed(engine: Engine, frames: range, hz: float = 10.0) -> None:
    for k in frames:
        engine.push_frame(image(k), stamp(k, hz), f"cam{k}")
        engine.run_until_idle()


def click(k: int | None, pid: str, hz: float = 10.0) -> Prompt:
    return Prompt.point([(1.0, 1.0)], id=pid, stamp=0.0 if k is None else stamp(k, hz))


def assert_frame_accounting(engine: Engine) -> None:
    s = engine.stats()
    assert s["frames_received"] == (s["frames_encoded"] + s["frames_skipped"] + s["encode_errors"]
                                    + s["raw_frames_pending"])


# --------------------------------------------------------------------------- policies (replay, exact)

def test_on_demand_encodes_only_prompted_frames_and_each_once():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="on_demand", raw_buffer_size=16)
    feed(engine, range(10))
    assert proc.encoded == []
    engine.push_prompt(click(3, "a"))
    engine.run_until_idle()
    engine.push_prompt(click(3, "b"))
    engine.push_prompt(click(None, "newest"))
    engine.run_until_idle()
    assert proc.encoded == [3, 9]
    assert sink.labels() == [[("a", "frame3")], [("b", "frame3")], [("newest", "frame9")]]
    assert [(r.stamp, r.frame_id) for r in sink.results] == [(stamp(3), "cam3"), (stamp(3), "cam3"),
                                                             (stamp(9), "cam9")]
    s = engine.stats()
    assert (s["cache_hits"], s["prompts_answered"], s["frames_encoded"]) == (1, 3, 2)
    assert_frame_accounting(engine)


def test_continuous_encodes_newest_frames_at_the_capped_rate_in_stream_time():
    proc = StampProcessor()
    engine, _ = replay_engine(proc, encode_mode="continuous", max_encode_rate_hz=10.0, raw_buffer_size=2)
    feed(engine, range(12), hz=30.0)
    assert proc.encoded == [0, 3, 6, 9]
    s = engine.stats()
    assert s["frames_skipped"] == 12 - 4 - s["raw_frames_pending"]
    assert_frame_accounting(engine)


def test_auto_is_continuous_only_while_standing_prompts_exist():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="auto", max_encode_rate_hz=0.0)
    feed(engine, range(3))
    assert proc.encoded == [] and engine.stats()["continuous"] is False
    engine.set_standing("text", [Prompt.from_text("mug")])
    engine.run_until_idle()
    assert proc.encoded == [2]  # the newest frame, not the backlog
    feed(engine, range(3, 5))
    engine.clear_standing()
    feed(engine, range(5, 8))
    assert proc.encoded == [2, 3, 4]
    assert sink.labels() == [[("mug", "frame2")], [("mug", "frame3")], [("mug", "frame4")]]
    assert engine.stats()["standing_applied"] == 3


def test_standing_prompts_ride_with_one_off_prompts_in_one_batch_and_repeat_per_frame():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="continuous", max_encode_rate_hz=0.0)
    engine.set_standing("boxes", [Prompt.from_box([0, 0, 2, 2], id="det1"), Prompt.from_box([1, 1, 3, 3],
                                                                                            id="det2")])
    engine.push_prompt(click(0, "c1"))
    engine.push_prompt(click(0, "c2"))
    feed(engine, range(3))
    assert proc.batches == [(0, ["c1", "c2", "det1", "det2"]), (1, ["det1", "det2"]), (2, ["det1", "det2"])]
    engine.set_standing("boxes", [Prompt.from_box([0, 0, 1, 1], id="det3")])  # replaces the group
    feed(engine, range(3, 4))
    assert proc.batches[-1] == (3, ["det3"])
    assert [r.stamp for r in sink.results] == [stamp(k) for k in range(4)]


def test_prompt_newer_than_newest_frame_waits_for_it():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="on_demand")
    feed(engine, range(2))
    engine.push_prompt(click(5, "future"))
    engine.run_until_idle()
    assert engine.stats()["prompts_pending"] == 1 and proc.encoded == []
    feed(engine, range(2, 6))
    assert proc.encoded == [5] and sink.labels() == [[("future", "frame5")]]


def test_finish_resolves_waiting_prompts():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="on_demand", max_prompt_age_s=1.0)
    feed(engine, range(2))
    engine.push_prompt(click(5, "soon"))  # 0.4 s after the newest frame: answered from it
    engine.push_prompt(click(50, "far"))  # 4.9 s after: too new
    engine.finish()
    assert sink.labels() == [[("soon", "frame1")]]
    assert [m.split(":")[0] for m, _ in sink.errors] == ["too_new"]
    assert sink.errors[0][1].id == "far"
    assert engine.stats()["rejected_by_reason"] == {"too_new": 1}


def test_old_prompts_use_the_oldest_frame_within_age_else_are_rejected():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="continuous", max_encode_rate_hz=0.0, cache_size=3,
                                 raw_buffer_size=1, max_prompt_age_s=1.0)
    feed(engine, range(10, 20))
    engine.push_prompt(click(15, "evicted-but-recent"))  # oldest kept is 17
    engine.push_prompt(click(2, "ancient"))
    engine.run_until_idle()
    assert sink.labels() == [[("evicted-but-recent", "frame17")]]
    assert sink.errors[0][0].startswith("too_old: point prompt 'ancient'")
    assert proc.encoded == list(range(10, 20))


def test_full_prompt_queue_drops_the_oldest_prompt_with_a_reason():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="on_demand", prompt_queue_size=2)
    for pid in ("p1", "p2", "p3"):
        engine.push_prompt(click(None, pid))
    engine.run_until_idle()
    assert [(m.split(":")[0], p.id) for m, p in sink.errors] == [("queue_full", "p1")]
    feed(engine, range(1))
    assert sink.labels() == [[("p2", "frame0"), ("p3", "frame0")]]


def test_one_bad_prompt_does_not_sink_its_batch():
    proc = StampProcessor()
    engine, sink = replay_engine(proc, encode_mode="on_demand")
    feed(engine, range(1))
    engine.push_prompt(click(0, "good"))
    engine.push_prompt(Prompt.from_box([0, 0, 9, 9], id="bad", stamp=stamp(0)))
    engine.run_until_idle()
    (result,) = sink.results
    assert [i.prompt_id for i in result.instances] == ["good"]
    assert len(result.errors) == 1 and "box outside the image" in result.errors[0]
    assert [(m.split(":")[0], p.id) for m, p in sink.errors] == [("failed", "bad")]
    assert engine.stats()["prompts_answered"] == 1


def test_encode_failure_rejects_the_prompts_that_needed_the_frame():
    proc = StampProcessor(fail_encode=1)
    engine, sink = replay_engine(proc, encode_mode="on_demand")
    feed(engine, range(3))
    engine.push_prompt(click(1, "on-garbage"))
    engine.push_prompt(click(2, "fine"))
    engine.run_until_idle()
    assert sink.labels() == [[("fine", "frame2")]]
    assert [(m.split(":")[0], p.id) for m, p in sink.errors] == [("failed", "on-garbage")]
    assert "sensor garbage" in sink.errors[0][0]
    assert engine.stats()["encode_errors"] == 1
    assert_frame_accounting(engine)


def test_cache_is_bounded_and_keeps_images_only_when_asked():
    proc = StampProcessor()
    engine, _ = replay_engine(proc, encode_mode="continuous", max_encode_rate_hz=0.0, cache_size=2)
    feed(engine, range(5))
    s = engine.stats()
    assert s["cached_frames"] == 2 and s["cache_bytes"] == 2 * 8 * 4
    assert engine.frame().stamp == stamp(4) and engine.frame().image is None
    assert engine.frame(stamp(3)).frame_id == "cam3" and engine.frame(stamp(1)) is None
    keeping, _ = replay_engine(StampProcessor(), encode_mode="continuous", max_encode_rate_hz=0.0,
                               keep_images=True)
    feed(keeping, range(1))
    assert keeping.frame().image is not None and keeping.stats()["cache_bytes"] == 8 * 4 + image(0).nbytes


def test_latency_and_depth_figures_are_reported():
    proc = StampProcessor()
    engine, _ = replay_engine(proc, encode_mode="on_demand")
    feed(engine, range(2))
    engine.push_prompt(click(1, "a"))
    engine.run_until_idle()
    s = engine.stats()
    for key in ("encode_latency", "decode_latency"):
        assert s[key]["count"] == 1
        assert 0 <= s[key]["p50_ms"] <= s[key]["p90_ms"] <= s[key]["p99_ms"] <= s[key]["max_ms"]
    assert (s["raw_frames_pending"], s["prompts_pending"], s["prompts_received"]) == (1, 0, 1)


def test_reconfigure_switches_policy_and_timing_but_not_buffer_sizes():
    proc = StampProcessor()
    engine, _ = replay_engine(proc, encode_mode="on_demand", max_encode_rate_hz=0.0)
    feed(engine, range(2))
    assert proc.encoded == []
    engine.reconfigure(EngineConfig(encode_mode="continuous", max_encode_rate_hz=0.0))
    engine.run_until_idle()
    feed(engine, range(2, 3))
    assert proc.encoded == [1, 2] and engine.stats()["encode_mode"] == "continuous"
    with pytest.raises(EngineError, match="cache_size"):
        engine.reconfigure(EngineConfig(cache_size=3))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(("field", "value"), [
    ("cache_size", 0), ("raw_buffer_size", -1), ("prompt_queue_size", 1.5), ("sync_slop_s", -0.1),
    ("prompt_wait_s", float("nan")), ("max_prompt_age_s", float("inf")), ("max_encode_rate_hz", -1.0),
    ("encode_mode", "sometimes"), ("keep_images", "yes"), ("cache_size", True),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(EngineConfigError, match=field):
        EngineConfig(**{field: value})


def test_bad_frames_prompts_and_keys_get_clear_errors():
    engine, _ = replay_engine(StampProcessor())
    with pytest.raises(EngineError, match="numpy array"):
        engine.push_frame([[1, 2]], 1.0)
    with pytest.raises(EngineError, match="non-empty"):
        engine.push_frame(np.zeros((0, 4, 3), np.uint8), 1.0)
    for bad in (0.0, -1.0, float("nan"), "1.0"):
        with pytest.raises(EngineError, match="frame stamp"):
            engine.push_frame(image(0), bad)
    with pytest.raises(EngineError, match="Prompt"):
        engine.push_prompt("a click")
    with pytest.raises(EngineError, match="set_standing"):
        engine.push_prompt(Prompt.from_text("mug"))
    with pytest.raises(EngineError, match="prompt stamp"):
        engine.push_prompt(Prompt.point([(1, 1)], stamp=-2.0))
    with pytest.raises(EngineError, match="standing key"):
        engine.set_standing("", [Prompt.from_text("mug")])
    with pytest.raises(EngineError, match="encode"):
        Engine(object())
    with pytest.raises(EngineStateError, match="replay"):
        engine.start()


# --------------------------------------------------------------------------- live worker thread

def live_engine(processor: StampProcessor, **config) -> tuple[Engine, Sink]:
    sink = Sink()
    engine = Engine(processor, EngineConfig(**config), on_result=sink.on_result, on_error=sink.on_error)
    engine.start()
    return engine, sink


def test_continuous_skips_frames_while_busy_and_never_encodes_stale_ones():
    gate = threading.Event()
    proc = StampProcessor(gate=gate)
    engine, _ = live_engine(proc, encode_mode="continuous", max_encode_rate_hz=0.0, raw_buffer_size=4)
    try:
        engine.push_frame(image(0), stamp(0), "cam")
        assert proc.entered.wait(10)
        for k in range(1, 10):  # arrive while frame 0 is being encoded
            engine.push_frame(image(k), stamp(k), "cam")
        gate.set()
        assert engine.wait_idle(10)
        assert proc.encoded == [0, 9]
        s = engine.stats()
        assert (s["frames_skipped"], s["raw_frames_pending"]) == (5, 3)
        assert_frame_accounting(engine)
    finally:
        gate.set()
        assert engine.stop(10)


def test_pushes_never_block_while_the_worker_is_busy():
    gate = threading.Event()
    proc = StampProcessor(gate=gate)
    engine, sink = live_engine(proc, encode_mode="on_demand", raw_buffer_size=3, prompt_queue_size=5)
    try:
        engine.push_frame(image(0), stamp(0))
        engine.push_prompt(click(0, "first"))
        assert proc.entered.wait(10)
        for k in range(1, 500):  # the worker is stuck in encode: these must all return at once
            engine.push_frame(image(k), stamp(k))
            engine.push_prompt(click(k, f"p{k}"))
        s = engine.stats()
        assert s["raw_frames_pending"] == 3 and s["prompts_pending"] <= 5
        gate.set()
        assert engine.wait_idle(10)
        assert sink.wait(lambda sk: sum(len(r.instances) for r in sk.results) == 6)
        s = engine.stats()
        assert s["rejected_by_reason"]["queue_full"] == 499 - 5
        assert s["prompts_answered"] == 6  # 'first' and the five newest prompts
    finally:
        gate.set()
        assert engine.stop(10)


def test_live_prompt_waits_for_its_frame_and_stamps_come_from_the_frame():
    proc = StampProcessor()
    engine, sink = live_engine(proc, encode_mode="on_demand", prompt_wait_s=60.0)
    try:
        engine.push_frame(image(0), stamp(0), "cam_optical")
        engine.push_prompt(click(3, "ahead"))
        assert engine.wait_idle(10)
        assert engine.stats()["prompts_pending"] == 1
        engine.push_frame(image(3), stamp(3) + 0.01, "cam_optical")
        assert sink.wait(lambda sk: len(sk.results) == 1)
        (result,) = sink.results
        assert (result.stamp, result.frame_id, result.image_size) == (stamp(3) + 0.01, "cam_optical", (4, 6))
        assert proc.encoded == [3]
    finally:
        assert engine.stop(10)


def test_live_wait_expires_with_a_reason():
    proc = StampProcessor()
    engine, sink = live_engine(proc, encode_mode="on_demand", prompt_wait_s=0.01, max_prompt_age_s=0.5)
    try:
        engine.push_prompt(click(1, "nothing-comes"))
        assert sink.wait(lambda sk: len(sk.errors) == 1)
        assert sink.errors[0][0].startswith("no_frame:")
    finally:
        assert engine.stop(10)


def test_stop_joins_the_worker_and_rejects_what_is_left():
    gate = threading.Event()
    proc = StampProcessor(gate=gate)
    engine, sink = live_engine(proc, encode_mode="on_demand", prompt_wait_s=60.0)
    engine.push_frame(image(0), stamp(0))
    engine.push_prompt(click(0, "in-flight"))
    assert proc.entered.wait(10)
    engine.push_prompt(click(7, "waiting"))
    assert engine.stop(timeout=0.01) is False  # still inside encode
    gate.set()
    assert engine.stop(10) is True
    assert not any(t.name == "ovsam-engine" for t in threading.enumerate())
    assert sink.labels() == [[("in-flight", "frame0")]]
    assert [(m.split(":")[0], p.id) for m, p in sink.errors] == [("stopped", "waiting")]
    assert engine.stats()["running"] is False
    engine.start()  # restartable after a clean stop
    assert engine.stop(10)
    with pytest.raises(EngineStateError, match="wait_idle"):
        Engine(proc).wait_idle(0)


def test_callback_exceptions_do_not_kill_the_worker():
    proc = StampProcessor()

    def explode(result: FrameResult) -> None:
        raise RuntimeError("subscriber bug")

    engine = Engine(proc, EngineConfig(encode_mode="on_demand"), on_result=explode)
    engine.start()
    try:
        for k in range(3):
            engine.push_frame(image(k), stamp(k))
            engine.push_prompt(click(k, f"c{k}"))
        assert engine.wait_idle(10)
        s = engine.stats()
        assert (s["callback_errors"], s["prompts_answered"], s["running"]) == (3, 3, True)
        with pytest.raises(EngineStateError, match="stop"):
            engine.run_until_idle()
    finally:
        assert engine.stop(10)


# --------------------------------------------------------------------------- the real network

@pytest.mark.slow
def test_real_mobile_sam_through_the_engine(mobile_sam_path, bear):
    """Real MobileSAM, real Predictor, real photos: each prompted frame is encoded exactly once, later
    prompts on it are cache hits, an unprompted frame is never encoded, and box prompts give masks
    matching the COCO ground truth."""
    import json

    import cv2
    from pycocotools import mask as mask_utils

    from ovsam_ros.engine import PredictorProcessor
    from ovsam_ros.model.sam import build_mobile_sam
    from ovsam_ros.predictor import Predictor

    coco = json.loads(bear.annotations.read_text())
    photos = []
    for info in coco["images"]:
        rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / info["file_name"])), cv2.COLOR_BGR2RGB)
        anns = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
        gts = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], info["height"], info["width"]))
               .max(axis=2).astype(bool) for a in anns]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        photos.append((rgb, gts, boxes))
    assert len(photos) == 3

    sink = Sink()
    engine = Engine(PredictorProcessor(Predictor(build_mobile_sam(mobile_sam_path))),
                    EngineConfig(encode_mode="on_demand"), on_result=sink.on_result, on_error=sink.on_error)
    engine.start()
    try:
        for k, (rgb, _, _) in enumerate(photos):
            engine.push_frame(rgb, stamp(k), f"table{k}")
        prompted = [0, 2]
        for k in prompted:
            _, _, boxes = photos[k]
            engine.push_prompt(Prompt.from_box(boxes[0], id=f"{k}/0", stamp=stamp(k)))
        assert sink.wait(lambda sk: len(sk.results) == 2, timeout=300)
        for k in prompted:  # the rest of the boxes, after the frames were encoded: cache hits
            _, _, boxes = photos[k]
            for i, box in enumerate(boxes[1:], start=1):
                engine.push_prompt(Prompt.from_box(box, id=f"{k}/{i}", stamp=stamp(k)))
        engine.push_prompt(Prompt.from_box([5000, 5000, 6000, 6000], id="off-image", stamp=stamp(2)))
        assert engine.wait_idle(300)
    finally:
        assert engine.stop(30)

    s = engine.stats()
    assert s["frames_encoded"] == 2 and s["raw_frames_pending"] == 1  # photo 1 never prompted
    assert s["cache_hits"] == sum(len(photos[k][2]) - 1 for k in prompted) + 1
    assert [(m.split(":")[0], p.id) for m, p in sink.errors] == [("failed", "off-image")]
    ious = {}
    for result in sink.results:
        k = int(result.frame_id.removeprefix("table"))
        assert result.stamp == stamp(k) and result.image_size == photos[k][0].shape[:2]
        for inst in result.instances:
            frame_k, i = map(int, inst.prompt_id.split("/"))
            assert frame_k == k
            gt = photos[k][1][i]
            ious[inst.prompt_id] = float((inst.mask & gt).sum() / (inst.mask | gt).sum())
    print(f"mask IoU per box prompt: {ious}; encode {s['encode_latency']}; decode {s['decode_latency']}")
    assert len(ious) == sum(len(photos[k][2]) for k in prompted)
    assert min(ious.values()) >= 0.85, ious


# ---- work from other threads: tasks and synchronous requests ---------------------------------------

def test_tasks_run_on_the_worker_between_steps_in_order():
    gate = threading.Event()
    processor = StampProcessor(gate=gate)
    sink = Sink()
    engine = Engine(processor, EngineConfig(encode_mode="continuous", max_encode_rate_hz=0.0),
                    on_result=sink.on_result)
    engine.start()
    try:
        engine.set_standing("text", [Prompt.from_text("mug")])
        engine.push_frame(image(1), stamp(1))
        assert processor.entered.wait(5)  # the worker is inside an encode
        ran: list[tuple[str, str]] = []
        first = engine.submit(lambda: ran.append(("a", threading.current_thread().name)) or "a")
        second = engine.submit(lambda: 1 / 0)
        third = engine.submit(lambda: ran.append(("c", threading.current_thread().name)) or "c")
        assert not first.done()  # not in the middle of a frame
        gate.set()
        assert first.result(5) == "a" and third.result(5) == "c"
        with pytest.raises(ZeroDivisionError):
            second.result(5)
        assert ran == [("a", "ovsam-engine"), ("c", "ovsam-engine")]
        assert sink.wait(lambda s: s.results)  # the frame was answered wholly before the tasks ran
    finally:
        gate.set()
        engine.stop()
    late = engine.submit(lambda: "never")
    with pytest.raises(EngineStateError, match="stopped"):
        late.result(1)


def test_request_encodes_a_given_image_once_and_caches_it():
    processor = StampProcessor()
    sink = Sink()
    engine = Engine(processor, EngineConfig(encode_mode="on_demand"), on_result=sink.on_result)
    engine.start()
    try:
        result = engine.request([Prompt.from_box([0, 0, 2, 2], id="b")], image(7), stamp(7), "cam").result(5)
        assert (result.stamp, result.frame_id) == (stamp(7), "cam")
        assert [(i.prompt_id, i.label) for i in result.instances] == [("b", "frame7")]
        again = engine.request([Prompt.point([(1, 1)], id="p")], image(7), stamp(7), "cam").result(5)
        assert [i.label for i in again.instances] == ["frame7"]
        assert processor.encoded == [7] and engine.frame(stamp(7)) is not None  # encoded once, cached
        assert sink.results == []  # answers go to the caller, not to on_result
        engine.push_frame(image(8), stamp(8))
        newest = engine.request([Prompt.point([(1, 1)], id="n")]).result(5)
        assert newest.stamp == stamp(8) and processor.encoded == [7, 8]
        with pytest.raises(EngineError, match="stamp must be"):
            engine.request([Prompt.point([(1, 1)])], image(9), 0.0)
    finally:
        engine.stop()


def test_request_without_a_frame_fails_clearly():
    engine = Engine(StampProcessor(), EngineConfig(encode_mode="on_demand"), replay=True)
    future = engine.request([Prompt.point([(1, 1)], id="p")])
    engine.run_until_idle()
    with pytest.raises(EngineError, match="no frame received yet"):
        future.result(1)


def test_stamped_standing_prompts_stand_only_for_newer_frames():
    """Detector boxes stand for the frames after the one they were found on (answered once there)."""
    processor = StampProcessor()
    engine, _ = replay_engine(processor, encode_mode="continuous", max_encode_rate_hz=0.0)
    feed(engine, range(0, 2))
    engine.set_standing("boxes", [Prompt.from_box([0, 0, 2, 2], id="det", stamp=stamp(2), standing=True)])
    feed(engine, range(2, 4))
    assert [(v, ids) for v, ids in processor.batches] == [(3, ["det"])]



class OomProcessor(StampProcessor):
    """Runs out of memory (torch's CUDA error type, raised on the CPU) on batches above ``fits``."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits, self.freed = fits, 0

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]:
        if len(prompts) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(prompts)} GiB")
        return super().answer(features, prompts)

    def free_memory(self) -> None:
        self.freed += 1


@pytest.mark.parametrize("fits, answered, skipped", [(2, 4, 0), (1, 0, 1)])
def test_out_of_memory_is_retried_smaller_once_then_the_frame_is_skipped(fits, answered, skipped):
    processor = OomProcessor(fits)
    engine, sink = replay_engine(processor, encode_mode="on_demand")
    engine.push_frame(image(1), stamp(1))
    for k in range(4):
        engine.push_prompt(Prompt.point([(1, 1)], id=f"p{k}", stamp=stamp(1)))
    engine.run_until_idle()
    (result,) = sink.results
    assert len(result.instances) == answered and processor.freed == 1 + skipped
    stats = engine.stats()
    assert stats["frames_skipped_oom"] == skipped and stats["prompts_answered"] == answered
    if skipped:
        assert len(sink.errors) == 4 and all("out of memory on 4 prompt(s)" in m for m, _ in sink.errors)
    engine.push_frame(image(2), stamp(2))  # the engine goes on with the next frame
    engine.push_prompt(Prompt.point([(1, 1)], id="next", stamp=stamp(2)))
    engine.run_until_idle()
    assert [i.prompt_id for i in sink.results[-1].instances] == ["next"]
