"""The rclpy node for real: real MobileSAM weights, a real bear photo as sensor_msgs/Image over DDS.

Needs a ROS 2 environment with this package built (``ovsam_ros.msg`` generated); skipped without.
One node is spun in-process for the whole module (the model loads once) next to a plain client node
that publishes frames and prompts and listens to the outputs and to /rosout, where the node's
warnings about bad input land.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs ROS 2 (rclpy)")
pytest.importorskip("ovsam_ros.msg", reason="needs the built ovsam_ros package (generated messages)")

from geometry_msgs.msg import Point  # noqa: E402
from ovsam_ros.msg import InstanceArray, PointPrompt  # noqa: E402
from ovsam_ros.srv import Segment, SetVocabulary  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import BoundingBox2D  # noqa: E402

from ovsam_ros.node import OvsamNode  # noqa: E402
from ovsam_ros.ros.factory import RclpyFactory  # noqa: E402
from ovsam_ros.ros.image_conversions import numpy_to_image  # noqa: E402
from ovsam_ros.ros.mask_conversions import roi_image_to_mask  # noqa: E402

TIMEOUT_S = 120.0  # a MobileSAM encode takes ~2 s on 2 free cores; CI machines are busier
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


class Client:
    """The outside world: publishes frames and prompts, collects results and log lines."""

    def __init__(self, node_name: str) -> None:
        self.node = rclpy.create_node("ovsam_test_client")
        ns = f"/{node_name}"
        self.image_pub = self.node.create_publisher(Image, "/image", RELIABLE)
        self.points_pub = self.node.create_publisher(PointPrompt, "/prompts/points", RELIABLE)
        self.results: list[InstanceArray] = []
        self.logs: list[str] = []
        self.lock = threading.Lock()
        self.node.create_subscription(InstanceArray, f"{ns}/instances", self._on_result, RELIABLE)
        self.node.create_subscription(Log, "/rosout", self._on_log, QoSProfile(depth=100))
        self.segment = self.node.create_client(Segment, f"{ns}/segment")
        self.set_vocabulary = self.node.create_client(SetVocabulary, f"{ns}/set_vocabulary")

    def _on_result(self, msg: InstanceArray) -> None:
        with self.lock:
            self.results.append(msg)

    def _on_log(self, msg: Log) -> None:
        with self.lock:
            self.logs.append(msg.msg)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if condition():
                    return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=30.0), f"service {client.srv_name} not available"
        future = client.call_async(request)
        self.wait_for(future.done, f"a reply from {client.srv_name}")
        return future.result()


@pytest.fixture(scope="module")
def photo(bear):
    """The first bear photo (RGB) and the GT masks of its objects."""
    coco = COCO(str(bear.annotations))
    info = coco.imgs[min(coco.imgs)]
    bgr = cv2.imread(str(bear.image_dir / info["file_name"]))
    masks = [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[info["id"]]]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), masks


@pytest.fixture(scope="module")
def ros(mobile_sam_path):
    """A configured and active ovsam_node (MobileSAM, CPU, on-demand encoding) plus a client node."""
    rclpy.init()
    node = OvsamNode(parameter_overrides=[
        Parameter("model.preset", value="mobilesam"),
        Parameter("model.weights_dir", value=str(mobile_sam_path.parent)),
        Parameter("model.device", value="cpu"),
        Parameter("engine.encode_mode", value="on_demand"),
        Parameter("engine.prompt_wait_s", value=5.0),
        Parameter("engine.max_prompt_age_s", value=3600.0),
        Parameter("node.image_qos", value="reliable"),
        Parameter("node.image_topic", value="/image"),
        Parameter("everything.points_per_side", value=8),  # a small grid keeps everything mode quick
    ])
    client = Client(node.get_name())
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    executor.add_node(client.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
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


def _image_msg(rgb: np.ndarray, sec: int, nanosec: int, encoding: str = "rgb8") -> Image:
    msg = numpy_to_image(RclpyFactory(), rgb, "rgb8")
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = "camera_optical"
    msg.encoding = encoding
    return msg


def _inside_point(mask: np.ndarray) -> tuple[float, float]:
    """The pixel deepest inside the object (maximum of the distance transform)."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def _point_msg(xy: tuple[float, float], sec: int, nanosec: int, id: str) -> PointPrompt:
    msg = PointPrompt(id=id, points=[Point(x=xy[0], y=xy[1], z=0.0)], labels=[1])
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


def _segment_and_check(client: Client, rgb: np.ndarray, gt: np.ndarray, sec: int, nanosec: int,
                       id: str) -> InstanceArray:
    """Publish a frame and a click on ``gt``'s object; the result must carry the frame's header."""
    before = len(client.results)
    client.image_pub.publish(_image_msg(rgb, sec, nanosec))
    click = _inside_point(gt)
    client.points_pub.publish(_point_msg(click, sec, nanosec, id))
    client.wait_for(lambda: any(r.header.stamp.sec == sec and r.header.stamp.nanosec == nanosec
                                for r in client.results[before:]),
                    f"the InstanceArray of frame {sec}.{nanosec}")
    with client.lock:
        result = next(r for r in client.results[before:] if r.header.stamp.sec == sec)
    assert result.header.frame_id == "camera_optical"
    assert (result.image_height, result.image_width) == rgb.shape[:2]
    assert [i.prompt_id for i in result.instances] == [id]
    inst = result.instances[0]
    mask = roi_image_to_mask(inst.mask, inst.roi, rgb.shape[:2])
    # One click may select a part of a toy (SAM's ambiguity), so: the mask holds the click and lies on
    # the clicked object.
    assert mask[int(click[1]), int(click[0])]
    precision = float((mask & gt).sum() / max(mask.sum(), 1))
    assert mask.sum() > 500 and precision > 0.9, f"{mask.sum()} px, {precision:.3f} of them on the object"
    assert inst.label == "" and inst.class_index == -1  # MobileSAM alone segments, it does not name
    return result


