"""The node's ROS-free core, without rclpy: real MobileSAM on a real photo, messages built as rosbags
dataclasses (the same builders serve rclpy), the engine run live or in replay as the node and the bag
tool run it."""

from __future__ import annotations

import dataclasses
import threading

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from ovsam_ros.config import EverythingConfig, NodeConfig, OvsamConfig, VocabConfig
from ovsam_ros.engine import EngineConfig
from ovsam_ros.model.feature_crop import build_feature_crop
from ovsam_ros.model.sam import build_mobile_sam
from ovsam_ros.pipeline import PromptProcessor, QueryCache
from ovsam_ros.predictor import Predictor
from ovsam_ros.prompts import PromptKind
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import numpy_to_image
from ovsam_ros.ros.mask_conversions import roi_image_to_mask
from ovsam_ros.ros.message_builders import make_header, stamp_seconds
from ovsam_ros.session import Session, SessionError
from ovsam_ros.vocab.vocabulary import Vocabulary

T0 = 1_700_000_000.0
F = RosbagsFactory()
FOCAL = 800.0


@pytest.fixture(scope="module")
def photo(bear):
    coco = COCO(str(bear.annotations))
    info = coco.imgs[min(coco.imgs)]
    rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / info["file_name"])), cv2.COLOR_BGR2RGB)
    return rgb, [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[info["id"]]]


@pytest.fixture(scope="module")
def processor(mobile_sam_path):
    """Real MobileSAM naming with a random RN50 Feature-Crop recognizer (no real CLIP weights here)."""
    recognizer, text = build_feature_crop("RN50", random_init=True, input_size=224)
    model = build_mobile_sam(mobile_sam_path, recognizer=recognizer)
    model.text_tower = text
    processor = PromptProcessor(Predictor(model), EverythingConfig(points_per_side=4),
                                VocabConfig(text_threshold=0.0))
    processor.use_vocabulary(Vocabulary.from_names(["toy"], name="toys"), progress=False)
    return processor


