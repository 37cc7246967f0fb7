"""Offline replay of a rosbag2 file through the streaming engine: the node's behaviour, without ROS.

Messages are read with ``rosbags`` (MCAP or sqlite3) in the bag's order and handed to the SAME
:class:`~ovsam_ros.engine.Engine` the node drives, in replay mode: time is the stream's (image
stamps), so the result does not depend on how fast this machine is, and a frame is encoded only when a
prompt needs it (or, while text / everything prompts stand, at the engine's rate cap in stream time).
Conversions and message building are the node's (``ovsam_ros.ros``): one code path for both.

The output bag holds every input message unchanged (raw bytes, copied) plus ``/ovsam/instances``,
``/ovsam/detections`` and ``/ovsam/overlay``, each with the source image's header and written at the
source image's bag timestamp. A frame that cannot be decoded, a prompt off the image or a click that
cannot be projected is counted, warned about and skipped; the rest is processed.

Recorded detector boxes (``vision_msgs/Detection2DArray``) are answered on the frame their stamp
names, once (the node also re-applies a live detector's newest boxes to later frames, which a
replay with the detections in the bag has no need for).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from tqdm import tqdm

from ovsam_ros.engine import Engine, EngineConfig, RejectReason
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.results import FrameResult
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.geometry import CameraModel, GeometryError, point_to_pixel
from ovsam_ros.ros.image_conversions import ConversionError, image_to_rgb, numpy_to_image
from ovsam_ros.ros.interfaces import typestore
from ovsam_ros.ros.message_builders import detection2d_array_msg, instance_array_msg, stamp_seconds
from ovsam_ros.ros.prompt_conversions import detection_prompts, point_prompt

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POINTS_TYPE = "ovsam_ros/msg/PointPrompt"
BOXES_TYPE = "vision_msgs/msg/Detection2DArray"
TEXT_TYPE = "std_msgs/msg/String"
CLICK_TYPE = "geometry_msgs/msg/PointStamped"

OUTPUTS = {
    "instances": ("/ovsam/instances", "ovsam_ros/msg/InstanceArray"),
    "detections": ("/ovsam/detections", "vision_msgs/msg/Detection2DArray"),
    "overlay": ("/ovsam/overlay", "sensor_msgs/msg/Image"),
}
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
MAX_WARNINGS = 100
"""Warnings kept in the stats file (all are counted and logged)."""


class BagError(ValueError):
    """A bag, topic or option the replay cannot work with; the message says what is wrong."""


@dataclass(frozen=True)
class BagTopics:
    """Input topics; None = found by type where that is unambiguous (images, camera info, point
    prompts, detections), or not read (text and clicked points: their types are too common)."""

    image: str | None = None
    camera_info: str | None = None
    points: str | None = None
    boxes: str | None = None
    text: str | None = None
    clicked_point: str | None = None


_TOPIC_TYPES: dict[str, tuple[tuple[str, ...], bool]] = {
    # role: (accepted types, found by type when not named)
    "image": (IMAGE_TYPES, True),
    "camera_info": ((CAMERA_INFO_TYPE,), True),
    "points": ((POINTS_TYPE,), True),
    "boxes": ((BOXES_TYPE,), True),
    "text": ((TEXT_TYPE,), False),
    "clicked_point": ((CLICK_TYPE,), False),
}


def resolve_topics(available: dict[str, str], topics: BagTopics) -> dict[str, str]:
    """Role -> topic, from ``available`` (topic -> type). A named topic must exist and carry an accepted
    type; an unnamed role takes the only topic of its type (none: the role is off; several: an error
    asking to choose). The tool's own outputs are never taken as inputs."""
    inputs = {t: ty for t, ty in available.items() if t not in {name for name, _ in OUTPUTS.values()}}
    roles: dict[str, str] = {}
    for role, (types, by_type) in _TOPIC_TYPES.items():
        flag = f"--{role.replace('_', '-')}-topic"
        named = getattr(topics, role)
        if named is not None:
            if named not in available:
                listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(available.items())) or "none"
                raise BagError(f"topic {named!r} ({flag}) is not in the bag; its topics: {listing}")
            if available[named] not in types:
                raise BagError(f"topic {named!r} carries {available[named]}, but {flag} needs "
                               f"{' or '.join(types)}")
            roles[role] = named
            continue
        if not by_type:
            continue
        found = sorted(t for t, ty in inputs.items() if ty in types)
        if len(found) > 1:
            raise BagError(f"the bag has several {' / '.join(types)} topics ({', '.join(found)}): choose one "
                           f"with {flag}")
        if found:
            roles[role] = found[0]
    if "image" not in roles:
        raise BagError(f"the bag has no {' or '.join(IMAGE_TYPES)} topic to segment")
    return roles