def test_click_on_a_real_photo_gives_a_mask_with_the_frame_stamp(ros, photo):
    _, client = ros
    rgb, gts = photo
    _segment_and_check(client, rgb, gts[0], 1_700_000_000, 123_456_789, "toy")


def test_bad_input_is_logged_and_the_node_keeps_answering(ros, photo):
    _, client = ros
    rgb, gts = photo
    client.image_pub.publish(_image_msg(rgb, 1_700_000_001, 0, encoding="yuv_unknown"))
    client.wait_for(lambda: any("unsupported image encoding 'yuv_unknown'" in m for m in client.logs),
                    "the warning about the unknown encoding")
    client.points_pub.publish(_point_msg((-40.0, 10.0), 1_700_000_001, 0, "off_image"))
    client.wait_for(lambda: any("off_image" in m and "outside" in m for m in client.logs),
                    "the warning about the click outside the image")
    _segment_and_check(client, rgb, gts[1], 1_700_000_002, 5, "still_alive")


def test_segment_service_answers_from_the_newest_frame(ros, photo):
    _, client = ros
    rgb, gts = photo
    _segment_and_check(client, rgb, gts[0], 1_700_000_003, 0, "newest")
    ys, xs = np.nonzero(gts[0])
    request = Segment.Request()
    box = BoundingBox2D(size_x=float(xs.max() + 1 - xs.min()), size_y=float(ys.max() + 1 - ys.min()))
    box.center.position.x = (xs.min() + xs.max() + 1) / 2
    box.center.position.y = (ys.min() + ys.max() + 1) / 2
    request.boxes, request.box_ids = [box], ["gt_box"]
    reply = client.call(client.segment, request)
    assert reply.success, reply.message
    header = reply.instances.header
    assert (header.stamp.sec, header.frame_id) == (1_700_000_003, "camera_optical")
    inst = reply.instances.instances[0]
    assert inst.prompt_id == "gt_box"
    assert _iou(roi_image_to_mask(inst.mask, inst.roi, rgb.shape[:2]), gts[0]) > 0.85
    empty = client.call(client.segment, Segment.Request())
    assert not empty.success and "no prompt" in empty.message


def test_standing_everything_segments_each_new_frame(ros, photo):
    """``everything.standing`` (dynamic) adds an everything prompt to every newly encoded frame; auto
    encoding then encodes frames nobody clicked on."""
    node, client = ros
    rgb, gts = photo
    changes = [Parameter("engine.encode_mode", value="auto"), Parameter("everything.standing", value=True)]
    assert all(r.successful for r in node.set_parameters(changes))
    try:
        before = len(client.results)
        client.image_pub.publish(_image_msg(rgb, 1_700_000_010, 0))
        client.wait_for(lambda: any(r.header.stamp.sec == 1_700_000_010 for r in client.results[before:]),
                        "everything-mode instances of an unprompted frame")
        with client.lock:
            result = next(r for r in client.results[before:] if r.header.stamp.sec == 1_700_000_010)
        assert result.instances and all(i.prompt_type == i.PROMPT_EVERYTHING for i in result.instances)
        masks = [roi_image_to_mask(i.mask, i.roi, rgb.shape[:2]) for i in result.instances]
        # an 8x8 grid finds two of the three toys on this photo (a 16x16 grid finds all three)
        assert sum(max(_iou(m, gt) for m in masks) > 0.6 for gt in gts) >= 2
    finally:
        restore = [Parameter("everything.standing", value=False), Parameter("engine.encode_mode",
                                                                              value="on_demand")]
        assert all(r.successful for r in node.set_parameters(restore))


def test_parameters_are_validated_and_services_refuse_clearly(ros):
    node, client = ros
    results = node.set_parameters([Parameter("vocab.top_k", value=1000)])
    assert not results[0].successful and "vocab.top_k" in results[0].reason
    results = node.set_parameters([Parameter("engine.encode_mode", value="sometimes")])
    assert not results[0].successful and "engine.encode_mode must be one of" in results[0].reason
    results = node.set_parameters([Parameter("model.preset", value="ovsam-coco")])
    assert not results[0].successful  # read-only: the model changes only with a restart
    engine = node._engine
    assert node.set_parameters([Parameter("engine.sync_slop_s", value=0.1)])[0].successful
    assert node.get_parameter("engine.sync_slop_s").value == 0.1
    assert node._engine is engine and engine.config.sync_slop_s == 0.1  # changed in place, cache kept
    reply = client.call(client.set_vocabulary, SetVocabulary.Request(preset="coco"))
    assert not reply.success and "recognizer" in reply.message
    reply = client.call(client.set_vocabulary, SetVocabulary.Request(preset="coco", file="/x.txt"))
    assert not reply.success and "exactly one" in reply.message


def test_missing_weights_leave_the_node_unconfigured_and_alive(ros, tmp_path, monkeypatch):
    _, client = ros
    monkeypatch.setenv("OVSAM_ROS_OFFLINE", "1")
    node = OvsamNode("ovsam_no_weights", parameter_overrides=[
        Parameter("model.preset", value="ovsam-coco"),
        Parameter("model.weights_dir", value=str(tmp_path)),
        Parameter("model.device", value="cpu"),
    ])
    try:
        assert node.trigger_configure().name == "FAILURE"
        client.wait_for(lambda: any("cannot load the ovsam-coco model" in m for m in client.logs),
                        "the error naming the missing weights")
    finally:
        node.destroy_node()
