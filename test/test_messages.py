"""The msg/srv files parse with rosbags and survive a CDR round trip; the message factory's contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg

from ovsam_ros.prompts import PromptKind
from ovsam_ros.results import TrackState
from ovsam_ros.ros.factory import MessageError, RosbagsFactory
from ovsam_ros.ros.interfaces import interface_root, project_types, split_service, typestore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def factory():
    return RosbagsFactory()


def test_every_file_is_registered():
    store = typestore()
    for name in ("msg/Instance.msg", "srv/Segment.srv"):  # a checkout or an installed share/ovsam_ros
        assert (interface_root() / name).read_text() == (ROOT / name).read_text()
    for path in (ROOT / "msg").glob("*.msg"):
        assert f"ovsam_ros/msg/{path.stem}" in store.types
    for path in (ROOT / "srv").glob("*.srv"):
        for part in ("Request", "Response"):
            assert f"ovsam_ros/srv/{path.stem}_{part}" in store.types
    assert {"Instance", "InstanceArray", "PointPrompt"} <= {p.stem for p in (ROOT / "msg").glob("*.msg")}
    assert {"Segment", "SetVocabulary"} <= {p.stem for p in (ROOT / "srv").glob("*.srv")}


@pytest.mark.parametrize("store", [Stores.ROS2_HUMBLE, Stores.ROS2_JAZZY, Stores.ROS2_KILTED])
def test_types_resolve_against_each_distro(store):
    ts = typestore(store)
    assert ts.generate_msgdef("ovsam_ros/srv/Segment_Request")[0].startswith("sensor_msgs/Image image")


def test_prompt_and_track_constants_match_their_enums():
    consts, _ = project_types()["ovsam_ros/msg/Instance"]
    assert {name: value for name, _, value in consts} == {
        **{f"PROMPT_{k.name}": int(k) for k in PromptKind}, **{f"TRACK_{s.name}": int(s) for s in TrackState}}


def test_service_split():
    request, response = split_service("string a\n---\nbool ok\n")
    assert get_types_from_msg(request, "x/msg/R")["x/msg/R"][1][0][0] == "a"
    assert get_types_from_msg(response, "x/msg/S")["x/msg/S"][1][0][0] == "ok"
    with pytest.raises(ValueError, match="exactly one"):
        split_service("string a\n")


def _roundtrip(factory, msg):
    data = factory.serialize(msg)
    return factory.deserialize(data, msg.__msgtype__), data


def _same(a, b):
    """Field-wise equality of two rosbags messages (numpy arrays compared by value)."""
    if hasattr(a, "__msgtype__"):
        return a.__msgtype__ == b.__msgtype__ and all(
            _same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__ if f != "__msgtype__")
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_instance_array_and_point_prompt_cdr_roundtrip(factory):
    stamp = factory.make("builtin_interfaces/msg/Time", sec=1700000000, nanosec=123456789)
    header = factory.make("std_msgs/msg/Header", frame_id="camera_optical", stamp=stamp)
    crop = np.array([[0, 255, 255], [255, 255, 0]], dtype=np.uint8)
    mask = factory.make("sensor_msgs/msg/Image", header=header, height=2, width=3, encoding="mono8", step=3,
                        data=crop.reshape(-1))
    roi = factory.make("sensor_msgs/msg/RegionOfInterest", x_offset=10, y_offset=20, height=2, width=3)
    inst = factory.make("ovsam_ros/msg/Instance", id="7", prompt_type=PromptKind.BOX, prompt_id="det_3",
                        label="mug", class_index=42, score=0.75, top_labels=["mug", "cup"],
                        top_scores=[0.75, 0.125], mask_score=0.9375, roi=roi, mask=mask)
    array = factory.make("ovsam_ros/msg/InstanceArray", header=header, image_height=480, image_width=640,
                         vocabulary="lvis:abc", instances=[inst], errors=["click outside"])
    back, data = _roundtrip(factory, array)
    assert _same(back, array) and len(data) > 100
    assert back.instances[0].top_scores.dtype == np.float32
    assert np.array_equal(back.instances[0].mask.data.reshape(2, 3), crop)

    points = [factory.make("geometry_msgs/msg/Point", x=x, y=y) for x, y in ((5.5, 6.0), (100.0, 7.25))]
    prompt = factory.make("ovsam_ros/msg/PointPrompt", header=header, id="click", points=points,
                          labels=[1, 0])
    back, _ = _roundtrip(factory, prompt)
    assert _same(back, prompt) and back.labels.dtype == np.int8 and back.points[1].y == 7.25


def test_services_roundtrip(factory):
    req = factory.make("ovsam_ros/srv/SetVocabulary_Request", names=["mug, coffee cup", "screwdriver"])
    res = factory.make("ovsam_ros/srv/SetVocabulary_Response", success=True, size=2, vocabulary_id="custom:1")
    seg = factory.make("ovsam_ros/srv/Segment_Request", text="mug", everything=True, box_ids=["a"],
                       boxes=[factory.make("vision_msgs/msg/BoundingBox2D", size_x=3.0, size_y=4.0)])
    for msg in (req, res, seg):
        back, _ = _roundtrip(factory, msg)
        assert _same(back, msg)
    assert seg.image.height == 0  # "no image": use the newest frame


def test_factory_rejects_unknown_types_and_fields(factory):
    with pytest.raises(MessageError, match="unknown message type"):
        factory.make("sensor_msgs/msg/Nope")
    with pytest.raises(MessageError, match="no field"):
        factory.make("std_msgs/msg/Header", frame="x")
    with pytest.raises(MessageError, match="9 elements"):
        factory.make("sensor_msgs/msg/CameraInfo", k=[1.0, 2.0])
