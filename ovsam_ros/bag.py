"""Offline replay of a rosbag2 file through the streaming engine: the node's behaviour, without ROS.

Messages are read with ``rosbags`` (MCAP or sqlite3) in the bag's order and handed to the SAME
:class:`~ovsam_ros.engine.Engine` the node drives, in replay mode: time is the stream's (image
stamps), so the result does not depend on how fast this machine is, and a frame is encoded only when a
prompt needs it (or, while text / everything prompts stand, at the engine's rate cap in stream time).
Conversions and message building are the node's (``ovsam_ros.ros``): one code path for both.

Messages go through the node's own ROS-free core, :class:`~ovsam_ros.session.Session`, so a replay
behaves as the node does on the same stream: recorded detector boxes are answered on the frame they
name and stand for later frames until the next array, text queries and everything mode stand.

The output bag holds every input message unchanged (raw bytes, copied) plus ``/ovsam/instances``,
``/ovsam/detections``, ``/ovsam/overlay`` and ``/ovsam/track_events`` (ended tracks, with
``--track``), each with the source image's header and written at the source image's bag timestamp.
A frame that cannot be decoded, a prompt off the image or a click that cannot be projected is
counted, warned about and skipped; the rest is processed.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from tqdm import tqdm

from ovsam_ros.config import OvsamConfig
from ovsam_ros.engine import EngineConfig
from ovsam_ros.results import FrameResult, Instance
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.interfaces import typestore
from ovsam_ros.ros.message_builders import stamp_seconds
from ovsam_ros.session import Session

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
    "track_events": ("/ovsam/track_events", "ovsam_ros/msg/InstanceArray"),
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
    """What to answer besides the bag's own prompts, and how the engine runs (``config.engine``; the
    node's settings, so a replay behaves as the node would on the same stream). ``track`` turns
    tracking on (``config.tracking.enabled``): a click or box then follows its object on every later
    frame, and ids are track ids."""

    topics: BagTopics = field(default_factory=BagTopics)
    text: str = ""
    everything: bool = False
    track: bool = False
    storage: str | None = None
    config: OvsamConfig = field(default_factory=lambda: OvsamConfig(
        engine=EngineConfig(encode_mode="auto", max_encode_rate_hz=0.0)))
    progress: bool = True
    on_image: Callable[[int], None] | None = None
    """Called after each image message is answered, with the number of image messages read so far
    (how a fleet run reports its progress across bags)."""


class _Replay:
    """One replay: a :class:`~ovsam_ros.session.Session` in replay mode writing its outputs to the bag."""

    def __init__(self, processor: Any, options: ReplayOptions, roles: dict[str, str], writer: Writer,
                 connections: dict) -> None:
        self.writer = writer
        self.out = connections
        self.factory = RosbagsFactory(typestore())
        self.counts: Counter[str] = Counter()
        self.warnings: list[str] = []
        config = options.config
        config = dataclasses.replace(config, everything=dataclasses.replace(
            config.everything, standing=config.everything.standing or options.everything),
            node=dataclasses.replace(config.node, image_topic=roles["image"], use_depth=False),
            tracking=dataclasses.replace(config.tracking, enabled=config.tracking.enabled or options.track))
        self.session = Session(processor, config, self.factory, publish=self._write, warn=self.warn,
                               wants=lambda name: name in OUTPUTS, replay=True)
        self.engine = self.session.engine
        if options.text.strip():
            self.session.text(options.text)

    def warn(self, message: str) -> None:
        self.counts["warnings"] += 1
        log.warning("%s", message)
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)

    def feed(self, role: str, msg: Any, bag_ns: int) -> None:
        """One input message, in bag order; the engine then does all it can."""
        session = self.session
        if role == "image":
            session.image(msg, bag_ns)
        elif role == "camera_info":
            session.camera_info(msg)
        elif role == "points":
            session.points(msg)
        elif role == "boxes":
            session.boxes(msg)
        elif role == "clicked_point":
            session.click(msg)
        else:
            session.text(str(msg.data))
        self.engine.run_until_idle()

    def _write(self, output: str, msg: Any, bag_ns: int | None) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        when = bag_ns if bag_ns is not None else round(stamp * 1e9)
        self.writer.write(self.out[output], when, self.factory.serialize(msg))


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
    replay = _Replay(processor, options, roles, writer, outs)
    for conn, bag_ns, data in tqdm(reader.messages(), total=reader.message_count, unit="msg", desc="replay",
                                   disable=not options.progress):
        replay.counts["messages"] += 1
        writer.write(copies[conn.id], bag_ns, data)
        role = by_topic.get(conn.topic)
        if role is not None:
            replay.feed(role, store.deserialize_cdr(bytes(data), conn.msgtype), bag_ns)
            if role == "image" and options.on_image is not None:
                replay.counts["images"] += 1
                options.on_image(replay.counts["images"])
    replay.engine.finish()
    return replay


def _stats(replay: _Replay, src: Path, dst: Path, storage: str, roles: dict[str, str],
           seconds: float) -> dict:
    engine = replay.engine.stats()
    counts = replay.session.counts
    prompts = {key: counts[key] for key in ("point_prompts", "box_prompts", "clicks", "text_prompts")}
    return {
        "input": str(src),
        "output": str(dst),
        "storage": storage,
        "topics": roles,
        "messages": replay.counts["messages"],
        "frames": counts["frames"],
        "bad_frames": counts["bad_frames"],
        "encodes": engine["frames_encoded"],
        "prompts": {**prompts, "skipped": counts["prompts_skipped"], "rejected": counts["prompts_rejected"]},
        "results": counts["results"],
        "instances": counts["instances"],
        "tracks": {"started": counts["tracks_started"], "ended": counts["tracks_ended"]},
        "warnings": replay.counts["warnings"],
        "first_warnings": replay.warnings,
        "timings": {"wall_s": round(seconds, 3), "encode": engine["encode_latency"],
                    "decode": engine["decode_latency"]},
        "engine": engine,
    }


def count_images(path: str | Path, topics: BagTopics | None = None) -> int:
    """Image messages a replay of the bag with ``topics`` will read, from the bag's own message counts
    (no message is read). Raises :class:`BagError` for a bag that cannot be opened or has no usable image
    topic."""
    reader = _open_reader(Path(path))
    try:
        roles = resolve_topics({c.topic: c.msgtype for c in reader.connections}, topics or BagTopics())
        return sum(c.msgcount for c in reader.connections if c.topic == roles["image"])
    finally:
        reader.close()


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


def frame_images(path: str | Path, topic: str = OUTPUTS["instances"][0],
                 ) -> tuple[list[tuple[str, int, int, list[Instance]]], str]:
    """One image per source frame of a bag written by the replay (the results of a frame merged), named
    ``<frame_id>@<stamp>``, as ``(name, height, width, instances)``; and the recorded vocabulary label."""
    frames: dict[float, list[FrameResult]] = defaultdict(list)
    for _, result in read_results(path, topic):
        frames[result.stamp].append(result)
    images, label = [], ""
    for stamp in sorted(frames):
        first = frames[stamp][0]
        label = label or first.vocabulary
        name = f"{first.frame_id or 'frame'}@{stamp:.9f}"
        instances = [inst for result in frames[stamp] for inst in result.instances]
        images.append((name, first.image_size[0], first.image_size[1], instances))
    return images, label
