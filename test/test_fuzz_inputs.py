"""Property-based tests of everything a stream can send: image messages with wrong steps, lengths,
encodings and sizes; prompts with NaN, inverted or duplicate parts; stamps far in the past or the
future. Nothing but the documented error escapes, every rejection says why, and the valid inputs of a
batch still produce results."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovsam_ros.engine import Engine, EngineConfig, EngineError
from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.results import Instance
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import ENCODINGS, ConversionError, image_to_rgb
from ovsam_ros.ros.message_builders import make_header
from ovsam_ros.ros.prompt_conversions import detection_prompts, point_prompt

F = RosbagsFactory()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
coordinates = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.floats(-50, 700)
encodings = st.sampled_from([*ENCODINGS, "yuv422", "", "RGB8", "8UC3", "bayer_rggb8"])


@FUZZ
@given(height=st.integers(0, 40), width=st.integers(0, 40), encoding=encodings,
       step_extra=st.integers(-8, 8), length_extra=st.integers(-9, 9), big_endian=st.booleans(),
       compressed=st.booleans(), raw=st.binary(max_size=64))
def test_any_image_message_decodes_or_says_why(height, width, encoding, step_extra, length_extra, big_endian,
                                               compressed, raw):
    if compressed:
        msg = F.make("sensor_msgs/msg/CompressedImage", format=encoding or "jpeg",
                     data=np.frombuffer(raw, np.uint8))
    else:
        dtype, channels = ENCODINGS.get(encoding, (np.dtype(np.uint8), 3))
        step = max(width * channels * dtype.itemsize + step_extra, 0)
        data = np.zeros(max(step * height + length_extra, 0), np.uint8)
        msg = F.make("sensor_msgs/msg/Image", height=height, width=width, encoding=encoding,
                     is_bigendian=int(big_endian), step=step, data=data)
    try:
        rgb = image_to_rgb(msg)
    except ConversionError as exc:
        assert str(exc)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    if not compressed:
        assert rgb.shape[:2] == (height, width)


@FUZZ
@given(points=st.lists(st.tuples(coordinates, coordinates), max_size=6),
       labels=st.lists(st.integers(-2, 3), max_size=7))
def test_any_point_prompt_is_a_prompt_inside_the_image_or_an_error(points, labels):
    msg = F.make("ovsam_ros/msg/PointPrompt", header=make_header(F, 1.0, "cam"), id="p",
                 points=[F.make("geometry_msgs/msg/Point", x=float(x), y=float(y)) for x, y in points],
                 labels=np.asarray(labels, np.int8))
    try:
        prompt = point_prompt(msg, (480, 640))
    except PromptError as exc:
        assert "point prompt 'p'" in str(exc)
        return
    assert len(prompt.points) == len(points) >= 1 and np.isfinite(prompt.points).all()
    assert ((prompt.points >= 0) & (prompt.points <= [640, 480])).all()
    assert set(prompt.labels.tolist()) <= {0, 1}


@FUZZ
@given(boxes=st.lists(st.tuples(coordinates, coordinates, coordinates, coordinates,
                                st.sampled_from(["a", "a", "b", ""])), max_size=8))
def test_detections_keep_every_valid_box_and_say_why_for_the_others(boxes):
    """Inverted, empty, NaN or off-image boxes and duplicate ids: one bad box never drops the rest."""
    def detection(cx: float, cy: float, w: float, h: float, id: str) -> object:
        centre = F.make("vision_msgs/msg/Pose2D", position=F.make("vision_msgs/msg/Point2D", x=cx, y=cy))
        bbox = F.make("vision_msgs/msg/BoundingBox2D", center=centre, size_x=w, size_y=h)
        return F.make("vision_msgs/msg/Detection2D", id=id, bbox=bbox)

    msg = F.make("vision_msgs/msg/Detection2DArray", header=make_header(F, 1.0, "cam"),
                 detections=[detection(*box) for box in boxes])
    prompts, errors = detection_prompts(msg, image_size=(480, 640))
    assert len(prompts) + len(errors) == len(boxes) and all(errors)
    for prompt in prompts:
        x0, y0, x1, y1 = prompt.box
        assert np.isfinite(prompt.box).all() and 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


class FirstPixel:
    """Stand-in for the network (engine time logic only): a frame 'encodes' to its first pixel."""

    def encode(self, image: np.ndarray) -> ImageFeatures:
        return ImageFeatures(embedding=torch.full((1,), int(image.flat[0])), original_size=image.shape[:2])

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]:
        h, w = features.original_size
        return [Instance(mask=np.ones((h, w), bool), bbox=(0.0, 0.0, float(w), float(h)), mask_score=1.0,
                         prompt_kind=p.kind, prompt_id=p.id) for p in prompts]


stamps = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-9, 1e12, -1.0]),
                   st.floats(1.7e9, 1.7e9 + 10))


@FUZZ
@given(frames=st.lists(stamps, max_size=5), prompts=st.lists(stamps, max_size=6))
def test_engine_takes_any_stamps_and_reports_every_rejection(frames, prompts):
    answered: list[str] = []
    rejected: list[str] = []
    engine = Engine(FirstPixel(), EngineConfig(encode_mode="on_demand", max_prompt_age_s=5.0),
                    on_result=lambda r: answered.extend(i.prompt_id for i in r.instances),
                    on_error=lambda message, prompt: rejected.append(message), replay=True)
    pushed = []
    for k, stamp in enumerate(frames):
        try:
            engine.push_frame(np.full((4, 4, 3), k, np.uint8), stamp)
        except EngineError as exc:
            assert "stamp" in str(exc)
        engine.run_until_idle()
    for k, stamp in enumerate(prompts):
        try:
            engine.push_prompt(Prompt.point([(1, 1)], id=f"p{k}", stamp=stamp))
            pushed.append(f"p{k}")
        except EngineError as exc:
            assert "stamp" in str(exc) and not (math.isfinite(stamp) and stamp >= 0)
    engine.finish()
    # every accepted prompt is answered once or rejected with a reason (a RejectReason value first)
    assert len(answered) + len(rejected) == len(pushed) and len(set(answered)) == len(answered)
    assert all(m.split(":", 1)[0] in {"no_frame", "too_old", "too_new", "queue_full"} for m in rejected)