class Outputs:
    def __init__(self) -> None:
        self.messages: list[tuple[str, object]] = []
        self.warnings: list[str] = []
        self.cond = threading.Condition()

    def publish(self, name: str, msg: object, received_ns: int | None) -> None:
        with self.cond:
            self.messages.append((name, msg))
            self.cond.notify_all()

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def of(self, name: str) -> list:
        return [m for n, m in self.messages if n == name]

    def wait(self, predicate, timeout: float = 120.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


def _session(processor, replay: bool = True, **node) -> tuple[Session, Outputs]:
    out = Outputs()
    config = OvsamConfig(engine=EngineConfig(encode_mode="on_demand", max_prompt_age_s=3600.0,
                                             prompt_wait_s=5.0), node=NodeConfig(**node),
                         everything=processor.everything, vocab=processor.vocab_config)
    return Session(processor, config, F, publish=out.publish, warn=out.warn, replay=replay), out


def _image(rgb: np.ndarray, stamp: float, frame_id: str = "camera") -> object:
    return numpy_to_image(F, rgb, "rgb8", make_header(F, stamp, frame_id))


def _camera_info(rgb: np.ndarray, frame_id: str = "camera") -> object:
    h, w = rgb.shape[:2]
    return F.make("sensor_msgs/msg/CameraInfo", header=make_header(F, 0.0, frame_id), width=w, height=h,
                  distortion_model="plumb_bob", d=np.zeros(5), k=[FOCAL, 0, w / 2, 0, FOCAL, h / 2, 0, 0, 1])


def _bbox(mask: np.ndarray) -> object:
    ys, xs = np.nonzero(mask)
    centre = F.make("vision_msgs/msg/Pose2D", position=F.make("vision_msgs/msg/Point2D",
                                                               x=(xs.min() + xs.max() + 1) / 2,
                                                               y=(ys.min() + ys.max() + 1) / 2))
    return F.make("vision_msgs/msg/BoundingBox2D", center=centre, size_x=float(xs.max() + 1 - xs.min()),
                  size_y=float(ys.max() + 1 - ys.min()))


def _inside(mask: np.ndarray) -> tuple[int, int]:
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    v, u = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(u), int(v)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.slow
def test_detector_boxes_answer_their_frame_once_then_stand(processor, photo):
    rgb, gts = photo
    session, out = _session(processor)
    session.image(_image(rgb, T0))
    detections = F.make("vision_msgs/msg/Detection2DArray", header=make_header(F, T0, "camera"),
                        detections=[F.make("vision_msgs/msg/Detection2D", id="det", bbox=_bbox(gts[0]))])
    session.boxes(detections)
    session.engine.run_until_idle()
    session.image(_image(rgb, T0 + 0.1))
    session.points(F.make("ovsam_ros/msg/PointPrompt", header=make_header(F, T0 + 0.1, "camera"), id="p",
                          points=[F.make("geometry_msgs/msg/Point", x=10.0, y=10.0)], labels=[1]))
    session.engine.finish()
    arrays = out.of("instances")
    assert [stamp_seconds(a.header.stamp) for a in arrays] == [T0, pytest.approx(T0 + 0.1)]
    assert [i.prompt_id for i in arrays[0].instances] == ["det"]  # once on its own frame
    assert sorted(i.prompt_id for i in arrays[1].instances) == ["det", "p"]  # standing on the next
    assert _iou(roi_image_to_mask(arrays[0].instances[0].mask, arrays[0].instances[0].roi, rgb.shape[:2]),
                gts[0]) > 0.85


def test_a_runaway_detector_is_capped(processor, photo):
    rgb, gts = photo
    session, out = _session(processor, max_boxes_per_message=3)
    session.image(_image(rgb, T0))
    many = F.make("vision_msgs/msg/Detection2DArray", header=make_header(F, T0, "camera"),
                  detections=[F.make("vision_msgs/msg/Detection2D", id=f"d{k}", bbox=_bbox(gts[0]))
                              for k in range(1000)])
    session.boxes(many)
    assert [p.id for p in session.engine.standing()["boxes"]] == ["d0", "d1", "d2"]
    assert session.engine.stats()["prompts_pending"] == 3
    assert any("1000 boxes in one array, the first 3" in w for w in out.warnings)


def test_huge_images_and_prompts_are_refused_with_the_cap(processor, photo):
    rgb, _ = photo
    session, out = _session(processor, max_image_pixels=100_000, max_points_per_prompt=2)
    assert session.image(_image(rgb, T0)) is None and session.counts["bad_frames"] == 1
    assert any("756x1008 is over node.max_image_pixels (100000)" in w for w in out.warnings)
    assert session.image(_image(rgb[:200, :300], T0 + 1)) == T0 + 1
    clicks = [F.make("geometry_msgs/msg/Point", x=float(k), y=1.0) for k in range(3)]
    session.points(F.make("ovsam_ros/msg/PointPrompt", header=make_header(F, T0 + 1, "camera"), id="many",
                          points=clicks, labels=[1, 1, 1]))
    assert session.engine.stats()["prompts_received"] == 0
    assert any("'many' has 3 points, over node.max_points_per_prompt (2)" in w for w in out.warnings)


@pytest.mark.slow
def test_clicks_in_a_configured_camera_frame_and_refused_elsewhere(processor, photo):
    """``node.camera_frame`` names the optical frame even when CameraInfo carries another name."""
    rgb, gts = photo
    session, out = _session(processor, camera_frame="cam_custom")
    session.camera_info(_camera_info(rgb, frame_id="camera_color_optical_frame"))
    session.image(_image(rgb, T0))
    assert session.camera_frame == "cam_custom"
    u, v = _inside(gts[1])
    z = 1.0
    point = F.make("geometry_msgs/msg/Point", x=(u - rgb.shape[1] / 2) * z / FOCAL,
                   y=(v - rgb.shape[0] / 2) * z / FOCAL, z=z)
    for frame in ("camera_color_optical_frame", "cam_custom"):
        session.click(F.make("geometry_msgs/msg/PointStamped", header=make_header(F, T0, frame), point=point))
    session.engine.finish()
    assert any("'camera_color_optical_frame' ignored" in w and "'cam_custom'" in w for w in out.warnings)
    (array,) = out.of("instances")
    (inst,) = array.instances
    assert inst.prompt_id == "click_1"
    assert roi_image_to_mask(inst.mask, inst.roi, rgb.shape[:2])[v, u]


@pytest.mark.slow
def test_depth_adds_3d_and_a_cloud_and_a_stalled_depth_stops_only_those(processor, photo):
    rgb, gts = photo
    session, out = _session(processor, use_depth=True)
    session.camera_info(_camera_info(rgb))
    depth = np.full(rgb.shape[:2], 2.0, np.float32)
    session.image(_image(rgb, T0))
    session.depth(numpy_to_image(F, depth, "32FC1", make_header(F, T0, "camera")))
    u, v = _inside(gts[0])
    click = F.make("ovsam_ros/msg/PointPrompt", header=make_header(F, T0, "camera"), id="a",
                   points=[F.make("geometry_msgs/msg/Point", x=float(u), y=float(v))], labels=[1])
    session.points(click)
    session.engine.run_until_idle()
    session.image(_image(rgb, T0 + 1.0))  # depth has stalled: no depth near this stamp
    later = dataclasses.replace(click, header=make_header(F, T0 + 1.0, "camera"), id="b")
    session.points(later)
    session.engine.finish()
    assert [len(a.instances) for a in out.of("instances")] == [1, 1]  # 2D output kept flowing
    (boxes,) = out.of("detections_3d")
    assert stamp_seconds(boxes.header.stamp) == T0
    assert boxes.detections[0].bbox.center.position.z == pytest.approx(2.0, abs=1e-4)
    (cloud,) = out.of("points")
    xyzrgb = np.frombuffer(bytes(cloud.data), dtype=np.float32).reshape(-1, 4)
    assert len(xyzrgb) == cloud.width == (rgb.shape[0] // 2) * (rgb.shape[1] // 2)
    assert np.allclose(xyzrgb[:, 2], 2.0)
    colour = xyzrgb[:, 3].view(np.uint32)
    r, g, b = colour >> 16 & 255, colour >> 8 & 255, colour & 255
    assert np.array_equal(np.stack([r, g, b], 1), rgb[::2, ::2].reshape(-1, 3))  # coloured by the image


@pytest.mark.slow
def test_segment_requests_run_on_the_worker_and_cache_the_given_image(processor, photo):
    rgb, gts = photo
    session, _ = _session(processor, replay=False)
    session.start()
    try:
        request = F.make("ovsam_ros/srv/Segment_Request", image=_image(rgb, T0),
                         boxes=[_bbox(gts[0])], box_ids=["b"], text="toy")
        first = session.segment(request, timeout_s=120.0)
        second = session.segment(request, timeout_s=120.0)
        assert session.engine.stats()["frames_encoded"] == 1  # the given image is encoded once
        assert first.instances[0].prompt_id == "b"
        assert {i.prompt_type for i in first.instances[1:]} == {PromptKind.TEXT}
        assert [i.label for i in first.instances] == [i.label for i in second.instances]
        assert stamp_seconds(first.header.stamp) == T0 and first.vocabulary.startswith("toys@")
        nothing = F.make("ovsam_ros/srv/Segment_Request")
        with pytest.raises(Exception, match="no prompt"):
            session.segment(dataclasses.replace(nothing, image=_image(rgb, T0)), timeout_s=10.0)
    finally:
        session.stop()
    fresh, _ = _session(processor, replay=False)
    with pytest.raises(SessionError, match="no image received yet"):
        fresh.segment(F.make("ovsam_ros/srv/Segment_Request", text="toy"), timeout_s=1.0)


@pytest.mark.slow
def test_a_vocabulary_change_names_each_frame_wholly_old_or_new(processor, photo):
    """While frames stream and a text query stands, a new vocabulary is embedded beside the worker and
    swapped in between frames: every result is named by one vocabulary, never a mix."""
    rgb, _ = photo
    small = cv2.resize(rgb, (256, 192))
    session, out = _session(processor, replay=False)
    old = session.vocabulary.active
    session.update(dataclasses.replace(session.config, engine=EngineConfig(encode_mode="continuous",
                                                                           max_encode_rate_hz=0.0)))
    session.text("toy")
    session.start()
    try:
        session.image(_image(small, T0))
        assert out.wait(lambda: out.of("instances"))
        change = session.change_vocabulary(Vocabulary.from_names(["toy", "cup", "plate"], name="kitchen"))
        for k in range(1, 40):
            session.image(_image(small, T0 + k))
            if change.done() and k > 2:
                break
            out.wait(lambda k=k: len(out.of("instances")) >= k, timeout=30.0)
        status = change.result(timeout=120.0)
        assert status.active.startswith("kitchen@") and session.vocabulary.loading == ""
        out.wait(lambda: out.of("instances")[-1].vocabulary == status.active, timeout=60.0)
    finally:
        session.stop()
        processor.use_vocabulary(Vocabulary.from_names(["toy"], name="toys"), progress=False)
    names = {old: {"toy"}, status.active: {"toy", "cup", "plate"}}
    arrays = out.of("instances")
    assert {a.vocabulary for a in arrays} == {old, status.active}
    for array in arrays:
        labels = {i.label for i in array.instances} | {name for i in array.instances for name in i.top_labels}
        assert labels <= names[array.vocabulary]
    label_infos = out.of("label_info")
    assert [c.class_name for c in label_infos[-1].class_map] == ["toy", "cup", "plate", "unlabeled"]


def test_query_cache_is_bounded_in_entries_and_bytes():
    class Sized:
        def __init__(self, nbytes: int) -> None:
            self.nbytes = nbytes

    cache = QueryCache(max_entries=3, max_bytes=100)
    for k in range(5):
        cache.get_or_build(f"q{k}", lambda: Sized(10))
    assert len(cache) == 3 and cache.nbytes == 30
    hit = cache.get_or_build("q2", lambda: pytest.fail("q2 is cached"))
    assert hit.nbytes == 10
    cache.get_or_build("big", lambda: Sized(90))  # over the byte bound: the least recent go first
    assert len(cache) == 2 and cache.nbytes == 100
    cache.get_or_build("q2", lambda: pytest.fail("q2 was used last before big"))


@pytest.mark.slow
def test_tracking_turned_on_follows_a_click_and_turned_off_ends_it(processor, photo):
    """``tracking.enabled`` is dynamic: switched on, a click on one frame keeps its toy (one track id in
    InstanceArray, Detection2D and the instance image) on later frames with no new prompt; switched
    off, the track ends with an event on track_events and later frames get no answer."""
    rgb, gts = photo
    session, out = _session(processor)
    tracking = dataclasses.replace(session.config.tracking, enabled=True)
    engine = dataclasses.replace(session.config.engine, encode_mode="auto")  # tracks are standing prompts
    on = dataclasses.replace(session.config, tracking=tracking, engine=engine)
    session.update(on)
    u, v = _inside(gts[0])
    for t in range(3):  # the camera pans 8 px a frame
        shifted = np.roll(rgb, 8 * t, axis=1)
        session.image(_image(shifted, T0 + t))
        if t == 0:
            session.points(F.make("ovsam_ros/msg/PointPrompt", header=make_header(F, T0, "camera"),
                                  id="grasp", labels=[1],
                                  points=[F.make("geometry_msgs/msg/Point", x=float(u), y=float(v))]))
        session.engine.finish()  # this frame's prompts are all in
    arrays, images = out.of("instances"), out.of("instance_image")
    assert [stamp_seconds(a.header.stamp) for a in arrays] == [T0, T0 + 1, T0 + 2]
    track_ids = {i.track_id for a in arrays for i in a.instances}
    assert len(track_ids) == 1 and 0 not in track_ids
    (track_id,) = track_ids
    first = roi_image_to_mask(arrays[0].instances[0].mask, arrays[0].instances[0].roi, rgb.shape[:2])
    for t, (array, image) in enumerate(zip(arrays, images, strict=True)):
        (inst,) = array.instances
        assert inst.prompt_id == "grasp" and inst.id == str(track_id) and inst.track_age == t
        assert inst.track_state == 2  # Instance.TRACK_CONFIRMED
        mask = roi_image_to_mask(inst.mask, inst.roi, rgb.shape[:2])
        assert _iou(mask, np.roll(first, 8 * t, axis=1)) > 0.8  # what the click selected, moved
        values = np.unique(np.frombuffer(bytes(image.data), np.uint16))
        assert values.tolist() == [0, track_id]
    assert [d.id for a in out.of("detections") for d in a.detections] == [str(track_id)] * 3

    session.update(dataclasses.replace(on, tracking=dataclasses.replace(on.tracking, enabled=False)))
    session.image(_image(rgb, T0 + 3))
    session.engine.finish()
    (event,) = out.of("track_events")
    assert [(i.track_id, i.track_state) for i in event.instances] == [(track_id, 4)]  # TRACK_ENDED
    assert len(out.of("instances")) == 3 and session.tracker is None
