"""The rclpy node for real: real MobileSAM weights and real bear photos over DDS, driven the way a
robot stack and RViz drive it.

Needs a ROS 2 environment with this package built (``ovsam_ros.msg`` generated); skipped without,
and a failure in CI (``ros_env``). One node is spun in-process for the whole module (the model loads
once) next to a plain client node that publishes frames, prompts, CameraInfo and TF, and listens to
the outputs and to /rosout. MobileSAM segments with its real weights; naming uses a randomly
initialised open_clip ViT-S-32 written to a checkpoint file (no real CLIP weights exist here), with a
one-class vocabulary so that what a text query returns does not depend on the random weights.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_env import require

rclpy = require("rclpy", reason="needs ROS 2 (rclpy)")
require("ovsam_ros.msg", reason="needs the built ovsam_ros package (generated messages)")

import open_clip
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Point, PointStamped, TransformStamped
from ovsam_ros.msg import Instance, InstanceArray, PointPrompt
from ovsam_ros.srv import Segment, SetVocabulary
from pycocotools.coco import COCO
from rcl_interfaces.msg import Log
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import Trigger
from tf2_ros import StaticTransformBroadcaster
from vision_msgs.msg import (
    BoundingBox2D,
    Detection2D,
    Detection2DArray,
    Detection3DArray,
    LabelInfo,
)

from ovsam_ros.node import OvsamNode
from ovsam_ros.ros.factory import RclpyFactory
from ovsam_ros.ros.image_conversions import (
    cv_bridge_decoder,
    image_to_rgb,
    numpy_to_compressed,
    numpy_to_image,
)
from ovsam_ros.ros.mask_conversions import roi_image_to_mask

TIMEOUT_S = 180.0  # a MobileSAM encode takes ~2 s on 2 free cores; CI machines are busier
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
FOCAL = 800.0
CAMERA = "camera_optical"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def _mask(inst: Instance, size: tuple[int, int]) -> np.ndarray:
    return roi_image_to_mask(inst.mask, inst.roi, size)


class Client:
    """The outside world: publishes frames, prompts, intrinsics and TF; collects outputs and logs."""

    def __init__(self, node_name: str) -> None:
        self.node = rclpy.create_node("ovsam_test_client")
        ns = f"/{node_name}"
        pub = self.node.create_publisher
        self.image_pub = pub(Image, "/image", RELIABLE)
        self.depth_pub = pub(Image, "/depth", RELIABLE)
        self.info_pub = pub(CameraInfo, "/camera_info", RELIABLE)
        self.points_pub = pub(PointPrompt, "/prompts/points", RELIABLE)
        self.boxes_pub = pub(Detection2DArray, "/prompts/boxes", BEST_EFFORT)  # as many detectors publish
        self.text_pub = pub(String, "/prompts/text", RELIABLE)
        self.click_pub = pub(PointStamped, "/clicked_point", RELIABLE)  # RViz's Publish Point tool
        self.lock = threading.Lock()
        self.got: dict[str, list] = {"instances": [], "detections_3d": [], "overlay": [], "points": [],
                                     "logs": [], "diagnostics": []}
        sub = self.node.create_subscription
        sub(InstanceArray, f"{ns}/instances", self._add("instances"), RELIABLE)
        sub(Detection3DArray, f"{ns}/detections_3d", self._add("detections_3d"), RELIABLE)
        sub(Log, "/rosout", lambda m: self._add("logs")(m.msg), QoSProfile(depth=100))
        sub(DiagnosticArray, "/diagnostics", self._add("diagnostics"), RELIABLE)
        self.segment = self.node.create_client(Segment, f"{ns}/segment")
        self.set_vocabulary = self.node.create_client(SetVocabulary, f"{ns}/set_vocabulary")
        self.clear = self.node.create_client(Trigger, f"{ns}/clear_prompts")
        self.ns = ns
        self.spinner: threading.Thread | None = None

    def _add(self, key: str) -> Callable:
        def add(msg: object) -> None:
            with self.lock:
                self.got[key].append(msg)
        return add

    def subscribe(self, kind: type, topic: str, key: str, qos: QoSProfile = RELIABLE) -> object:
        self.got.setdefault(key, [])
        return self.node.create_subscription(kind, f"{self.ns}/{topic}", self._add(key), qos)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if condition():
                    return
            if self.spinner is not None and not self.spinner.is_alive():
                raise AssertionError(f"the executor died while waiting for {what} (its error is above)")
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=30.0), f"service {client.srv_name} not available"
        future = client.call_async(request)
        self.wait_for(future.done, f"a reply from {client.srv_name}")
        return future.result()

    def result_of(self, sec: int, nanosec: int = 0, since: int = 0) -> InstanceArray:
        """The first InstanceArray (after the first ``since``) of the frame stamped ``sec.nanosec``."""
        def match(r: InstanceArray) -> bool:
            return (r.header.stamp.sec, r.header.stamp.nanosec) == (sec, nanosec)
        self.wait_for(lambda: any(match(r) for r in self.got["instances"][since:]),
                      f"the InstanceArray of frame {sec}.{nanosec}")
        with self.lock:
            return next(r for r in self.got["instances"][since:] if match(r))


@pytest.fixture(scope="module")
def photo(bear):
    """The first bear photo (RGB) and the GT masks of its objects."""
    coco = COCO(str(bear.annotations))
    info = coco.imgs[min(coco.imgs)]
    bgr = cv2.imread(str(bear.image_dir / info["file_name"]))
    masks = [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[info["id"]]]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), masks


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """An open_clip ViT-S-32 checkpoint with random weights (the only kind of CLIP weights here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "vit_s_32_random.pt"
    torch.save(open_clip.create_model("ViT-S-32", pretrained=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ros(mobile_sam_path, clip_file, tmp_path_factory):
    """A configured and active ovsam_node (MobileSAM + ViT-S-32 naming, CPU, on-demand encoding, depth
    on) plus a client node, spun by one executor."""
    vocabulary = tmp_path_factory.mktemp("vocab") / "toys.txt"
    vocabulary.write_text("toy, teddy bear\n")
    rclpy.init()
    node = OvsamNode(parameter_overrides=[
        Parameter("model.preset", value="mobilesam"),
        Parameter("model.weights_dir", value=str(mobile_sam_path.parent)),
        Parameter("model.clip_model", value="ViT-S-32"),
        Parameter("model.clip_weights", value=str(clip_file)),
        Parameter("model.device", value="cpu"),
        Parameter("vocab.vocabulary", value=str(vocabulary)),
        Parameter("vocab.text_threshold", value=0.0),
        Parameter("engine.encode_mode", value="on_demand"),
        Parameter("engine.prompt_wait_s", value=5.0),
        Parameter("engine.max_prompt_age_s", value=3600.0),
        Parameter("node.image_qos", value="reliable"),
        Parameter("node.image_topic", value="/image"),
        Parameter("node.camera_info_topic", value="/camera_info"),
        Parameter("node.depth_topic", value="/depth"),
        Parameter("node.use_depth", value=True),
        Parameter("node.tf_timeout_s", value=2.0),
        Parameter("node.request_timeout_s", value=TIMEOUT_S),
        Parameter("everything.points_per_side", value=8),  # a small grid keeps everything mode quick
    ])
    client = Client(node.get_name())
    executor = MultiThreadedExecutor(num_threads=6)
    executor.add_node(node)
    executor.add_node(client.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client.spinner = spinner
    assert node.trigger_configure().name == "SUCCESS"
    assert node.trigger_activate().name == "SUCCESS"
    client.wait_for(lambda: client.image_pub.get_subscription_count() > 0
                    and client.points_pub.get_subscription_count() > 0, "the node's subscriptions")
    yield node, client
    node.trigger_deactivate()
    executor.shutdown()
    node.destroy_node()
    client.node.destroy_node()
    rclpy.shutdown()
    spinner.join(timeout=10)


def _stamp(msg: object, sec: int, nanosec: int, frame_id: str = CAMERA) -> object:
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = frame_id
    return msg


def _image_msg(rgb: np.ndarray, sec: int, nanosec: int = 0, encoding: str = "rgb8") -> Image:
    msg = _stamp(numpy_to_image(RclpyFactory(), rgb, "rgb8"), sec, nanosec)
    msg.encoding = encoding
    return msg


def _camera_info(rgb: np.ndarray) -> CameraInfo:
    h, w = rgb.shape[:2]
    msg = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                     k=[FOCAL, 0.0, w / 2, 0.0, FOCAL, h / 2, 0.0, 0.0, 1.0])
    msg.header.frame_id = CAMERA
    return msg


def _inside_point(mask: np.ndarray) -> tuple[float, float]:
    """The pixel deepest inside the object (maximum of the distance transform)."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def _point_msg(xy: tuple[float, float], sec: int, nanosec: int, id: str) -> PointPrompt:
    return _stamp(PointPrompt(id=id, points=[Point(x=xy[0], y=xy[1], z=0.0)], labels=[1]), sec, nanosec)


def _box(mask: np.ndarray) -> BoundingBox2D:
    ys, xs = np.nonzero(mask)
    box = BoundingBox2D(size_x=float(xs.max() + 1 - xs.min()), size_y=float(ys.max() + 1 - ys.min()))
    box.center.position.x = (xs.min() + xs.max() + 1) / 2
    box.center.position.y = (ys.min() + ys.max() + 1) / 2
    return box


def _check_click(result: InstanceArray, rgb: np.ndarray, gt: np.ndarray, click: tuple[float, float],
                 prompt_id: str) -> None:
    """One click may select a part of a toy (SAM's ambiguity), so: the mask holds the click and lies on
    the clicked object."""
    assert result.header.frame_id == CAMERA
    assert (result.image_height, result.image_width) == rgb.shape[:2]
    assert [i.prompt_id for i in result.instances] == [prompt_id]
    mask = _mask(result.instances[0], rgb.shape[:2])
    assert mask[int(click[1]), int(click[0])]
    precision = float((mask & gt).sum() / max(mask.sum(), 1))
    assert mask.sum() > 500 and precision > 0.9, f"{mask.sum()} px, {precision:.3f} of them on the object"


def _segment_and_check(client: Client, rgb: np.ndarray, gt: np.ndarray, sec: int, nanosec: int,
                       id: str) -> InstanceArray:
    """Publish a frame and a click on ``gt``'s object; the result must carry the frame's header."""
    before = len(client.got["instances"])
    client.image_pub.publish(_image_msg(rgb, sec, nanosec))
    click = _inside_point(gt)
    client.points_pub.publish(_point_msg(click, sec, nanosec, id))
    result = client.result_of(sec, nanosec, before)
    _check_click(result, rgb, gt, click, id)
    return result


def test_click_on_a_real_photo_gives_a_named_mask_with_the_frame_stamp(ros, photo):
    _, client = ros
    rgb, gts = photo
    result = _segment_and_check(client, rgb, gts[0], 1_700_000_000, 123_456_789, "toy")
    inst = result.instances[0]
    assert inst.label == "toy" and inst.class_index == 0  # the only class of the vocabulary
    assert result.vocabulary.startswith("toys@")


def test_bad_input_is_logged_and_the_node_keeps_answering(ros, photo):
    _, client = ros
    rgb, gts = photo
    client.image_pub.publish(_image_msg(rgb, 1_700_000_001, 0, encoding="yuv_unknown"))
    client.wait_for(lambda: any("unsupported image encoding 'yuv_unknown'" in m for m in client.got["logs"]),
                    "the warning about the unknown encoding")
    client.points_pub.publish(_point_msg((-40.0, 10.0), 1_700_000_001, 0, "off_image"))
    client.wait_for(lambda: any("off_image" in m and "outside" in m for m in client.got["logs"]),
                    "the warning about the click outside the image")
    _segment_and_check(client, rgb, gts[1], 1_700_000_002, 5, "still_alive")


def test_rviz_click_in_a_fixed_frame_lands_on_the_frame_it_was_made_on(ros, photo, bear):
    """As RViz's "Publish Point" does: a PointStamped in the fixed frame ("world"), a static transform
    world -> camera, CameraInfo. Two frames are streamed; the click carries the first one's stamp, so
    it must be answered on the first frame, not on the newest."""
    _, client = ros
    rgb, gts = photo
    other = cv2.cvtColor(cv2.imread(str(bear.image_dir / "2.jpeg")), cv2.COLOR_BGR2RGB)
    broadcaster = StaticTransformBroadcaster(client.node)
    tf = TransformStamped()
    tf.header.frame_id, tf.child_frame_id = "world", CAMERA
    tf.transform.translation.x, tf.transform.translation.z = 0.5, -1.0  # camera = world shifted
    tf.transform.rotation.w = 1.0
    broadcaster.sendTransform(tf)
    client.info_pub.publish(_camera_info(rgb))
    time.sleep(0.5)
    first, newest = (1_700_000_020, 0), (1_700_000_021, 0)
    client.image_pub.publish(_image_msg(rgb, *first))
    client.image_pub.publish(_image_msg(cv2.resize(other, rgb.shape[1::-1]), *newest))
    u, v = _inside_point(gts[0])
    z = 2.0  # the clicked surface, 2 m in front of the camera, in world coordinates
    camera_point = np.array([(u - rgb.shape[1] / 2) * z / FOCAL, (v - rgb.shape[0] / 2) * z / FOCAL, z])
    world = camera_point + np.array([0.5, 0.0, -1.0])
    before = len(client.got["instances"])
    click = _stamp(PointStamped(point=Point(x=world[0], y=world[1], z=world[2])), *first, frame_id="world")
    client.click_pub.publish(click)
    result = client.result_of(*first, since=before)
    assert result.instances[0].prompt_id.startswith("click_")
    _check_click(result, rgb, gts[0], (u, v), result.instances[0].prompt_id)


def test_boxes_from_a_best_effort_detector(ros, photo):
    _, client = ros
    rgb, gts = photo
    sec = 1_700_000_030
    before = len(client.got["instances"])
    client.image_pub.publish(_image_msg(rgb, sec))
    detections = _stamp(Detection2DArray(), sec, 0)
    detections.detections = [Detection2D(id=f"det_{k}", bbox=_box(gt)) for k, gt in enumerate(gts[:2])]
    client.boxes_pub.publish(detections)
    result = client.result_of(sec, since=before)
    assert [i.prompt_id for i in result.instances] == ["det_0", "det_1"]
    for inst, gt in zip(result.instances, gts, strict=False):
        assert inst.prompt_type == Instance.PROMPT_BOX and _iou(_mask(inst, rgb.shape[:2]), gt) > 0.85
    client.boxes_pub.publish(_stamp(Detection2DArray(), sec, 0))  # an empty array clears the boxes
    client.wait_for(lambda: node_standing(ros[0]).get("boxes") is None, "the boxes to be cleared")


def node_standing(node: OvsamNode) -> dict:
    return node._session.engine.standing()


def test_text_query_stands_on_new_frames_until_cleared(ros, photo):
    """"toy" is the vocabulary's only class, so every everything-mode candidate answers it."""
    node, client = ros
    rgb, gts = photo
    client.text_pub.publish(String(data="toy"))
    client.wait_for(lambda: "text" in node_standing(node), "the standing text query")
    sec = 1_700_000_040
    before = len(client.got["instances"])
    click = _inside_point(gts[0])
    client.image_pub.publish(_image_msg(rgb, sec))
    client.points_pub.publish(_point_msg(click, sec, 0, "with_text"))
    result = client.result_of(sec, since=before)
    kinds = [i.prompt_type for i in result.instances]
    assert kinds[0] == Instance.PROMPT_POINT and kinds.count(Instance.PROMPT_TEXT) == len(kinds) - 1 >= 1
    texts = [i for i in result.instances if i.prompt_type == Instance.PROMPT_TEXT]
    assert all(i.label == "toy" and i.prompt_id == "toy" for i in texts)
    masks = [_mask(i, rgb.shape[:2]) for i in texts]
    assert max(_iou(m, gt) for m in masks for gt in gts) > 0.6  # the candidates are the toys

    reply = client.call(client.clear, Trigger.Request())
    assert reply.success and "text" not in node_standing(node)
    before = len(client.got["instances"])
    client.image_pub.publish(_image_msg(rgb, sec + 1))
    client.points_pub.publish(_point_msg(click, sec + 1, 0, "after_clear"))
    result = client.result_of(sec + 1, since=before)
    assert [i.prompt_id for i in result.instances] == ["after_clear"]


def test_set_vocabulary_updates_the_parameter_and_label_info(ros):
    node, client = ros
    original = node.get_parameter("vocab.vocabulary").value
    reply = client.call(client.set_vocabulary, SetVocabulary.Request(names=["toy, teddy bear", "cup, mug"]))
    assert reply.success, reply.message
    assert reply.size == 2 and reply.vocabulary_id.startswith("names-")
    path = node.get_parameter("vocab.vocabulary").value
    assert path.endswith(".txt") and Path(path).read_text() == "toy, teddy bear\ncup, mug\n"
    # a subscriber that joins now still gets the active LabelInfo (transient local)
    client.subscribe(LabelInfo, "label_info", "label_info", LATCHED)
    client.wait_for(lambda: any([c.class_name for c in m.class_map] == ["toy", "cup", "unlabeled"]
                                for m in client.got["label_info"]), "the LabelInfo of the new vocabulary")
    label_info = client.got["label_info"][-1]
    assert label_info.header.stamp.sec > 0
    bad = client.call(client.set_vocabulary, SetVocabulary.Request(file="/nonexistent/classes.txt"))
    assert not bad.success and "cannot read vocabulary file" in bad.message
    assert node.get_parameter("vocab.vocabulary").value == path  # unchanged by the refused request
    reply = client.call(client.set_vocabulary, SetVocabulary.Request(preset="coco", file="/x.txt"))
    assert not reply.success and "exactly one" in reply.message
    # back to the one-class vocabulary the other tests rely on, through the parameter itself
    assert node.set_parameters([Parameter("vocab.vocabulary", value=original)])[0].successful
    assert node._vocabulary_change.result(timeout=TIMEOUT_S).active.startswith("toys@")


def test_depth_gives_3d_detections_and_a_cloud_to_click_on(ros, photo):
    _, client = ros
    rgb, gts = photo
    client.info_pub.publish(_camera_info(rgb))
    client.subscribe(PointCloud2, "points", "points")
    client.wait_for(lambda: ros[0]._wants("points"), "the node to see the cloud subscriber")
    sec = 1_700_000_050
    depth = np.full(rgb.shape[:2], 1.5, dtype=np.float32)
    client.depth_pub.publish(_stamp(numpy_to_image(RclpyFactory(), depth, "32FC1"), sec, 0))
    client.image_pub.publish(_image_msg(rgb, sec))
    client.points_pub.publish(_point_msg(_inside_point(gts[0]), sec, 0, "in_3d"))
    client.wait_for(lambda: any(m.header.stamp.sec == sec for m in client.got["detections_3d"]),
                    "the Detection3DArray")
    det = next(m for m in client.got["detections_3d"] if m.header.stamp.sec == sec)
    assert det.header.frame_id == CAMERA and len(det.detections) == 1
    assert det.detections[0].bbox.center.position.z == pytest.approx(1.5, abs=1e-3)
    client.wait_for(lambda: any(m.header.stamp.sec == sec for m in client.got["points"]), "the depth cloud")
    cloud = next(m for m in client.got["points"] if m.header.stamp.sec == sec)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"] and cloud.header.frame_id == CAMERA
    xyz = np.frombuffer(bytes(cloud.data), dtype=np.float32).reshape(-1, 4)[:, :3]
    assert len(xyz) == (rgb.shape[0] // 2) * (rgb.shape[1] // 2) and np.allclose(xyz[:, 2], 1.5)


def test_overlay_is_drawn_only_while_subscribed(ros, photo):
    node, client = ros
    rgb, gts = photo
    assert not node._wants("overlay")
    sub = client.subscribe(Image, "overlay", "overlay")
    client.wait_for(lambda: node._wants("overlay"), "the node to see the overlay subscriber")
    sec = 1_700_000_060
    client.image_pub.publish(_image_msg(rgb, sec))
    client.points_pub.publish(_point_msg(_inside_point(gts[0]), sec, 0, "drawn"))
    client.wait_for(lambda: any(m.header.stamp.sec == sec for m in client.got["overlay"]), "the overlay")
    drawn = image_to_rgb(next(m for m in client.got["overlay"] if m.header.stamp.sec == sec))
    assert drawn.shape == rgb.shape and not np.array_equal(drawn, rgb)
    client.node.destroy_subscription(sub)
    client.wait_for(lambda: not node._wants("overlay"), "the overlay subscriber to leave")


def test_tracking_follows_a_click_with_one_id_and_ends_when_turned_off(ros, photo):
    """``ros2 param set /ovsam_node tracking.enabled true``: a click on one frame keeps its toy on the
    next frames of a panning camera with one track id and no new prompt (the tracks stand, so
    ``engine.encode_mode: auto`` encodes for them); ``tracking.enabled false`` ends the track with an
    event on ~/track_events."""
    node, client = ros
    rgb, gts = photo
    client.subscribe(InstanceArray, "track_events", "track_events")
    assert node.set_parameters([Parameter("tracking.enabled", value=True),
                                Parameter("engine.encode_mode", value="auto")])[0].successful
    try:
        sec, masks = 1_700_000_400, []
        for t in range(3):
            before = len(client.got["instances"])
            shifted = np.roll(rgb, 10 * t, axis=1)
            client.image_pub.publish(_image_msg(shifted, sec + t))
            if t == 0:
                client.points_pub.publish(_point_msg(_inside_point(gts[0]), sec, 0, "follow_me"))
            result = client.result_of(sec + t, since=before)
            (inst,) = result.instances
            assert inst.prompt_id == "follow_me" and inst.track_state == Instance.TRACK_CONFIRMED
            assert inst.track_age == t and inst.id == str(inst.track_id) and inst.track_id > 0
            masks.append((inst.track_id, _mask(inst, rgb.shape[:2])))
        assert len({track_id for track_id, _ in masks}) == 1
        for t, (_, mask) in enumerate(masks):
            assert _iou(mask, np.roll(masks[0][1], 10 * t, axis=1)) > 0.8
    finally:
        assert node.set_parameters([Parameter("tracking.enabled", value=False),
                                    Parameter("engine.encode_mode", value="on_demand")])[0].successful
    client.wait_for(lambda: client.got["track_events"], "the end event of the track")
    (ended,) = client.got["track_events"][0].instances
    assert (ended.track_id, ended.track_state) == (masks[0][0], Instance.TRACK_ENDED)
    client.wait_for(lambda: "tracks" not in node_standing(node), "the re-prompts to stop standing")


def test_concurrent_segment_calls_during_streaming_match_sequential_ones(ros, photo):
    """Three ~/segment calls at once (each a box and a text query on a given image) while frames stream
    and a text query stands: the model runs on one thread, so each answer equals the same call made
    alone."""
    node, client = ros
    rgb, gts = photo

    def request(k: int) -> Segment.Request:
        req = Segment.Request(image=_image_msg(rgb, 1_700_000_100 + k), text="toy")
        req.boxes, req.box_ids = [_box(gts[k % len(gts)])], [f"box_{k}"]
        return req

    def answer(reply: Segment.Response) -> list[tuple]:
        assert reply.success, reply.message
        return [(i.prompt_id, i.label, round(i.score, 5), _mask(i, rgb.shape[:2]).tobytes())
                for i in reply.instances.instances]

    sequential = [answer(client.call(client.segment, request(k))) for k in range(3)]
    client.text_pub.publish(String(data="toy"))
    client.wait_for(lambda: "text" in node_standing(node), "the standing text query")
    assert node.set_parameters([Parameter("engine.encode_mode", value="auto")])[0].successful
    stop = threading.Event()

    def stream() -> None:
        k = 0
        while not stop.is_set():
            client.image_pub.publish(_image_msg(rgb, 1_700_000_200 + k))
            k += 1
            time.sleep(0.5)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        futures = [client.segment.call_async(request(k)) for k in range(3)]
        client.wait_for(lambda: all(f.done() for f in futures), "three concurrent replies")
        concurrent = [answer(f.result()) for f in futures]
    finally:
        stop.set()
        streamer.join()
        client.call(client.clear, Trigger.Request())
        assert node.set_parameters([Parameter("engine.encode_mode", value="on_demand")])[0].successful
    assert concurrent == sequential
    assert [row[0] for row in sequential[0]][:1] == ["box_0"] and len(sequential[0]) > 1


def test_parameters_are_validated_and_services_refuse_clearly(ros):
    node, client = ros
    results = node.set_parameters([Parameter("vocab.top_k", value=1000)])
    assert not results[0].successful and "vocab.top_k" in results[0].reason
    results = node.set_parameters([Parameter("engine.encode_mode", value="sometimes")])
    assert not results[0].successful and "engine.encode_mode must be one of" in results[0].reason
    results = node.set_parameters([Parameter("model.preset", value="ovsam-coco")])
    assert not results[0].successful  # read-only: the model changes only with a restart
    engine = node._session.engine
    assert node.set_parameters([Parameter("engine.sync_slop_s", value=0.1)])[0].successful
    assert node.get_parameter("engine.sync_slop_s").value == 0.1
    assert node._session.engine is engine and engine.config.sync_slop_s == 0.1  # in place, cache kept
    empty = client.call(client.segment, Segment.Request())
    assert not empty.success and "no prompt" in empty.message


def test_diagnostics_tell_why_a_node_is_not_configured(ros, tmp_path, monkeypatch):
    _, client = ros
    monkeypatch.setenv("OVSAM_ROS_OFFLINE", "1")
    node = OvsamNode("ovsam_no_weights", parameter_overrides=[
        Parameter("model.preset", value="ovsam-coco"),
        Parameter("model.weights_dir", value=str(tmp_path)),
        Parameter("model.device", value="cpu"),
        Parameter("node.diagnostics_rate_hz", value=20.0),
    ])
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def status_of(message_part: str) -> Callable[[], bool]:
        return lambda: any(s.name.startswith("/ovsam_no_weights") and message_part in s.message
                           for m in client.got["diagnostics"] for s in m.status)
    try:
        client.wait_for(status_of("unconfigured"), "diagnostics of the unconfigured node")
        assert node.trigger_configure().name == "FAILURE"
        client.wait_for(lambda: any("cannot load the ovsam-coco model" in m for m in client.got["logs"]),
                        "the error naming the missing weights")
        client.wait_for(status_of("configure failed"), "diagnostics of the failed configure")
        failed = [s for m in client.got["diagnostics"] for s in m.status
                  if s.name.startswith("/ovsam_no_weights") and "configure failed" in s.message]
        assert failed[-1].level == DiagnosticStatus.ERROR and "ovsam-coco" in failed[-1].message
    finally:
        executor.shutdown()
        node.destroy_node()
        spinner.join(timeout=10)


def test_cv_bridge_and_the_ros_free_path_decode_identically(photo):
    decode = cv_bridge_decoder()
    assert decode is not None, "cv_bridge must import under the ROS 2 environment"
    rgb = photo[0][:120, :160]
    f = RclpyFactory()
    alpha = np.full(rgb.shape[:2], 7, np.uint8)
    variants = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.dstack([rgb, alpha]),
                "bgra8": np.dstack([rgb[:, :, ::-1], alpha]), "mono8": rgb[:, :, 1]}
    for encoding, pixels in variants.items():
        msg = numpy_to_image(f, np.ascontiguousarray(pixels), encoding)
        assert np.array_equal(decode(msg), image_to_rgb(msg)), encoding
    for fmt in ("jpeg", "png"):
        msg = numpy_to_compressed(f, rgb, "rgb8", fmt=fmt)
        assert np.array_equal(decode(msg), image_to_rgb(msg)), fmt


def test_an_incompatible_image_publisher_is_named_in_the_log_and_diagnostics(ros):
    """The node subscribes reliably here (``node.image_qos``); a best-effort camera driver can never
    reach it, and the user must hear why nothing arrives."""
    _, client = ros
    camera = rclpy.create_node("best_effort_camera")
    # no event handlers: destroying it below must not race the spinning executor (ros2/rclpy#1284)
    camera.create_publisher(Image, "/image", BEST_EFFORT,
                            event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))
    try:
        client.wait_for(lambda: any("incompatible QoS on /image from /best_effort_camera" in m
                                    and "reliable subscription" in m for m in client.got["logs"]),
                        "the warning naming the best-effort publisher")
        client.wait_for(lambda: any("incompatible QoS on /image" in s.message
                                    and s.level >= DiagnosticStatus.WARN
                                    for m in client.got["diagnostics"] for s in m.status),
                        "the diagnostics status naming it")
    finally:
        camera.destroy_node()


def test_lifecycle_cycle_ends_with_a_working_node(ros, photo):
    """Many activate/deactivate rounds under a stream of CameraInfo (each destroys and creates every
    subscription while the executor spins), then configure -> activate -> deactivate -> cleanup ->
    configure -> activate, then a click again."""
    node, client = ros
    rgb, gts = photo
    info = _camera_info(rgb)
    for _ in range(20):
        client.info_pub.publish(info)
        assert node.trigger_deactivate().name == "SUCCESS"
        client.info_pub.publish(info)
        assert node.trigger_activate().name == "SUCCESS"
    assert node.trigger_deactivate().name == "SUCCESS"
    assert node.trigger_cleanup().name == "SUCCESS"
    assert node._session is None
    assert node.trigger_configure().name == "SUCCESS"
    assert node.trigger_activate().name == "SUCCESS"
    client.wait_for(lambda: client.image_pub.get_subscription_count() > 0
                    and client.points_pub.get_subscription_count() > 0, "the node's new subscriptions")
    _segment_and_check(client, rgb, gts[2], 1_700_000_300, 0, "after_cycle")