def bag_storage(path: Path) -> str:
    """"mcap" or "sqlite3": how the rosbag2 at ``path`` (a bag folder or a single file) is stored."""
    if path.is_dir():
        try:
            meta = yaml.safe_load((path / "metadata.yaml").read_text())
            return str(meta["rosbag2_bagfile_information"]["storage_identifier"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise BagError(f"{path} is not a rosbag2 folder (metadata.yaml unreadable: {exc})") from exc
    return {".mcap": "mcap", ".db3": "sqlite3"}.get(path.suffix, "")


@dataclass
class ReplayOptions:
    """What to answer besides the bag's own prompts, and how the engine runs."""

    topics: BagTopics = field(default_factory=BagTopics)
    text: str = ""
    everything: bool = False
    storage: str | None = None
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(encode_mode="auto",
                                                                      max_encode_rate_hz=0.0))
    vocabulary_label: str = ""
    progress: bool = True


class _Replay:
    """State of one replay: the engine, the writer, and what each input frame looked like."""

    def __init__(self, processor: Any, options: ReplayOptions, writer: Writer, connections: dict) -> None:
        self.options = options
        self.factory = RosbagsFactory(typestore())
        self.writer = writer
        self.out = connections
        config = dataclasses.replace(options.engine, keep_images=True)
        self.engine = Engine(processor, config, on_result=self._on_result, on_error=self._on_error,
                             replay=True)
        self.processor = processor
        self.frames: OrderedDict[float, tuple[Any, int]] = OrderedDict()
        self.keep = 2 * (config.cache_size + config.raw_buffer_size) + 8
        self.image_size: tuple[int, int] | None = None
        self.camera: CameraModel | None = None
        self.counts: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.clicks = 0

    def warn(self, message: str) -> None:
        self.counts["warnings"] += 1
        log.warning("%s", message)
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)

    def _on_error(self, message: str, prompt: Prompt | None) -> None:
        self.counts["prompts_rejected"] += 1
        if not message.startswith(RejectReason.FAILED.value):  # failures come with their FrameResult
            self.warn(message)

    # ---------------------------------------------------------------- inputs

    def image(self, msg: Any, topic: str, bag_ns: int) -> None:
        self.counts["frames"] += 1
        try:
            rgb = image_to_rgb(msg)
        except ConversionError as exc:
            self.counts["bad_frames"] += 1
            self.warn(f"skipping frame on {topic} at bag time {bag_ns} ns: {exc}")
            return
        stamp = stamp_seconds(msg.header.stamp)
        if stamp <= 0:
            stamp = bag_ns * 1e-9
            self.warn(f"frame on {topic} has a zero stamp: keyed by its bag time (outputs keep its header)")
        self.frames[stamp] = (msg.header, bag_ns)
        while len(self.frames) > self.keep:
            self.frames.popitem(last=False)
        self.image_size = rgb.shape[:2]
        self.engine.push_frame(rgb, stamp, str(msg.header.frame_id))

    def camera_info(self, msg: Any) -> None:
        try:
            self.camera = CameraModel.from_msg(msg)
        except GeometryError as exc:
            self.warn(f"ignoring camera_info: {exc}")

    def points(self, msg: Any) -> None:
        try:
            prompt = point_prompt(msg, self.image_size)
        except PromptError as exc:
            self.counts["prompts_skipped"] += 1
            self.warn(f"skipping prompt: {exc}")
            return
        self._push(prompt, "point_prompts")

    def boxes(self, msg: Any) -> None:
        prompts, errors = detection_prompts(msg, standing=False, image_size=self.image_size)
        for error in errors:
            self.counts["prompts_skipped"] += 1
            self.warn(f"skipping detection: {error}")
        for prompt in prompts:
            self._push(prompt, "box_prompts")

    def clicked_point(self, msg: Any) -> None:
        if self.camera is None:
            self.counts["prompts_skipped"] += 1
            self.warn("clicked point skipped: no camera_info before it")
            return
        try:
            pixel = point_to_pixel(self.camera, msg)
        except GeometryError as exc:
            self.counts["prompts_skipped"] += 1
            self.warn(f"clicked point skipped (no TF offline: clicks must be in the camera frame): {exc}")
            return
        self.clicks += 1
        stamp = stamp_seconds(msg.header.stamp)
        self._push(Prompt.point([pixel], [1], id=f"click_{self.clicks}", stamp=stamp), "clicks")

    def text(self, msg: Any) -> None:
        self.set_text(str(msg.data).strip())

    def set_text(self, text: str) -> None:
        """Standing text queries, as on the node's prompts/text (empty clears)."""
        if text and not self.processor.can_name:
            self.counts["prompts_skipped"] += 1
            self.warn(f"text query {text!r} ignored: the model has no recognizer and vocabulary")
            return
        self.counts["text_prompts"] += bool(text)
        self.engine.set_standing("text", [Prompt.from_text(text)] if text else [])

    def _push(self, prompt: Prompt, kind: str) -> None:
        self.counts[kind] += 1
        self.engine.push_prompt(prompt)

    # ---------------------------------------------------------------- outputs

    def _on_result(self, result: FrameResult) -> None:
        header, bag_ns = self.frames.get(result.stamp, (None, round(result.stamp * 1e9)))
        result.vocabulary = self.options.vocabulary_label
        for error in result.errors:
            self.warn(f"frame {result.stamp:.6f}: {error}")
        self.counts["results"] += 1
        self.counts["instances"] += len(result.instances)
        f = self.factory
        self._write("instances", instance_array_msg(f, result, header), bag_ns)
        self._write("detections", detection2d_array_msg(f, result, header), bag_ns)
        frame = self.engine.frame(result.stamp)
        if frame is not None and frame.image is not None:
            from ovsam_ros.overlay import draw_overlay

            drawn = draw_overlay(frame.image, result.instances)
            self._write("overlay", numpy_to_image(f, drawn, "rgb8", header), bag_ns)

    def _write(self, output: str, msg: Any, bag_ns: int) -> None:
        self.writer.write(self.out[output], bag_ns, self.factory.serialize(msg))


