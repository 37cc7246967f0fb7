"""Results -> every output message, through rosbags classes and CDR bytes; prompt messages -> Prompts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ovsam_ros.prompts import PromptError, PromptKind
from ovsam_ros.results import FrameResult, Instance, mask_bbox
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.geometry import Box3D
from ovsam_ros.ros.image_conversions import image_to_numpy
from ovsam_ros.ros.mask_conversions import UNLABELED, mask_to_roi_image, roi_image_to_mask
from ovsam_ros.ros.message_builders import (
    MARKER_CUBE,
    MARKER_DELETEALL,
    MARKER_TEXT,
    class_image_msg,
    detection2d_array_msg,
    detection3d_array_msg,
    frame_result_from_msg,
    instance_array_msg,
    instance_image_msg,
    label_info_msg,
    make_header,
    make_stamp,
    marker_array_msg,
    stamp_seconds,
)
from ovsam_ros.ros.prompt_conversions import detection_prompts, point_prompt, segment_request_prompts

STAMP = 1700000000.25


@pytest.fixture(scope="module")
def factory():
    return RosbagsFactory()


def wire(factory, msg):
    return factory.deserialize(factory.serialize(msg), msg.__msgtype__)


@pytest.fixture(scope="module")
def result(bear):
    """The ground-truth masks of the first bear photo as a FrameResult, plus one unnamed instance."""
    coco = json.loads(bear.annotations.read_text())
    image = coco["images"][0]
    h, w = image["height"], image["width"]
    instances = []
    for k, ann in enumerate(a for a in coco["annotations"] if a["image_id"] == image["id"]):
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))) > 0
        instances.append(Instance(
            mask=mask, bbox=mask_bbox(mask), mask_score=0.9, prompt_kind=PromptKind.BOX,
            prompt_id=f"gt_{ann['id']}", id=str(k), label="toy robot", class_index=3, score=0.75,
            top_k=[("toy robot", 0.75), ("doll", 0.125)], stability_score=0.95))
    small = np.zeros((h, w), bool)
    small[10:14, 20:23] = True
    instances.append(Instance(mask=small, bbox=mask_bbox(small), mask_score=0.5, prompt_kind=PromptKind.POINT,
                              prompt_id="click", id="unnamed"))
    return FrameResult(stamp=STAMP, frame_id="camera_optical", image_size=(h, w), instances=instances,
                       vocabulary="custom:0123", errors=["box prompt 'x' has no area"])


def test_instance_array_round_trip_is_exact(factory, result):
    msg = wire(factory, instance_array_msg(factory, result))
    assert msg.header.stamp.sec == 1700000000 and msg.header.stamp.nanosec == 250_000_000
    assert (msg.image_height, msg.image_width) == result.image_size
    first = msg.instances[0]
    assert first.mask.encoding == "mono8" and set(np.unique(first.mask.data)) <= {0, 255}
    x0, y0, x1, y1 = result.instances[0].bbox
    roi = first.roi
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (x0, y0, x1 - x0, y1 - y0)
    assert first.mask.header.stamp == msg.header.stamp
    last = msg.instances[-1]
    assert last.class_index == -1 and last.prompt_type == last.PROMPT_POINT
    back = frame_result_from_msg(msg)
    assert (back.stamp, back.frame_id, back.vocabulary, back.errors) == (
        STAMP, "camera_optical", "custom:0123", result.errors)
    for a, b in zip(result.instances, back.instances, strict=True):
        assert np.array_equal(a.mask, b.mask) and a.bbox == b.bbox and a.prompt_kind == b.prompt_kind
        assert (a.id, a.label, a.class_index, a.score, a.prompt_id) == (b.id, b.label, b.class_index, b.score,
                                                                         b.prompt_id)
        assert [n for n, _ in a.top_k] == [n for n, _ in b.top_k]
        assert np.allclose([p for _, p in a.top_k], [p for _, p in b.top_k])


def test_cropping_keeps_messages_small(factory, result):
    full = result.image_size[0] * result.image_size[1] * len(result.instances)
    assert len(factory.serialize(instance_array_msg(factory, result))) < full / 4


def test_given_header_is_used_verbatim(factory, result):
    header = make_header(factory, 0.0, "other")
    header.stamp = factory.make("builtin_interfaces/msg/Time", sec=12, nanosec=999_999_999)
    msg = wire(factory, detection2d_array_msg(factory, result, header))
    assert msg.header.stamp.nanosec == 999_999_999 and msg.detections[0].header.frame_id == "other"


def test_stamps():
    factory = RosbagsFactory()
    assert stamp_seconds(make_stamp(factory, 5.9999999999)) == 6.0
    t = make_stamp(factory, 1700000000.123456)
    assert t.sec == 1700000000 and abs(t.nanosec - 123456000) < 300


def test_detection2d_array(factory, result):
    msg = wire(factory, detection2d_array_msg(factory, result))
    assert len(msg.detections) == len(result.instances)
    det, inst = msg.detections[0], result.instances[0]
    x0, y0, x1, y1 = inst.bbox
    assert det.id == "0"
    assert (det.bbox.center.position.x, det.bbox.center.position.y) == ((x0 + x1) / 2, (y0 + y1) / 2)
    assert (det.bbox.size_x, det.bbox.size_y) == (x1 - x0, y1 - y0)
    ranked = [(h.hypothesis.class_id, h.hypothesis.score) for h in det.results]
    assert ranked == [("toy robot", 0.75), ("doll", 0.125)]
    assert msg.detections[-1].results == []  # unnamed: no hypothesis rather than a made-up one


def test_an_instance_below_the_threshold_is_unnamed_in_every_output(factory, result, tmp_path):
    """One no-name contract: InstanceArray, Detection2D, the class image, the CLI JSON record and the
    COCO export all say "unnamed" for an instance whose top-1 probability is under the threshold."""
    import torch

    from ovsam_ros.cli import instance_record
    from ovsam_ros.coco_export import to_coco
    from ovsam_ros.recognition import name_instances
    from ovsam_ros.vocab import Vocabulary

    vocab = Vocabulary.from_names(["toy robot", "doll", "mug"])
    probs = torch.tensor([[0.75, 0.125, 0.025, 0.1], [0.25, 0.2, 0.15, 0.4]])
    named, unnamed = name_instances(probs, vocab, top_k=2, score_threshold=0.5)
    first, second = (replace(i) for i in result.instances[:2])
    for inst, naming in ((first, named), (second, unnamed)):
        inst.label, inst.class_index, inst.score, inst.top_k = (naming.label, naming.class_index,
                                                                naming.score, list(naming.top_k))
    frame = replace(result, instances=[first, second])
    msg = wire(factory, instance_array_msg(factory, frame)).instances[1]
    assert (msg.label, msg.class_index, list(msg.top_labels)) == ("", -1, [])
    assert msg.score == pytest.approx(0.25)
    assert wire(factory, detection2d_array_msg(factory, frame)).detections[1].results == []
    classes = image_to_numpy(wire(factory, class_image_msg(factory, frame)))
    assert np.all(classes[second.mask] == UNLABELED) and np.all(classes[first.mask] == 0)
    record = instance_record(second, {})
    assert (record["label"], record["class_index"], record["top_k"]) == ("", -1, [])
    coco = to_coco([(1, "a.png", *result.image_size, [first, second])], vocab)
    assert [a["category_id"] for a in coco["annotations"]] == [1, 0]
    assert coco["categories"][0]["name"] == "unlabeled"


def test_instance_and_class_images(factory, result):
    ids = image_to_numpy(wire(factory, instance_image_msg(factory, result)))
    classes = image_to_numpy(wire(factory, class_image_msg(factory, result)))
    assert ids.dtype == np.uint16 and ids.shape == result.image_size
    for k, inst in enumerate(result.instances):
        assert np.all(ids[inst.mask] == k + 1)  # GT masks do not overlap; the small one is on background
    assert np.all(ids[~np.any([i.mask for i in result.instances], axis=0)] == 0)
    assert np.all(classes[result.instances[0].mask] == 3)
    assert np.all(classes[result.instances[-1].mask] == UNLABELED) and classes[0, 0] == UNLABELED


def test_small_instance_stays_on_top(factory):
    big, small = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    big[:, :] = True
    small[2:4, 2:4] = True
    res = FrameResult(0.0, "f", (8, 8), [
        Instance(small, mask_bbox(small), 1.0, PromptKind.POINT),
        Instance(big, mask_bbox(big), 1.0, PromptKind.POINT)])
    ids = image_to_numpy(instance_image_msg(factory, res))
    assert ids[2, 2] == 1 and ids[0, 0] == 2


def test_label_info(factory):
    msg = wire(factory, label_info_msg(factory, ["mug", "cup"], threshold=0.25))
    pairs = [(c.class_id, c.class_name) for c in msg.class_map]
    assert pairs == [(0, "mug"), (1, "cup"), (65535, "unlabeled")]
    assert msg.threshold == 0.25


def test_empty_mask_round_trip(factory):
    image, roi = mask_to_roi_image(factory, np.zeros((5, 6), bool))
    image, roi = wire(factory, image), wire(factory, roi)
    assert (image.height, image.width, roi.width, roi.height) == (0, 0, 0, 0)
    assert not roi_image_to_mask(image, roi, (5, 6)).any()


def test_3d_detections_and_markers(factory, result):
    boxes = [Box3D(np.array([0.1, 0.2, 1.5]), np.array([0.1, 0.25, 1.5]), np.array([0.2, 0.3, 0.1]), 500)]
    boxes += [None] * (len(result.instances) - 1)
    msg = wire(factory, detection3d_array_msg(factory, result, boxes))
    assert len(msg.detections) == 1
    det = msg.detections[0]
    assert (det.bbox.center.position.x, det.bbox.center.position.z, det.bbox.size.y) == (0.1, 1.5, 0.3)
    assert det.bbox.center.orientation.w == 1.0
    assert det.results[0].pose.pose.position.y == 0.2 and det.results[0].hypothesis.class_id == "toy robot"

    markers = wire(factory, marker_array_msg(factory, result, boxes)).markers
    assert [m.action for m in markers] == [MARKER_DELETEALL, 0, 0]
    cube, text = markers[1], markers[2]
    assert cube.type == MARKER_CUBE and (cube.scale.x, cube.scale.y, cube.scale.z) == (0.2, 0.3, 0.1)
    assert text.type == MARKER_TEXT and text.text == "toy robot 0.75"
    assert text.pose.position.y == pytest.approx(0.25 - 0.15 - 0.05)
    assert text.header.frame_id == "camera_optical"
    with pytest.raises(ValueError, match="3D boxes"):
        marker_array_msg(factory, result, boxes[:1])


def _point_prompt(factory, points, labels, stamp=(0, 0)):
    header = factory.make("std_msgs/msg/Header",
                          stamp=factory.make("builtin_interfaces/msg/Time", sec=stamp[0], nanosec=stamp[1]))
    return wire(factory, factory.make(
        "ovsam_ros/msg/PointPrompt", header=header, id="p1", labels=labels,
        points=[factory.make("geometry_msgs/msg/Point", x=x, y=y) for x, y in points]))


def test_point_prompts(factory):
    prompt = point_prompt(_point_prompt(factory, [(10.5, 20.0), (30.0, 40.0)], [1, 0], (3, 500_000_000)))
    assert prompt.kind == PromptKind.POINT and prompt.id == "p1" and prompt.stamp == 3.5
    assert np.array_equal(prompt.points, [[10.5, 20.0], [30.0, 40.0]]) and prompt.labels.tolist() == [1, 0]
    assert point_prompt(_point_prompt(factory, [(1, 2)], [])).labels.tolist() == [1]
    for points, labels, words in (([], [], "no points"), ([(1, 2)], [1, 1], "1 points but 2 labels"),
                                  ([(1, 2)], [2], "labels must be"), ([(float("nan"), 2)], [1], "NaN"),
                                  ([(700, 2)], [1], "outside the 640x480")):
        with pytest.raises(PromptError, match=words):
            point_prompt(_point_prompt(factory, points, labels), image_size=(480, 640))


def _bbox(factory, cx, cy, sx, sy):
    position = factory.make("vision_msgs/msg/Point2D", x=cx, y=cy)
    center = factory.make("vision_msgs/msg/Pose2D", position=position)
    return factory.make("vision_msgs/msg/BoundingBox2D", center=center, size_x=sx, size_y=sy)


def test_detection_prompts_keep_ids_and_skip_bad_boxes(factory):
    dets = [factory.make("vision_msgs/msg/Detection2D", id="yolo_7", bbox=_bbox(factory, 50, 40, 20, 10)),
            factory.make("vision_msgs/msg/Detection2D", bbox=_bbox(factory, 50, 40, 0, 10))]
    msg = wire(factory, factory.make("vision_msgs/msg/Detection2DArray", detections=dets,
                                     header=make_header(factory, 7.25, "cam")))
    prompts, errors = detection_prompts(msg)
    assert len(prompts) == 1 and prompts[0].id == "yolo_7"
    assert prompts[0].standing and prompts[0].stamp == 7.25
    assert prompts[0].box.tolist() == [40.0, 35.0, 60.0, 45.0]
    assert len(errors) == 1 and "detection_1" in errors[0] and "no area" in errors[0]


def test_detections_from_results_round_trip_to_box_prompts(factory, result):
    prompts, errors = detection_prompts(wire(factory, detection2d_array_msg(factory, result)))
    assert not errors and [p.box.tolist() for p in prompts] == [list(i.bbox) for i in result.instances]


def test_segment_request(factory):
    req = wire(factory, factory.make(
        "ovsam_ros/srv/Segment_Request", text=" mug, screwdriver ", everything=True, box_ids=["b"],
        boxes=[_bbox(factory, 10, 10, 4, 4)], point_prompts=[_point_prompt(factory, [(5, 5)], [1], (9, 0))]))
    prompts = segment_request_prompts(req, image_size=(480, 640))
    kinds = [PromptKind.POINT, PromptKind.BOX, PromptKind.TEXT, PromptKind.EVERYTHING]
    assert [p.kind for p in prompts] == kinds
    assert prompts[0].stamp == 0.0 and prompts[1].id == "b" and prompts[2].text == "mug, screwdriver"
    assert not any(p.standing for p in prompts)
    with pytest.raises(PromptError, match="no prompt"):
        segment_request_prompts(factory.make("ovsam_ros/srv/Segment_Request"))
    with pytest.raises(PromptError, match="box_ids"):
        segment_request_prompts(factory.make("ovsam_ros/srv/Segment_Request", box_ids=["a"]))
