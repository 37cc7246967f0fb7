"""Pixels <-> 3D with real CameraInfo messages (through CDR), distortion, and instance boxes from depth."""

from __future__ import annotations

import numpy as np
import pytest

from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.geometry import CameraModel, GeometryError, instance_box, instance_points, point_to_pixel
from ovsam_ros.ros.image_conversions import depth_to_meters, numpy_to_image

K = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def factory():
    return RosbagsFactory()


def _info(factory, d=(), model="plumb_bob", p=None, frame="cam_optical"):
    msg = factory.make(
        "sensor_msgs/msg/CameraInfo", width=640, height=480, distortion_model=model, d=list(d), k=K,
        p=p if p is not None else [500.0, 0, 320.0, 0, 0, 510.0, 240.0, 0, 0, 0, 1.0, 0],
        header=factory.make("std_msgs/msg/Header", frame_id=frame))
    return factory.deserialize(factory.serialize(msg), msg.__msgtype__)


def test_pinhole_numbers(factory):
    cam = CameraModel.from_msg(_info(factory))
    uv = cam.project(np.array([[0.2, -0.1, 2.0], [0.0, 0.0, 5.0]]))
    assert np.allclose(uv, [[370.0, 214.5], [320.0, 240.0]])
    assert np.allclose(cam.deproject(uv, [2.0, 5.0]), [[0.2, -0.1, 2.0], [0.0, 0.0, 5.0]])
    assert not cam.distorted and cam.frame_id == "cam_optical"


@pytest.mark.parametrize(("model", "d"), [
    ("plumb_bob", [0.2, -0.1, 0.001, 0.002, 0.05]),
    ("rational_polynomial", [0.1, -0.05, 0.001, 0.002, 0.01, 0.05, -0.01, 0.002]),
    ("equidistant", [0.1, 0.01, -0.01, 0.001]),
])
def test_distortion_round_trip(factory, model, d):
    cam = CameraModel.from_msg(_info(factory, d, model))
    points = np.random.default_rng(0).uniform([-0.8, -0.6, 1.0], [0.8, 0.6, 3.0], size=(500, 3))
    uv = cam.project(points)
    pinhole = CameraModel.from_msg(_info(factory)).project(points)
    assert np.abs(uv - pinhole).max() > 5  # the distortion really moves pixels
    assert np.allclose(cam.deproject(uv, points[:, 2]), points, atol=1e-6)


def test_rectified_uses_p_and_no_distortion(factory):
    p = [400.0, 0, 300.0, 0, 0, 400.0, 200.0, 0, 0, 0, 1.0, 0]
    cam = CameraModel.from_msg(_info(factory, [0.2, 0, 0, 0, 0], p=p), rectified=True)
    assert not cam.distorted
    assert np.allclose(cam.project(np.array([0.5, 0.5, 1.0])), [[500.0, 400.0]])


def test_bad_intrinsics(factory):
    msg = factory.make("sensor_msgs/msg/CameraInfo", width=640, height=480)
    with pytest.raises(GeometryError, match="calibrated"):
        CameraModel.from_msg(msg)
    with pytest.raises(GeometryError, match="distortion model 'weird'"):
        CameraModel.from_msg(_info(factory, [0.1], "weird"))


def test_point_to_pixel(factory):
    cam = CameraModel.from_msg(_info(factory))
    header = factory.make("std_msgs/msg/Header", frame_id="cam_optical")
    point = factory.make("geometry_msgs/msg/Point", x=0.2, y=-0.1, z=2.0)
    stamped = factory.make("geometry_msgs/msg/PointStamped", header=header, point=point)
    assert point_to_pixel(cam, stamped) == pytest.approx((370.0, 214.5))
    stamped.header.frame_id = "map"
    with pytest.raises(GeometryError, match="transform it first"):
        point_to_pixel(cam, stamped)
    with pytest.raises(GeometryError, match="behind the camera"):
        point_to_pixel(cam, factory.make("geometry_msgs/msg/Point", x=0.0, y=0.0, z=-1.0))
    with pytest.raises(GeometryError, match="outside the 640x480 image"):
        point_to_pixel(cam, factory.make("geometry_msgs/msg/Point", x=5.0, y=0.0, z=1.0))


def _scene(factory, encoding):
    """A 40x20 px patch of a fronto-parallel plane at 2 m, with holes, on a 4 m background."""
    depth_m = np.full((480, 640), 4.0)
    depth_m[50:70, 100:140] = 2.0
    mask = np.zeros((480, 640), bool)
    mask[50:70, 100:140] = True
    depth_m[55, 110] = 0.0  # no return
    if encoding == "16UC1":
        pixels = np.round(depth_m * 1000).astype(np.uint16)
    else:
        pixels = depth_m.astype(np.float32)
        pixels[56, 111] = np.nan
    msg = numpy_to_image(factory, pixels, encoding)
    return mask, depth_to_meters(factory.deserialize(factory.serialize(msg), msg.__msgtype__))


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_instance_box_from_depth(factory, encoding):
    cam = CameraModel.from_msg(_info(factory))
    mask, depth = _scene(factory, encoding)
    points = instance_points(mask, depth, cam)
    holes = 1 if encoding == "16UC1" else 2
    assert len(points) == 800 - holes and np.allclose(points[:, 2], 2.0)
    box = instance_box(mask, depth, cam, trim=0.0)
    x0, x1 = (100 - 320) * 2 / 500, (139 - 320) * 2 / 500
    y0, y1 = (50 - 240) * 2 / 510, (69 - 240) * 2 / 510
    assert box.num_points == 800 - holes
    assert np.allclose(box.center, [(x0 + x1) / 2, (y0 + y1) / 2, 2.0])
    assert np.allclose(box.size, [x1 - x0, y1 - y0, 0.0])
    assert np.allclose(box.centroid[2], 2.0)


def test_trim_drops_boundary_outliers(factory):
    cam = CameraModel.from_msg(_info(factory))
    mask, depth = _scene(factory, "32FC1")
    mask[50, 100:105] = True
    depth[50, 100:105] = 4.0  # five background pixels bleeding into the mask
    assert instance_box(mask, depth, cam, trim=0.0).size[2] == pytest.approx(2.0)
    assert instance_box(mask, depth, cam, trim=0.02).size[2] == pytest.approx(0.0)


def test_no_depth_or_misaligned(factory):
    cam = CameraModel.from_msg(_info(factory))
    mask = np.zeros((480, 640), bool)
    mask[0:2, 0:2] = True
    assert instance_box(mask, np.full((480, 640), np.nan), cam) is None
    with pytest.raises(GeometryError, match="not aligned"):
        instance_points(mask, np.ones((240, 320)), cam)
    with pytest.raises(GeometryError, match="trim"):
        instance_box(mask, np.ones((480, 640)), cam, trim=0.5)
