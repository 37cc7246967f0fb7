"""Pixels <-> 3D with a sensor_msgs/CameraInfo, and each instance's 3D centre and extent from depth.

Pixel coordinates follow OpenCV and CameraInfo: pixel (u, v) has its centre at integer (u, v), x right,
y down, in the optical frame (z forward). Distortion is handled, not ignored: for a raw image
(``rectified=False``) K and D are used through cv2.projectPoints / cv2.undistortPoints (plumb_bob,
rational_polynomial) or their cv2.fisheye versions (equidistant); for a rectified image (image_rect)
the projection matrix P is used and there is no distortion, as image_geometry does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


class GeometryError(ValueError):
    """Intrinsics, points or depth that cannot give an answer; the message says why."""


_PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
# cv2.undistortPoints stops after 5 iterations by default: millimetres off at 2 m in image corners.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


def _undistort(pixels: np.ndarray, k: np.ndarray, d: np.ndarray) -> np.ndarray:
    if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x names the overload that takes criteria so
        return cv2.undistortPointsIter(pixels, k, d, None, None, _UNDISTORT_CRITERIA)
    return cv2.undistortPoints(pixels, k, d, None, None, criteria=_UNDISTORT_CRITERIA)


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of the image the prompts and masks live in."""

    width: int
    height: int
    k: np.ndarray
    d: np.ndarray
    distortion_model: str = "plumb_bob"
    frame_id: str = ""

    @staticmethod
    def from_msg(msg: Any, rectified: bool = False) -> CameraModel:
        """From a CameraInfo; ``rectified`` when the image topic is rectified (use P, no distortion)."""
        k = np.asarray(msg.p if rectified else msg.k, dtype=np.float64)
        k = k.reshape(3, 4)[:, :3] if rectified else k.reshape(3, 3)
        if not (k[0, 0] > 0 and k[1, 1] > 0):
            raise GeometryError(f"camera_info has no valid focal length ({'P' if rectified else 'K'} = "
                                f"{k.reshape(-1).tolist()}); is the camera calibrated?")
        d = np.zeros(0) if rectified else np.asarray(msg.d, dtype=np.float64)
        model = str(msg.distortion_model)
        if np.any(d) and model not in (*_PINHOLE_MODELS, "equidistant"):
            raise GeometryError(f"unsupported distortion model {model!r}; supported: "
                                f"{', '.join(_PINHOLE_MODELS)}, equidistant")
        return CameraModel(int(msg.width), int(msg.height), k, d, model, str(msg.header.frame_id))

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.d))

    def project(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` points in the optical frame -> ``[N, 2]`` pixels; points must be in front (z > 0)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if not np.all(np.isfinite(points)):
            raise GeometryError("cannot project a point with NaN or infinite coordinates")
        if np.any(points[:, 2] <= 0):
            behind = points[points[:, 2] <= 0][0]
            raise GeometryError(f"cannot project a point behind the camera (z <= 0): {behind.tolist()}")
        if not self.distorted:
            uvw = points @ self.k.T
            return uvw[:, :2] / uvw[:, 2:]
        zero = np.zeros(3)
        if self.distortion_model == "equidistant":
            uv, _ = cv2.fisheye.projectPoints(points[None], zero, zero, self.k, self.d[:4])
        else:
            uv, _ = cv2.projectPoints(points, zero, zero, self.k, self.d)
        return uv.reshape(-1, 2)

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """``[N, 2]`` pixels -> ``[N, 2]`` normalised image coordinates (x/z, y/z) of their rays."""
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if not self.distorted:
            return (pixels - self.k[:2, 2]) / np.diag(self.k)[:2]
        if self.distortion_model == "equidistant":
            xy = cv2.fisheye.undistortPoints(pixels[None], self.k, self.d[:4])
        else:
            xy = _undistort(pixels[:, None], self.k, self.d)
        return xy.reshape(-1, 2)

    def deproject(self, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """``[N, 2]`` pixels with ``[N]`` depths along z (metres) -> ``[N, 3]`` points."""
        xy = self.rays(pixels)
        z = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
        return np.hstack([xy * z, z])

    def contains(self, uv: np.ndarray) -> bool:
        """Whether every pixel lies on the image (pixel centres at integers, so [-0.5, size - 0.5))."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        return bool(np.all((uv >= -0.5) & (uv < np.array([self.width, self.height]) - 0.5)))


def point_to_pixel(camera: CameraModel, point: Any) -> tuple[float, float]:
    """A geometry_msgs Point or PointStamped, already in the camera's optical frame, -> pixel (u, v).

    For RViz's "Publish Point": the node transforms the click into the optical frame with tf2 first;
    a PointStamped still in another frame is refused rather than projected wrongly.
    """
    if hasattr(point, "point"):
        frame = str(point.header.frame_id)
        if frame and camera.frame_id and frame.lstrip("/") != camera.frame_id.lstrip("/"):
            raise GeometryError(f"point is in frame {frame!r}, not the camera frame {camera.frame_id!r}; "
                                f"transform it first")
        point = point.point
    uv = camera.project(np.array([point.x, point.y, point.z]))
    if not camera.contains(uv):
        raise GeometryError(f"point projects to pixel ({uv[0, 0]:.1f}, {uv[0, 1]:.1f}), outside the "
                            f"{camera.width}x{camera.height} image")
    return float(uv[0, 0]), float(uv[0, 1])


@dataclass(frozen=True)
class Box3D:
    """An instance in 3D: ``centroid`` is the median point, ``center``/``size`` the axis-aligned box
    (optical frame, metres) of the points between the ``trim`` and ``1 - trim`` quantiles per axis, so
    a few depth pixels bleeding in from the background at the mask's border don't blow it up."""

    centroid: np.ndarray
    center: np.ndarray
    size: np.ndarray
    num_points: int


def instance_points(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel) -> np.ndarray:
    """``[N, 3]`` points of the mask's pixels that have depth (NaN, zero and negative depths skipped)."""
    if mask.shape != depth_m.shape:
        raise GeometryError(f"depth image {depth_m.shape} is not aligned to the mask {mask.shape}")
    if (camera.height, camera.width) != mask.shape:
        raise GeometryError(f"camera_info is {camera.width}x{camera.height}, the image "
                            f"{mask.shape[1]}x{mask.shape[0]}")
    valid = (mask > 0) & np.isfinite(depth_m) & (depth_m > 0)
    v, u = np.nonzero(valid)
    return camera.deproject(np.stack([u, v], axis=1), depth_m[v, u])


def instance_box(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel, trim: float = 0.02,
                 min_points: int = 10) -> Box3D | None:
    """The instance's :class:`Box3D`; None when fewer than ``min_points`` of its pixels have depth."""
    if not 0.0 <= trim < 0.5:
        raise GeometryError(f"trim must be in [0, 0.5), got {trim}")
    points = instance_points(mask, depth_m, camera)
    if len(points) < max(min_points, 1):
        return None
    lo, hi = np.quantile(points, [trim, 1.0 - trim], axis=0)
    return Box3D(np.median(points, axis=0), (lo + hi) / 2, hi - lo, len(points))
