"""Image <-> numpy through real rosbags messages and CDR bytes: encodings, padding, endianness, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import (
    ENCODINGS,
    ConversionError,
    compressed_to_numpy,
    depth_to_meters,
    image_to_numpy,
    image_to_rgb,
    numpy_to_compressed,
    numpy_to_image,
    strict_imdecode,
    to_rgb,
)

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def factory():
    return RosbagsFactory()


def _wire(factory, msg):
    """What a subscriber sees: the message after CDR serialisation."""
    return factory.deserialize(factory.serialize(msg), msg.__msgtype__)


def _sample(encoding, height=5, width=7):
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_roundtrip_every_encoding(factory, encoding):
    pixels = _sample(encoding)
    msg = numpy_to_image(factory, pixels, encoding)
    assert msg.step == 7 * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    back = image_to_numpy(_wire(factory, msg))
    assert back.dtype == pixels.dtype and np.array_equal(back, pixels)


def _raw(factory, data: bytes, encoding, height, width, step, bigendian=0):
    return factory.make("sensor_msgs/msg/Image", height=height, width=width, encoding=encoding, step=step,
                        is_bigendian=bigendian, data=np.frombuffer(data, dtype=np.uint8))


def test_step_padding_is_skipped(factory):
    rgb = _sample("rgb8", 4, 5)
    padded = np.zeros((4, 5 * 3 + 9), dtype=np.uint8)
    padded[:, :15] = rgb.reshape(4, 15)
    padded[:, 15:] = 77  # garbage in the padding must not leak into the pixels
    msg = _wire(factory, _raw(factory, padded.tobytes(), "rgb8", 4, 5, 24))
    assert np.array_equal(image_to_numpy(msg), rgb)


def test_big_endian_16_bit_and_float(factory):
    depth = np.array([[1, 256, 65535], [1000, 0, 4242]], dtype=np.uint16)
    msg = _wire(factory, _raw(factory, depth.astype(">u2").tobytes(), "16UC1", 2, 3, 6, bigendian=1))
    out = image_to_numpy(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative and np.array_equal(out, depth)
    metres = np.array([[0.5, 1.25]], dtype=np.float32)
    msg = _wire(factory, _raw(factory, metres.astype(">f4").tobytes(), "32FC1", 1, 2, 8, bigendian=1))
    assert np.array_equal(image_to_numpy(msg), metres)


def test_result_does_not_alias_the_message(factory):
    msg = numpy_to_image(factory, np.zeros((2, 2), dtype=np.uint8), "mono8")
    out = image_to_numpy(msg)
    out[0, 0] = 9
    assert msg.data[0] == 0


def test_rgb_from_every_colour_encoding(factory):
    rgb = _sample("rgb8")
    variants = {
        "rgb8": rgb, "bgr8": rgb[:, :, ::-1].copy(),
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 9, np.uint8)]),
    }
    for encoding, pixels in variants.items():
        assert np.array_equal(image_to_rgb(_wire(factory, numpy_to_image(factory, pixels, encoding))), rgb)
    gray = _sample("mono8")
    out = image_to_rgb(numpy_to_image(factory, gray, "mono8"))
    assert out.shape == (*gray.shape, 3) and np.array_equal(out[:, :, 1], gray)
    with pytest.raises(ConversionError, match="not a colour image"):
        to_rgb(_sample("16UC1"), "16UC1")


@pytest.mark.parametrize(("fields", "words"), [
    ({"encoding": "yuv422", "height": 2, "width": 2, "step": 4, "data": np.zeros(8, np.uint8)},
     "unsupported image encoding 'yuv422'"),
    ({"encoding": "rgb8", "height": 0, "width": 0, "step": 0, "data": np.zeros(0, np.uint8)}, "empty image"),
    ({"encoding": "rgb8", "height": 2, "width": 2, "step": 4, "data": np.zeros(8, np.uint8)},
     "step 4 is smaller"),
    ({"encoding": "rgb8", "height": 2, "width": 2, "step": 6, "data": np.zeros(11, np.uint8)},
     "11 bytes; step x height = 6 x 2 = 12"),
    ({"encoding": "mono16", "height": 2, "width": 2, "step": 4, "data": np.zeros(16, np.uint8)},
     "16 bytes"),
])
def test_malformed_images_raise_conversion_error(factory, fields, words):
    msg = _wire(factory, factory.make("sensor_msgs/msg/Image", **fields))
    with pytest.raises(ConversionError, match=words.replace("(", r"\(")):
        image_to_numpy(msg)
    assert issubclass(ConversionError, ValueError)


def test_numpy_to_image_checks_shape_and_dtype(factory):
    with pytest.raises(ConversionError, match=r"\[H, W, 3\]"):
        numpy_to_image(factory, np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ConversionError, match="dtype uint16"):
        numpy_to_image(factory, np.zeros((2, 2), np.uint8), "16UC1")


def test_compressed_png_is_exact_and_jpeg_is_close(factory, bear):
    rgb = cv2.cvtColor(cv2.imread(str(bear.images()[0])), cv2.COLOR_BGR2RGB)[:64, :80].copy()
    png = _wire(factory, numpy_to_compressed(factory, rgb, "rgb8", fmt="png"))
    assert png.format == "rgb8; png compressed bgr8"
    assert np.array_equal(image_to_rgb(png), rgb)
    jpeg = _wire(factory, numpy_to_compressed(factory, rgb, "rgb8", fmt="jpeg", quality=95))
    err = np.abs(image_to_rgb(jpeg).astype(int) - rgb).mean()
    assert err < 4, err
    gray = rgb[:, :, 0].copy()
    pixels, encoding = compressed_to_numpy(numpy_to_compressed(factory, gray, "mono8", fmt="png"))
    assert encoding == "mono8" and np.array_equal(pixels, gray)


def test_compressed_depth_16_bit_png(factory):
    depth = RNG.integers(0, 10000, size=(6, 9), dtype=np.uint16)
    ok, png = cv2.imencode(".png", depth)
    header = np.zeros(12, np.uint8)  # image_transport's compressedDepth config header
    msg = factory.make("sensor_msgs/msg/CompressedImage", format="16UC1; compressedDepth png",
                       data=np.concatenate([header, png.reshape(-1)]))
    pixels, encoding = compressed_to_numpy(_wire(factory, msg))
    assert ok and encoding == "16UC1" and np.array_equal(pixels, depth)


def test_broken_compressed_images(factory):
    for data, words in ((np.zeros(0, np.uint8), "compressed image.*empty"),
                        (np.arange(50, dtype=np.uint8), "cannot decode")):
        msg = factory.make("sensor_msgs/msg/CompressedImage", format="jpeg", data=data)
        with pytest.raises(ConversionError, match=words):
            image_to_rgb(msg)
    msg = factory.make("sensor_msgs/msg/CompressedImage", format="32FC1; compressedDepth",
                       data=np.ones(20, np.uint8))
    with pytest.raises(ConversionError, match="16UC1 only"):
        compressed_to_numpy(msg)
    with pytest.raises(ConversionError, match="jpeg or png"):
        numpy_to_compressed(factory, np.zeros((2, 2), np.uint8), "mono8", fmt="webp")


def test_depth_to_meters(factory):
    mm = np.array([[0, 1000, 1500]], dtype=np.uint16)
    out = depth_to_meters(_wire(factory, numpy_to_image(factory, mm, "16UC1")))
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(1.0) and out[0, 2] == pytest.approx(1.5)
    m = np.array([[np.nan, -1.0, 0.0, 2.5, np.inf]], dtype=np.float32)
    out = depth_to_meters(numpy_to_image(factory, m, "32FC1"))
    assert np.isnan(out[0, [0, 1, 2, 4]]).all() and out[0, 3] == 2.5
    with pytest.raises(ConversionError, match="16UC1"):
        depth_to_meters(numpy_to_image(factory, np.zeros((1, 1), np.uint8), "mono8"))


def _damaged(data: bytes) -> dict[str, bytes]:
    """Truncated, zero-length and bit-flipped (in the header, where every decoder must notice) copies."""
    header = bytearray(data)
    sof = data.find(b"\xff\xc0") if data[:2] == b"\xff\xd8" else 16  # JPEG frame header / PNG IHDR
    header[sof + 5] ^= 0xFF  # the image height
    return {"truncated": data[:5000], "half": data[:len(data) // 2], "empty": b"", "flipped": bytes(header)}


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_damaged_real_photos_are_refused_with_the_source_named(factory, bear, fmt):
    """Some OpenCV builds decode the first 5,000 bytes of a real 1008x756 JPEG as a mostly grey image
    with only a printed warning; here every damaged copy is an error naming its source, and the
    intact photo decodes exactly as OpenCV decodes it."""
    path = bear.images()[0]
    data = path.read_bytes() if fmt == "jpeg" else cv2.imencode(".png", cv2.imread(str(path)))[1].tobytes()
    for name, bad in _damaged(data).items():
        with pytest.raises(ConversionError, match=r"photo\.jpg") as info:
            strict_imdecode(bad, cv2.IMREAD_COLOR, "photo.jpg")
        assert name != "truncated" or fmt != "jpeg" or "Premature end" in str(info.value)
        msg = factory.make("sensor_msgs/msg/CompressedImage", format=fmt,
                           data=np.frombuffer(bad, np.uint8))
        with pytest.raises(ConversionError, match="compressed image"):
            image_to_rgb(msg)
    whole = strict_imdecode(data, cv2.IMREAD_COLOR, "photo")
    assert np.array_equal(whole, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
