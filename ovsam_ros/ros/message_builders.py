"""Results -> messages (and InstanceArray -> results) for every output topic, through a MessageFactory.

Every output carries the header of the frame the result was computed on: pass the source image's
header where you have it (exact to the nanosecond); without one it is rebuilt from the result's
stamp and frame id (a float64 stamp is exact to ~0.25 microseconds in this epoch).

Boxes use the pixel-corner convention: pixel i spans [i, i + 1), so a mask box ``[x0, y0, x1, y1]``
(x1, y1 exclusive) has centre ``((x0 + x1) / 2, (y0 + y1) / 2)`` and size ``(x1 - x0, y1 - y0)``.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ovsam_ros.prompts import PromptKind
from ovsam_ros.results import FrameResult, Instance, TrackState
from ovsam_ros.ros.factory import MessageFactory
from ovsam_ros.ros.geometry import Box3D, CameraModel, GeometryError
from ovsam_ros.ros.image_conversions import numpy_to_image
from ovsam_ros.ros.mask_conversions import (
    class_id_image,
    instance_id_image,
    label_map,
    mask_to_roi_image,
    roi_image_to_mask,
)

MARKER_CUBE, MARKER_TEXT, MARKER_DELETEALL = 1, 9, 3  # visualization_msgs/Marker constants


def make_stamp(factory: MessageFactory, seconds: float) -> Any:
    sec = math.floor(seconds)
    nanosec = round((seconds - sec) * 1e9)
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return factory.make("builtin_interfaces/msg/Time", sec=int(sec), nanosec=int(nanosec))


def stamp_seconds(stamp: Any) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def make_header(factory: MessageFactory, seconds: float, frame_id: str) -> Any:
    return factory.make("std_msgs/msg/Header", stamp=make_stamp(factory, seconds), frame_id=frame_id)


def _header_for(factory: MessageFactory, result: FrameResult, header: Any) -> Any:
    return make_header(factory, result.stamp, result.frame_id) if header is None else header


def _bbox2d(factory: MessageFactory, box: Sequence[float]) -> Any:
    x0, y0, x1, y1 = (float(v) for v in box)
    position = factory.make("vision_msgs/msg/Point2D", x=(x0 + x1) / 2, y=(y0 + y1) / 2)
    center = factory.make("vision_msgs/msg/Pose2D", position=position, theta=0.0)
    return factory.make("vision_msgs/msg/BoundingBox2D", center=center, size_x=x1 - x0, size_y=y1 - y0)


def bbox2d_corners(bbox: Any) -> np.ndarray:
    """``[x0, y0, x1, y1]`` of a vision_msgs/BoundingBox2D (rotation ignored)."""
    cx, cy = float(bbox.center.position.x), float(bbox.center.position.y)
    hw, hh = float(bbox.size_x) / 2, float(bbox.size_y) / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def instance_msg(factory: MessageFactory, inst: Instance, header: Any = None) -> Any:
    """ovsam_ros/Instance with the mask cropped to its box (``header`` goes on the mask image)."""
    mask, roi = mask_to_roi_image(factory, inst.mask, header)
    return factory.make(
        "ovsam_ros/msg/Instance", id=inst.id, prompt_type=int(inst.prompt_kind), prompt_id=inst.prompt_id,
        label=inst.label, class_index=int(inst.class_index), score=float(inst.score),
        top_labels=[name for name, _ in inst.top_k],
        top_scores=np.array([p for _, p in inst.top_k], dtype=np.float32),
        mask_score=float(inst.mask_score), stability_score=float(inst.stability_score),
        bbox=_bbox2d(factory, inst.bbox), roi=roi, mask=mask, track_id=int(inst.track_id),
        track_age=int(inst.track_age), track_state=int(inst.track_state))


def instance_array_msg(factory: MessageFactory, result: FrameResult, header: Any = None) -> Any:
    header = _header_for(factory, result, header)
    height, width = result.image_size
    return factory.make(
        "ovsam_ros/msg/InstanceArray", header=header, image_height=int(height), image_width=int(width),
        vocabulary=result.vocabulary, instances=[instance_msg(factory, i, header) for i in result.instances],
        errors=list(result.errors))


def frame_result_from_msg(msg: Any) -> FrameResult:
    """The inverse of :func:`instance_array_msg`, for tools reading recorded results (COCO export)."""
    size = (int(msg.image_height), int(msg.image_width))
    instances = []
    for m in msg.instances:
        scores = np.asarray(m.top_scores, dtype=np.float32)
        instances.append(Instance(
            mask=roi_image_to_mask(m.mask, m.roi, size),
            bbox=tuple(float(v) for v in bbox2d_corners(m.bbox)),  # type: ignore[arg-type]
            mask_score=float(m.mask_score), prompt_kind=PromptKind(int(m.prompt_type)),
            prompt_id=str(m.prompt_id), id=str(m.id), label=str(m.label), class_index=int(m.class_index),
            score=float(m.score),
            top_k=[(str(n), float(p)) for n, p in zip(m.top_labels, scores, strict=True)],
            stability_score=float(m.stability_score), track_id=int(m.track_id), track_age=int(m.track_age),
            track_state=TrackState(int(m.track_state))))
    return FrameResult(stamp=stamp_seconds(msg.header.stamp), frame_id=str(msg.header.frame_id),
                       image_size=size, instances=instances, vocabulary=str(msg.vocabulary),
                       errors=[str(e) for e in msg.errors])


def _hypotheses(factory: MessageFactory, inst: Instance, position: Sequence[float] = (0.0, 0.0, 0.0)) -> list:
    """Top-k (name, probability) as ObjectHypothesisWithPose, best first; none for an unnamed instance."""
    if not inst.label:
        return []
    ranked = inst.top_k or [(inst.label, inst.score)]
    pose = factory.make("geometry_msgs/msg/PoseWithCovariance", pose=_pose(factory, position))
    return [factory.make("vision_msgs/msg/ObjectHypothesisWithPose", pose=pose,
                         hypothesis=factory.make("vision_msgs/msg/ObjectHypothesis", class_id=name,
                                                 score=float(p)))
            for name, p in ranked]


def _pose(factory: MessageFactory, position: Sequence[float]) -> Any:
    x, y, z = (float(v) for v in position)
    return factory.make("geometry_msgs/msg/Pose",
                        position=factory.make("geometry_msgs/msg/Point", x=x, y=y, z=z),
                        orientation=factory.make("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0))


def _vector(factory: MessageFactory, xyz: Sequence[float]) -> Any:
    x, y, z = (float(v) for v in xyz)
    return factory.make("geometry_msgs/msg/Vector3", x=x, y=y, z=z)


def detection2d_array_msg(factory: MessageFactory, result: FrameResult, header: Any = None) -> Any:
    """vision_msgs/Detection2DArray: id = instance id, class_id = name, bbox of the mask."""
    header = _header_for(factory, result, header)
    detections = [factory.make("vision_msgs/msg/Detection2D", header=header, results=_hypotheses(factory, i),
                               bbox=_bbox2d(factory, i.bbox), id=i.id)
                  for i in result.instances]
    return factory.make("vision_msgs/msg/Detection2DArray", header=header, detections=detections)


def _check_boxes(result: FrameResult, boxes: Sequence[Box3D | None]) -> None:
    if len(boxes) != len(result.instances):
        raise ValueError(f"{len(boxes)} 3D boxes for {len(result.instances)} instances")


def detection3d_array_msg(factory: MessageFactory, result: FrameResult, boxes: Sequence[Box3D | None],
                          header: Any = None) -> Any:
    """vision_msgs/Detection3DArray in the optical frame; instances without depth (box None) are left out.

    The bbox is the trimmed point box (:class:`Box3D`); each hypothesis' pose is the median point.
    """
    _check_boxes(result, boxes)
    header = _header_for(factory, result, header)
    detections = []
    for inst, box in zip(result.instances, boxes, strict=True):
        if box is None:
            continue
        bbox = factory.make("vision_msgs/msg/BoundingBox3D", center=_pose(factory, box.center),
                            size=_vector(factory, box.size))
        detections.append(factory.make("vision_msgs/msg/Detection3D", header=header, bbox=bbox, id=inst.id,
                                       results=_hypotheses(factory, inst, box.centroid)))
    return factory.make("vision_msgs/msg/Detection3DArray", header=header, detections=detections)


def instance_color(k: int) -> tuple[float, float, float]:
    """A distinct, stable RGB colour (0..1) for the k-th instance: golden-ratio hue steps."""
    return colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.75, 1.0)


def marker_array_msg(factory: MessageFactory, result: FrameResult, boxes: Sequence[Box3D | None],
                     header: Any = None, text_height_m: float = 0.05, box_alpha: float = 0.3) -> Any:
    """visualization_msgs/MarkerArray: a DELETEALL (stale markers vanish), then per instance with depth a
    translucent box and a text label ("name 0.87", or the instance id when unnamed) above it."""
    _check_boxes(result, boxes)
    header = _header_for(factory, result, header)
    markers = [factory.make("visualization_msgs/msg/Marker", header=header, action=MARKER_DELETEALL)]
    for k, (inst, box) in enumerate(zip(result.instances, boxes, strict=True)):
        if box is None:
            continue
        r, g, b = instance_color(k)
        above = (box.center[0], box.center[1] - box.size[1] / 2 - text_height_m, box.center[2])  # y is down
        text = f"{inst.label} {inst.score:.2f}" if inst.label else inst.id
        for ns, kind, position, scale, alpha, label in (
            ("ovsam_boxes", MARKER_CUBE, box.center, box.size, box_alpha, ""),
            ("ovsam_labels", MARKER_TEXT, above, (0.0, 0.0, text_height_m), 1.0, text),
        ):
            markers.append(factory.make(
                "visualization_msgs/msg/Marker", header=header, ns=ns, id=k, type=kind, action=0,
                pose=_pose(factory, position), text=label,
                scale=_vector(factory, scale),
                color=factory.make("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=alpha)))
    return factory.make("visualization_msgs/msg/MarkerArray", markers=markers)


def instance_image_msg(factory: MessageFactory, result: FrameResult, header: Any = None) -> Any:
    """mono16: 0 background, else the instance's track id, or without tracking k + 1 for the k-th
    instance of the matching InstanceArray."""
    return numpy_to_image(factory, instance_id_image(result), "mono16", _header_for(factory, result, header))


def class_image_msg(factory: MessageFactory, result: FrameResult, header: Any = None) -> Any:
    """mono16 class ids as in :func:`label_info_msg`; 65535 (UNLABELED) where no named instance is."""
    return numpy_to_image(factory, class_id_image(result), "mono16", _header_for(factory, result, header))


def label_info_msg(factory: MessageFactory, names: Sequence[str], threshold: float = 0.0,
                   header: Any = None) -> Any:
    """vision_msgs/LabelInfo for the active vocabulary (class_id = index; 65535 = "unlabeled")."""
    class_map = [factory.make("vision_msgs/msg/VisionClass", class_id=i, class_name=name)
                 for i, name in label_map(names)]
    fields = {} if header is None else {"header": header}
    return factory.make("vision_msgs/msg/LabelInfo", class_map=class_map, threshold=float(threshold),
                        **fields)


_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
_CLOUD_FIELDS = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))


def point_cloud_msg(factory: MessageFactory, depth_m: np.ndarray, rgb: np.ndarray | None, camera: CameraModel,
                    header: Any, stride: int = 2) -> Any:
    """sensor_msgs/PointCloud2 (x, y, z, rgb as RViz reads it) of every ``stride``-th depth pixel with a
    depth, in the camera's optical frame: the surface RViz's "Publish Point" tool clicks on. Without
    an image of the same stamp the points are grey."""
    if stride < 1:
        raise GeometryError(f"cloud stride must be >= 1, got {stride}")
    if (camera.height, camera.width) != depth_m.shape:
        raise GeometryError(f"camera_info is {camera.width}x{camera.height}, the depth image "
                            f"{depth_m.shape[1]}x{depth_m.shape[0]}")
    v, u = np.mgrid[0:depth_m.shape[0]:stride, 0:depth_m.shape[1]:stride]
    z = depth_m[v, u]
    valid = np.isfinite(z) & (z > 0)
    u, v, z = u[valid], v[valid], z[valid]
    points = camera.deproject(np.stack([u, v], axis=1), z)
    if rgb is not None and rgb.shape[:2] == depth_m.shape:
        colour = rgb[v, u].astype(np.uint32)
    else:
        colour = np.full((len(u), 3), 160, dtype=np.uint32)
    cloud = np.empty(len(u), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    cloud["x"], cloud["y"], cloud["z"] = points[:, 0], points[:, 1], points[:, 2]
    cloud["rgb"] = (colour[:, 0] << 16) | (colour[:, 1] << 8) | colour[:, 2]
    fields = [factory.make("sensor_msgs/msg/PointField", name=name, offset=offset, datatype=_FLOAT32, count=1)
              for name, offset in _CLOUD_FIELDS]
    return factory.make("sensor_msgs/msg/PointCloud2", header=header, height=1, width=len(cloud),
                        fields=fields, is_bigendian=False, point_step=16, row_step=16 * len(cloud),
                        data=cloud.view(np.uint8).reshape(-1), is_dense=True)