def _add_input_connection(writer: Writer, conn: Any, store: Any) -> Any:
    """The output twin of an input connection: its definition from the typestore where known, else the
    one recorded in the bag."""
    qos = getattr(conn.ext, "offered_qos_profiles", [])
    fmt = getattr(conn.ext, "serialization_format", "cdr")
    if conn.msgtype in store.types:
        return writer.add_connection(conn.topic, conn.msgtype, typestore=store, serialization_format=fmt,
                                     offered_qos_profiles=qos)
    if conn.msgdef.data and conn.digest:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest,
                                     serialization_format=fmt, offered_qos_profiles=qos)
    raise BagError(f"cannot copy topic {conn.topic!r}: its type {conn.msgtype} is unknown here and the bag "
                   "records no definition of it")


def _open_reader(path: Path) -> Reader:
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises ReaderError, OSError, KeyError... for a bad bag
        raise BagError(f"cannot open bag {path}: {type(exc).__name__}: {exc}") from exc
    return reader


def replay_bag(input_path: str | Path, output_path: str | Path, processor: Any,
               options: ReplayOptions | None = None) -> dict:
    """Replay ``input_path`` through ``processor`` (a :class:`~ovsam_ros.pipeline.PromptProcessor`) and write
    ``output_path``; returns the statistics (counts, warnings, the engine's ``stats()``)."""
    options = ReplayOptions() if options is None else options
    src, dst = Path(input_path), Path(output_path)
    if dst.exists():
        raise BagError(f"output {dst} already exists; remove it or choose another path")
    storage = options.storage or bag_storage(src) or "sqlite3"
    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; choose {' or '.join(STORAGES)}")
    store = typestore()
    reader = _open_reader(src)
    started = time.perf_counter()
    try:
        available = {c.topic: c.msgtype for c in reader.connections}
        clash = sorted(name for name, _ in OUTPUTS.values() if name in available)
        if clash:
            raise BagError(f"the input bag already has {', '.join(clash)} (an output of this tool?): "
                           "replay the original bag")
        roles = resolve_topics(available, options.topics)
        writer = Writer(dst, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        try:
            writer.open()
        except Exception as exc:
            raise BagError(f"cannot write bag {dst}: {exc}") from exc
        try:
            replay = _replay(reader, writer, store, roles, processor, options)
        except BaseException:
            writer.close()
            shutil.rmtree(dst, ignore_errors=True)  # ours: it did not exist before; no half-written bags
            raise
        writer.close()
    finally:
        reader.close()
    return _stats(replay, src, dst, storage, roles, time.perf_counter() - started)


def _replay(reader: Reader, writer: Writer, store: Any, roles: dict[str, str], processor: Any,
            options: ReplayOptions) -> _Replay:
    """Copy every message, feed the ones of ``roles`` to the engine in bag order, then end the stream."""
    by_topic = {topic: role for role, topic in roles.items()}
    copies = {c.id: _add_input_connection(writer, c, store) for c in reader.connections}
    outs = {key: writer.add_connection(topic, msgtype, typestore=store)
            for key, (topic, msgtype) in OUTPUTS.items()}
    replay = _Replay(processor, options, writer, outs)
    if options.text.strip():
        replay.set_text(options.text.strip())
    if options.everything:
        replay.engine.set_standing("everything", [Prompt.everything()])
    for conn, bag_ns, data in tqdm(reader.messages(), total=reader.message_count, unit="msg", desc="replay",
                                   disable=not options.progress):
        replay.counts["messages"] += 1
        writer.write(copies[conn.id], bag_ns, data)
        role = by_topic.get(conn.topic)
        if role is None:
            continue
        msg = store.deserialize_cdr(bytes(data), conn.msgtype)
        if role == "image":
            replay.image(msg, conn.topic, bag_ns)
        else:
            getattr(replay, role)(msg)
        replay.engine.run_until_idle()
    replay.engine.finish()
    return replay


def _stats(replay: _Replay, src: Path, dst: Path, storage: str, roles: dict[str, str],
           seconds: float) -> dict:
    engine = replay.engine.stats()
    counts = replay.counts
    prompts = {key: counts[key] for key in ("point_prompts", "box_prompts", "clicks", "text_prompts")}
    return {
        "input": str(src),
        "output": str(dst),
        "storage": storage,
        "topics": roles,
        "messages": counts["messages"],
        "frames": counts["frames"],
        "bad_frames": counts["bad_frames"],
        "encodes": engine["frames_encoded"],
        "prompts": {**prompts, "skipped": counts["prompts_skipped"], "rejected": counts["prompts_rejected"]},
        "results": counts["results"],
        "instances": counts["instances"],
        "warnings": counts["warnings"],
        "first_warnings": replay.warnings,
        "timings": {"wall_s": round(seconds, 3), "encode": engine["encode_latency"],
                    "decode": engine["decode_latency"]},
        "engine": engine,
    }


def topic_types(path: str | Path) -> dict[str, str]:
    """Topic -> message type of a bag (for listing what a bag holds)."""
    reader = _open_reader(Path(path))
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def read_results(path: str | Path, topic: str = OUTPUTS["instances"][0]) -> list[tuple[int, FrameResult]]:
    """(bag time ns, FrameResult) of every InstanceArray on ``topic`` of a bag written by the replay."""
    from ovsam_ros.ros.message_builders import frame_result_from_msg

    reader = _open_reader(Path(path))
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
            raise BagError(f"topic {topic!r} is not in {path}; its topics: {topics}")
        if conns[0].msgtype != OUTPUTS["instances"][1]:
            raise BagError(f"topic {topic!r} carries {conns[0].msgtype}, not {OUTPUTS['instances'][1]}")
        store = typestore()
        return [(bag_ns, frame_result_from_msg(store.deserialize_cdr(bytes(data), conn.msgtype)))
                for conn, bag_ns, data in reader.messages(connections=conns)]
    finally:
        reader.close()

