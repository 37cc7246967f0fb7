"""sensor_msgs Image / CompressedImage <-> numpy, with the checks cv_bridge leaves to a crash.

Written here as well as taken from cv_bridge: the bag tool and the tests work without ROS (and
cv_bridge does not load beside numpy 2), and every malformed image (unknown encoding, wrong size,
short buffer, padding, big-endian data) becomes a :class:`ConversionError` with the reason, never a
reshape error deep inside numpy. Where cv_bridge imports, the node decodes with it
(:func:`cv_bridge_decoder`) after these checks; both give the same arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import simplejpeg

from ovsam_ros.ros.factory import MessageFactory


class ConversionError(ValueError):
    """A message that cannot be turned into an array (or back); the message says why."""


# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def _layout(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}") from None


def _checked_buffer(msg: Any) -> tuple[np.ndarray, np.dtype, int, int]:
    """The message's bytes, dtype, channels and row length, after every size check."""
    dtype, channels = _layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ConversionError(f"empty image ({width}x{height}, encoding {msg.encoding})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError(f"image step {step} is smaller than width x pixel size = {row_bytes} "
                              f"({width} px of {msg.encoding})")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * height:
        raise ConversionError(f"image data has {buf.size} bytes; step x height = {step} x {height} = "
                              f"{step * height}")
    return buf, dtype, channels, row_bytes


def image_to_numpy(msg: Any) -> np.ndarray:
    """A native-endian copy, ``[H, W]`` for one channel and ``[H, W, C]`` otherwise."""
    buf, dtype, channels, row_bytes = _checked_buffer(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    rows = buf.reshape(height, step)[:, :row_bytes].copy()  # never alias the message buffer
    pixels = rows.view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape).astype(dtype, copy=False)


