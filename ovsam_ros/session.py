"""One camera stream between messages and the model: the ROS-free core that the node and the bag
replay share, so a bag replays exactly as the node runs.

In: image, depth and camera_info messages, prompt messages (points, detector boxes, text, clicks
already in the camera's optical frame) and ``~/segment`` requests. Each is converted
(:mod:`ovsam_ros.ros`), checked and handed to the streaming :class:`~ovsam_ros.engine.Engine`, whose
worker is the only thread that runs the model. Bad input becomes one ``warn`` line and is skipped.

Out: for every result, the messages of each enabled output (``publish(name, msg, received_ns)``),
all with the header of the source image, and on request the LabelInfo and the diagnostics values.
A vocabulary change is embedded on a thread of its own (hours for ImageNet-21k on a CPU) while
the old vocabulary keeps answering, then swapped in on the worker between two frames.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ovsam_ros.config import OvsamConfig
from ovsam_ros.engine import Engine, EngineError, RejectReason
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.results import FrameResult
from ovsam_ros.ros.factory import MessageFactory
from ovsam_ros.ros.geometry import CameraModel, GeometryError, instance_box, point_to_pixel
from ovsam_ros.ros.image_conversions import ConversionError, depth_to_meters, image_to_rgb, numpy_to_image
from ovsam_ros.ros.message_builders import (
    class_image_msg,
    detection2d_array_msg,
    detection3d_array_msg,
    instance_array_msg,
    instance_image_msg,
    label_info_msg,
    make_header,
    marker_array_msg,
    point_cloud_msg,
    stamp_seconds,
)
from ovsam_ros.ros.prompt_conversions import detection_prompts, point_prompt, segment_request_prompts
from ovsam_ros.tracking import Tracker

Publish = Callable[[str, Any, "int | None"], None]
"""``publish(output name, message, bag time of the source frame in ns or None)``."""

OUTPUTS = ("instances", "detections", "instance_image", "class_image", "overlay", "detections_3d",
           "markers", "points", "label_info", "track_events")
"""Every output, by name (the node's ``~/<name>`` topics); ``points`` is the coloured cloud of each
depth image (what RViz's "Publish Point" clicks on), ``track_events`` an InstanceArray of the tracks
that ended (their last instance, state TRACK_ENDED; ``tracking.enabled``), the others follow each
result."""

DEPTH_KEPT = 8
"""Depth images kept by stamp for the 3D outputs of frames still being answered."""


class SessionError(ValueError):
    """A request the session cannot answer (not configured, no frame, timed out); the message says why."""


@dataclasses.dataclass(frozen=True)
class VocabularyStatus:
    """What is active and what is being prepared (shown on /diagnostics)."""

    active: str
    loading: str = ""
    done: int = 0
    total: int = 0
    error: str = ""


class _Bounded(OrderedDict):
    """Insertion-ordered map that forgets its oldest entries beyond ``size`` (per-stamp side data)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: float, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Session:
    """See the module docstring. ``processor`` is a :class:`~ovsam_ros.pipeline.PromptProcessor`;
    ``factory`` builds the messages (rclpy's classes or rosbags'); ``wants(name)`` says whether an
    output is wanted now (the node: enabled and, for the overlay and the cloud, subscribed);
    ``decode`` turns an Image / CompressedImage into RGB (the node passes cv_bridge's where it
    imports); ``replay`` runs the engine on the caller's thread in stream time (bags)."""

    def __init__(self, processor: Any, config: OvsamConfig, factory: MessageFactory, *,
                 publish: Publish, warn: Callable[[str], None], info: Callable[[str], None] | None = None,
                 wants: Callable[[str], bool] | None = None,
                 decode: Callable[[Any], np.ndarray] = image_to_rgb, replay: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.processor = processor
        self.config = config
        self.factory = factory
        self.counts: Counter[str] = Counter()
        self._publish, self._warn = publish, warn
        self._info = info if info is not None else warn
        self._wants = wants if wants is not None else (lambda name: True)
        self._decode, self._clock = decode, clock
        engine_config = dataclasses.replace(config.engine, keep_images=True)
        self.engine = Engine(processor, engine_config, on_result=self._on_result, on_error=self._on_error,
                             replay=replay)
        self._lock = threading.Lock()
        self._frames = _Bounded(engine_config.cache_size + engine_config.raw_buffer_size + 8)
        self._depths = _Bounded(DEPTH_KEPT)
        self.camera: CameraModel | None = None
        self.image_size: tuple[int, int] | None = None
        self.newest_frame_id = ""
        self._clicks = 0
        self._newest_rgb: tuple[float, np.ndarray] | None = None
        self._vocabulary = VocabularyStatus(self._label())
        self._loader: threading.Thread | None = None
        self.tracker = Tracker(config.tracking) if config.tracking.enabled else None
        self.set_everything(config.everything.standing)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.engine.start()

    def stop(self, timeout: float = 10.0) -> bool:
        return self.engine.stop(timeout)

    def update(self, config: OvsamConfig) -> None:
        """Apply changed dynamic settings in place: thresholds, timing, standing everything, tracking
        on or off."""
        old, self.config = self.config, config
        self.engine.submit(lambda: self._apply_naming(config))
        engine_config = dataclasses.replace(config.engine, keep_images=True)
        if engine_config != self.engine.config:
            self.engine.reconfigure(engine_config)
        if config.everything.standing != old.everything.standing:
            self.set_everything(config.everything.standing)

    def _apply_naming(self, config: OvsamConfig) -> None:
        """Engine worker: the settings the model's answers and the tracks are made with."""
        self.processor.vocab_config, self.processor.everything = config.vocab, config.everything
        if config.tracking.enabled and self.tracker is None:
            self.tracker = Tracker(config.tracking)
        elif not config.tracking.enabled and self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            self._end_tracks(tracker)
        if self.tracker is not None:
            self.tracker.config = config.tracking

    # ------------------------------------------------------------------------------ inputs

    def image(self, msg: Any, received_ns: int | None = None) -> float | None:
        """A camera frame; its stamp keys the header every output of it carries (a zero stamp: the
        receive time). Returns the stamp, or None when the image could not be decoded."""
        self.counts["frames"] += 1
        cap = self.config.node.max_image_pixels
        try:
            if int(getattr(msg, "height", 0)) * int(getattr(msg, "width", 0)) > cap:
                raise ConversionError(f"{msg.width}x{msg.height} is over node.max_image_pixels ({cap})")
            rgb = self._decode(msg)
            if rgb.shape[0] * rgb.shape[1] > cap:
                raise ConversionError(f"{rgb.shape[1]}x{rgb.shape[0]} is over node.max_image_pixels ({cap})")
        except ConversionError as exc:
            self.counts["bad_frames"] += 1
            self._warn(f"skipping image on {self.config.node.image_topic}: {exc}")
            return None
        stamp = stamp_seconds(msg.header.stamp)
        if stamp <= 0:
            stamp = received_ns * 1e-9 if received_ns is not None else self._clock()
            self._warn("image has a zero stamp: keyed by its receive time (outputs keep its header)")
        with self._lock:
            self._frames.put(stamp, (msg.header, received_ns))
            self.image_size, self.newest_frame_id = rgb.shape[:2], str(msg.header.frame_id)
            self._newest_rgb = (stamp, rgb)
        try:
            self.engine.push_frame(rgb, stamp, str(msg.header.frame_id))
        except EngineError as exc:
            self._warn(f"frame rejected: {exc}")
            return None
        return stamp

    def depth(self, msg: Any, received_ns: int | None = None) -> None:
        """An aligned depth image, kept by stamp: results of the frame nearest it get 3D outputs (a
        stalled depth stream stops only those), and it is published as a point cloud coloured by
        the image of the same stamp. Deliberately not message_filters' synchroniser: it holds every
        image until a depth image matches, so a stalled depth stream would stop all output."""
        try:
            meters = depth_to_meters(msg)
        except ConversionError as exc:
            self._warn(f"skipping depth on {self.config.node.depth_topic}: {exc}")
            return
        stamp = stamp_seconds(msg.header.stamp)
        with self._lock:
            self._depths.put(stamp, meters)
            newest = self._newest_rgb
        camera = self.camera
        if camera is None or not self.config.node.publish_cloud or not self._wants("points"):
            return
        rgb = newest[1] if newest is not None and abs(newest[0] - stamp) <= self._slop() else None
        try:
            cloud = point_cloud_msg(self.factory, meters, rgb, camera, msg.header,
                                    self.config.node.cloud_stride)
        except (GeometryError, ValueError) as exc:
            self._warn(f"no point cloud for depth at {stamp:.6f}: {exc}")
            return
        self._publish("points", cloud, received_ns)

    def _slop(self) -> float:
        return self.config.engine.sync_slop_s + 1e-9

    def camera_info(self, msg: Any) -> None:
        try:
            self.camera = CameraModel.from_msg(msg, rectified=self.config.node.rectified_image)
        except GeometryError as exc:
            self._warn(f"ignoring camera_info: {exc}")

    @property
    def camera_frame(self) -> str:
        """The optical frame clicks are transformed into: ``node.camera_frame``, else CameraInfo's frame,
        else the images'."""
        camera = self.camera
        return self.config.node.camera_frame or (camera.frame_id if camera else "") or self.newest_frame_id

    def points(self, msg: Any) -> None:
        cap = self.config.node.max_points_per_prompt
        try:
            if len(msg.points) > cap:
                raise PromptError(f"point prompt {msg.id!r} has {len(msg.points)} points, over "
                                  f"node.max_points_per_prompt ({cap})")
            prompt = point_prompt(msg, self.image_size)
        except PromptError as exc:
            self._skip(f"skipping prompt: {exc}")
            return
        self._push(prompt, "point_prompts")

    def boxes(self, msg: Any) -> None:
        """Detector boxes: answered once on the frame they were detected on, and standing for every
        newer frame until the next array (an empty one clears them). With tracking they do not stand:
        each box's answer joins or starts a track, which follows its object on later frames."""
        prompts, errors = detection_prompts(msg, standing=True, image_size=self.image_size)
        for error in errors:
            self._skip(f"skipping detection: {error}")
        cap = self.config.node.max_boxes_per_message
        if len(prompts) > cap:
            self._skip(f"skipping detections: {len(prompts)} boxes in one array, the first "
                       f"{cap} are used (node.max_boxes_per_message)")
            prompts = prompts[:cap]
        if self.tracker is None:
            self._set_standing("boxes", prompts)
        for prompt in prompts:
            if prompt.stamp > 0 or self.tracker is not None:
                self._push(dataclasses.replace(prompt, standing=False), "box_prompts")

    def click(self, msg: Any) -> None:
        """A PointStamped already in :attr:`camera_frame` (the node transforms RViz's click with tf2; a
        bag must record it there): projected with the intrinsics, and answered on the frame nearest
        its stamp."""
        camera, frame = self.camera, self.camera_frame
        if camera is None:
            self._skip("clicked point ignored: no camera_info received yet")
            return
        given = str(msg.header.frame_id).lstrip("/")
        if given and frame and given != frame.lstrip("/"):
            self._skip(f"clicked point in {given!r} ignored: it must be in the camera frame {frame!r} "
                       "(no transform available here)")
            return
        try:
            pixel = point_to_pixel(camera, msg.point)
        except GeometryError as exc:
            self._skip(f"clicked point ignored: {exc}")
            return
        self._clicks += 1
        stamp = stamp_seconds(msg.header.stamp)
        self._push(Prompt.point([pixel], [1], id=f"click_{self._clicks}", stamp=stamp), "clicks")

    def text(self, text: str) -> None:
        """Standing text queries ("red mug, screwdriver"); an empty string clears them."""
        text = text.strip()
        if text and not self.processor.can_name:
            self._skip(f"text query {text!r} ignored: the {self.config.model.preset} model has no "
                       "recognizer (configure a CLIP model)")
            return
        self.counts["text_prompts"] += bool(text)
        self._set_standing("text", [Prompt.from_text(text)] if text else [])

    def set_everything(self, on: bool) -> None:
        self._set_standing("everything", [Prompt.everything()] if on else [])

    def clear_prompts(self) -> None:
        """Drop the standing text queries and boxes, and end every track; ``everything.standing``
        stays the truth."""
        self.engine.clear_standing()
        self.set_everything(self.config.everything.standing)
        if self.tracker is not None:
            tracker = self.tracker
            self.engine.submit(lambda: self._end_tracks(tracker))

    def _set_standing(self, key: str, prompts: list[Prompt]) -> None:
        try:
            self.engine.set_standing(key, prompts)
        except EngineError as exc:
            self._skip(f"standing {key} prompts rejected: {exc}")

    def _push(self, prompt: Prompt, kind: str) -> None:
        self.counts[kind] += 1
        try:
            self.engine.push_prompt(prompt)
        except EngineError as exc:
            self._skip(f"prompt rejected: {exc}")

    def _skip(self, message: str) -> None:
        self.counts["prompts_skipped"] += 1
        self._warn(message)

    # ------------------------------------------------------------------------------ requests

    def segment(self, request: Any, timeout_s: float) -> Any:
        """An ovsam_ros/Segment request answered on the worker: the InstanceArray of the given image
        (encoded once and cached like a streamed frame) or of the newest frame."""
        given = request.image
        image, stamp, frame_id, size = None, 0.0, "", self.image_size
        if given.width and given.height:
            try:
                image = self._decode(given)
            except ConversionError as exc:
                raise SessionError(f"request image: {exc}") from None
            stamp = stamp_seconds(given.header.stamp) or self._clock()
            frame_id, size = str(given.header.frame_id), image.shape[:2]
            with self._lock:
                self._frames.put(stamp, (given.header, None))
        elif size is None:
            raise SessionError("no image received yet: pass one in the request")
        prompts = segment_request_prompts(request, size)
        try:
            result = self.engine.request(prompts, image, stamp, frame_id).result(timeout=timeout_s)
        except FutureTimeout:
            raise SessionError(f"no answer within {timeout_s:.1f} s (node.request_timeout_s): the model is "
                               f"busy with {self.engine.stats()['prompts_pending']} pending prompt(s) and "
                               "the stream; try again or raise the timeout") from None
        except EngineError as exc:
            raise SessionError(str(exc)) from None
        result.vocabulary = self._label()
        return instance_array_msg(self.factory, result, self._header(result.stamp))

    # ------------------------------------------------------------------------------ vocabulary

    def change_vocabulary(self, spec: Any, on_done: Callable[[VocabularyStatus], None] | None = None,
                          ) -> Future[VocabularyStatus]:
        """Embed ``spec`` (a name, a file or a Vocabulary) on a thread of its own, then switch to it on
        the worker between frames; the future ends when the new vocabulary names frames (or failed).
        One change at a time: a second while one is embedding is refused."""
        done: Future[VocabularyStatus] = Future()
        if self._loader is not None and self._loader.is_alive():
            done.set_exception(SessionError(f"vocabulary {self._vocabulary.loading} is still being "
                                            "embedded; try again when it is active"))
            return done
        label = getattr(spec, "label", str(spec))
        self._vocabulary = dataclasses.replace(self._vocabulary, loading=label, done=0, total=0, error="")

        def progress(count: int, total: int) -> None:
            step = max(1, total // 10)
            if count // step != self._vocabulary.done // step or count == total:
                self._info(f"embedding vocabulary {label}: {count}/{total} names")
            self._vocabulary = dataclasses.replace(self._vocabulary, done=count, total=total)

        def finish(status: VocabularyStatus) -> None:
            self._vocabulary = status
            self.publish_label_info()
            if on_done is not None:
                on_done(status)
            done.set_result(status)

        def fail(exc: BaseException) -> None:
            self._vocabulary = dataclasses.replace(self._vocabulary, loading="", error=f"{label}: {exc}")
            self._warn(f"vocabulary {label} not loaded: {exc}")
            done.set_exception(exc)

        def load() -> None:
            try:
                config = self.config
                switch = self.processor.prepare_vocabulary(
                    spec, config.model.preset, progress, embeddings_file=config.vocab.embeddings_file,
                    weights_dir=config.model.weights_dir)
            except Exception as exc:  # an unreadable file, a model that cannot name, a full disk
                fail(exc)
                return
            swapped = self.engine.submit(lambda: (switch(), VocabularyStatus(self._label()))[1])
            swapped.add_done_callback(lambda f: fail(f.exception()) if f.exception() else finish(f.result()))

        self._loader = threading.Thread(target=load, name="ovsam-vocabulary", daemon=True)
        if self.engine.replay:
            load()
        else:
            self._loader.start()
        return done

    @property
    def vocabulary(self) -> VocabularyStatus:
        return self._vocabulary

    def _label(self) -> str:
        vocabulary = getattr(self.processor, "vocabulary", None)
        return "" if vocabulary is None else vocabulary.label

    def label_info(self) -> Any | None:
        """vision_msgs/LabelInfo of the active vocabulary (None without one), stamped now, in the camera
        frame: the class ids of ``class_image``."""
        vocabulary = getattr(self.processor, "vocabulary", None)
        if vocabulary is None:
            return None
        header = make_header(self.factory, self._clock(), self.camera_frame)
        return label_info_msg(self.factory, vocabulary.display_names, self.config.vocab.score_threshold,
                              header)

    def publish_label_info(self) -> None:
        msg = self.label_info()
        if msg is not None:
            self._publish("label_info", msg, None)

    def diagnostics(self) -> dict[str, Any]:
        """Flat values for /diagnostics: engine counters and latencies, the device, the vocabulary."""
        vocabulary = self._vocabulary
        values: dict[str, Any] = {"device": str(self.processor.predictor.device),
                                  "preset": self.config.model.preset, "vocabulary": vocabulary.active}
        if vocabulary.loading:
            progress = f"{vocabulary.done}/{vocabulary.total} names"
            values["vocabulary_loading"] = f"{vocabulary.loading} ({progress})"
        if vocabulary.error:
            values["vocabulary_error"] = vocabulary.error
        values.update(self.counts)
        for key, value in self.engine.stats().items():
            if isinstance(value, dict):
                values.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                values[key] = value
        return values

    # ------------------------------------------------------------------------------ outputs

    def _header(self, stamp: float) -> Any:
        with self._lock:
            entry = self._frames.get(stamp)
        return entry[0] if entry is not None else None

    def _on_error(self, message: str, prompt: Prompt | None) -> None:
        self.counts["prompts_rejected"] += 1
        if not message.startswith(RejectReason.FAILED.value) or prompt is None:
            self._warn(message)  # a failed prompt is reported with its frame's result

    def _depth_for(self, stamp: float) -> np.ndarray | None:
        """The depth image nearest ``stamp`` within the engine's slop."""
        with self._lock:
            stamps = list(self._depths)
            best = min(stamps, key=lambda s: abs(s - stamp), default=None)
            if best is None or abs(best - stamp) > self._slop():
                return None
            return self._depths[best]

    def _on_result(self, result: FrameResult) -> None:
        """Engine worker: every wanted output of one result, each with the source image's header."""
        with self._lock:
            header, received_ns = self._frames.get(result.stamp, (None, None))
        result.vocabulary = self._label()
        if self.tracker is not None:
            self._track(result)
        self.counts["results"] += 1
        self.counts["instances"] += len(result.instances)
        for error in result.errors:
            self._warn(f"frame {result.stamp:.6f}: {error}")
        cfg, f = self.config.node, self.factory
        builders: dict[str, Callable[[], Any]] = {
            "instances": lambda: instance_array_msg(f, result, header),
            "detections": lambda: detection2d_array_msg(f, result, header),
            "instance_image": lambda: instance_image_msg(f, result, header),
            "class_image": lambda: class_image_msg(f, result, header),
            "overlay": lambda: self._overlay(result, header),
        }
        enabled = {"instances": cfg.publish_instances, "detections": cfg.publish_detections,
                   "instance_image": cfg.publish_instance_image, "class_image": cfg.publish_class_image,
                   "overlay": cfg.publish_overlay}
        depth = self._depth_for(result.stamp) if cfg.use_depth else None
        camera = self.camera
        if depth is not None and camera is not None:
            builders.update(self._builders_3d(result, header, depth, camera))
            enabled.update(detections_3d=cfg.publish_3d, markers=cfg.publish_3d)
        for name, build in builders.items():
            if enabled[name] and self._wants(name):
                try:
                    msg = build()
                except (ConversionError, GeometryError, ValueError) as exc:
                    self._warn(f"{name} of frame {result.stamp:.6f} not published: {exc}")
                    continue
                if msg is not None:
                    self._publish(name, msg, received_ns)

    def _track(self, result: FrameResult) -> None:
        """Engine worker: give the result's instances track ids, publish the tracks that ended, and make
        the live tracks' re-prompts the standing prompts of the next encoded frame."""
        assert self.tracker is not None
        frame = self.engine.frame(result.stamp)
        image = frame.image if frame is not None else None
        update = self.tracker.update(result, image)
        result.instances = update.instances
        self.counts["tracks_started"] += len(update.started)
        self._publish_ended(update.ended, result.stamp, result.frame_id, result.image_size)
        self._set_standing("tracks", self.tracker.reprompts())

    def _publish_ended(self, ended: list, stamp: float, frame_id: str = "",
                       size: tuple[int, int] | None = None) -> None:
        """End events: one InstanceArray on ``track_events`` with the last instance of each ended track,
        stamped with the frame that ended them (the newest frame when tracks were cleared)."""
        if not ended:
            return
        self.counts["tracks_ended"] += len(ended)
        with self._lock:
            if size is None:
                size = ended[0].mask.shape
                stamp = stamp or max(self._frames, default=self._clock())
                frame_id = frame_id or self.newest_frame_id
            header = self._frames.get(stamp, (None, None))[0]
        events = FrameResult(stamp=stamp, frame_id=frame_id, image_size=size, instances=ended,
                             vocabulary=self._label())
        if self._wants("track_events"):
            self._publish("track_events", instance_array_msg(self.factory, events, header), None)

    def _end_tracks(self, tracker: Tracker) -> None:
        """Engine worker: end every track with its event, and their re-prompts with them (a frame
        answered since they were last set may have set them again)."""
        self._publish_ended(tracker.clear(), 0.0)
        self._set_standing("tracks", [])

    def _builders_3d(self, result: FrameResult, header: Any, depth: np.ndarray,
                     camera: CameraModel) -> dict[str, Callable[[], Any]]:
        f = self.factory
        boxes: list[Any] = []

        def instance_boxes() -> list[Any]:
            if not boxes:
                boxes.extend(instance_box(inst.mask, depth, camera) for inst in result.instances)
            return boxes

        return {"detections_3d": lambda: detection3d_array_msg(f, result, instance_boxes(), header),
                "markers": lambda: marker_array_msg(f, result, instance_boxes(), header)}

    def _overlay(self, result: FrameResult, header: Any) -> Any:
        from ovsam_ros.overlay import draw_overlay

        frame = self.engine.frame(result.stamp)
        if frame is None or frame.image is None:
            return None
        return numpy_to_image(self.factory, draw_overlay(frame.image, result.instances), "rgb8", header)