def to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from any colour or mono8 encoding: what the model takes."""
    if encoding not in COLOR_ENCODINGS:
        raise ConversionError(f"a {encoding} image is not a colour image; the model needs one of "
                              f"{', '.join(COLOR_ENCODINGS)}")
    if encoding == "mono8":
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    rgb = pixels[:, :, :3] if encoding.startswith("rgb") else pixels[:, :, 2::-1]
    return np.ascontiguousarray(rgb)


def numpy_to_image(factory: MessageFactory, pixels: np.ndarray, encoding: str, header: Any = None) -> Any:
    """A little-endian, unpadded sensor_msgs/Image; the array must match the encoding exactly."""
    dtype, channels = _layout(encoding)
    pixels = np.asarray(pixels)
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ConversionError(f"{encoding} needs an array of shape "
                              f"{'[H, W]' if channels == 1 else f'[H, W, {channels}]'}, got {pixels.shape}")
    if pixels.dtype != dtype:
        raise ConversionError(f"{encoding} needs dtype {dtype}, got {pixels.dtype}")
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels, dtype=dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
    fields = {} if header is None else {"header": header}
    return factory.make("sensor_msgs/msg/Image", height=height, width=width, encoding=encoding,
                        is_bigendian=0, step=width * channels * dtype.itemsize, data=data, **fields)


_JPEG_START = b"\xff\xd8\xff"


def check_encoded(data: bytes | np.ndarray, source: str) -> np.ndarray:
    """The bytes of a JPEG or PNG as uint8, refused when empty or damaged; ``source`` names it in the
    error (a file, a topic).

    OpenCV decodes a truncated or corrupt JPEG with only a printed libjpeg warning ("Premature end
    of JPEG file") and returns the rest grey, so JPEGs are first decoded by libjpeg-turbo in strict
    mode (simplejpeg; at 1/8 scale, which still reads every entropy-coded byte). A damaged PNG fails
    its zlib stream or chunk CRCs, which OpenCV itself refuses."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.size == 0:
        raise ConversionError(f"{source}: empty (0 bytes)")
    if buf[:3].tobytes() == _JPEG_START:
        try:
            simplejpeg.decode_jpeg(buf, colorspace="GRAY", min_factor=8, strict=True)
        except ValueError as exc:
            raise ConversionError(f"{source}: corrupt or truncated JPEG ({buf.size} bytes): {exc}") from None
    return buf


def strict_imdecode(data: bytes | np.ndarray, flags: int, source: str) -> np.ndarray:
    """``cv2.imdecode`` after :func:`check_encoded`: never a silently half-decoded image."""
    buf = check_encoded(data, source)
    pixels = cv2.imdecode(buf, flags)
    if pixels is None:
        raise ConversionError(f"{source}: cannot decode {buf.size} bytes (not an image, or damaged)")
    return pixels


def compressed_to_numpy(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage (jpeg/png, and 16-bit png ``compressedDepth``) to (pixels, encoding).

    Colour comes back as bgr8/bgra8, as OpenCV decodes it; :func:`to_rgb` takes it from there.
    """
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        if not fmt.startswith("16UC1"):
            raise ConversionError(f"compressedDepth is supported for 16UC1 only, got format {fmt!r}")
        buf = buf[12:]  # image_transport's compressedDepth header (format + two quantisation floats)
    pixels = strict_imdecode(buf, cv2.IMREAD_UNCHANGED, f"compressed image (format {fmt!r})")
    if pixels.ndim == 2:
        return pixels, "mono8" if pixels.dtype == np.uint8 else "16UC1"
    if pixels.dtype != np.uint8:
        raise ConversionError(f"compressed colour image with {pixels.dtype} samples is not supported")
    return pixels, "bgra8" if pixels.shape[2] == 4 else "bgr8"


def numpy_to_compressed(factory: MessageFactory, pixels: np.ndarray, encoding: str, header: Any = None,
                        fmt: str = "jpeg", quality: int = 90) -> Any:
    """A CompressedImage as image_transport's compressed publisher writes it (``format`` included)."""
    if fmt not in ("jpeg", "png"):
        raise ConversionError(f"compressed format must be jpeg or png, got {fmt!r}")
    if encoding in ("rgb8", "rgba8"):
        code = cv2.COLOR_RGB2BGR if encoding == "rgb8" else cv2.COLOR_RGBA2BGRA
        pixels, coded = cv2.cvtColor(pixels, code), "bgr8" if encoding == "rgb8" else "bgra8"
    elif encoding in ("bgr8", "bgra8", "mono8") or (encoding in ("mono16", "16UC1") and fmt == "png"):
        coded = encoding
    else:
        raise ConversionError(f"cannot compress a {encoding} image as {fmt}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, data = cv2.imencode(f".{fmt}", pixels, params)
    if not ok:
        raise ConversionError(f"OpenCV could not encode a {pixels.shape} {encoding} image as {fmt}")
    fields = {} if header is None else {"header": header}
    return factory.make("sensor_msgs/msg/CompressedImage", format=f"{encoding}; {fmt} compressed {coded}",
                        data=data.reshape(-1), **fields)


def image_to_rgb(msg: Any) -> np.ndarray:
    """RGB pixels for the model from an Image or a CompressedImage message."""
    if hasattr(msg, "format"):
        pixels, encoding = compressed_to_numpy(msg)
    else:
        pixels, encoding = image_to_numpy(msg), msg.encoding
    return to_rgb(pixels, encoding)


def cv_bridge_decoder() -> Callable[[Any], np.ndarray] | None:
    """:func:`image_to_rgb` done by ROS's cv_bridge, behind the same checks and errors; None where
    cv_bridge does not import (no ROS, or numpy 2: its C++ module is built against numpy 1)."""
    try:
        from cv_bridge import CvBridge, CvBridgeError
    except (ImportError, AttributeError):
        return None
    bridge = CvBridge()

    def decode(msg: Any) -> np.ndarray:
        compressed = hasattr(msg, "format")
        if compressed:
            check_encoded(msg.data, f"compressed image (format {str(msg.format)!r})")
        else:
            _checked_buffer(msg)
            if msg.encoding not in COLOR_ENCODINGS:
                raise ConversionError(f"a {msg.encoding} image is not a colour image; the model needs one "
                                      f"of {', '.join(COLOR_ENCODINGS)}")
        try:
            rgb = (bridge.compressed_imgmsg_to_cv2(msg, "rgb8") if compressed
                   else bridge.imgmsg_to_cv2(msg, "rgb8"))
        except (CvBridgeError, cv2.error, TypeError, ValueError) as exc:
            what = f"compressed image ({len(msg.data)} bytes, format {str(msg.format)!r})" if compressed \
                else f"{msg.encoding} image"
            raise ConversionError(f"cannot decode {what}: {exc}") from None
        if rgb is None or rgb.ndim != 3:
            kind = msg.format if compressed else msg.encoding
            raise ConversionError(f"cannot decode the image ({kind!r})")
        return np.ascontiguousarray(rgb)

    return decode


def depth_to_meters(msg: Any) -> np.ndarray:
    """float32 metres from a 16UC1/mono16 (millimetres) or 32FC1 (metres) depth image; NaN = no depth."""
    if msg.encoding not in ("16UC1", "mono16", "32FC1"):
        raise ConversionError(f"depth must be 16UC1 (mm) or 32FC1 (m), got {msg.encoding!r}")
    depth = image_to_numpy(msg)
    if depth.dtype == np.uint16:
        meters = depth.astype(np.float32) * np.float32(0.001)
        meters[depth == 0] = np.nan
        return meters
    depth = depth.copy()
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth

