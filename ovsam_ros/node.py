"""ovsam_node: the ROS 2 face of ovsam_ros, a thin lifecycle shell over the ROS-free core.

Callbacks only convert (``ovsam_ros.ros``) and hand over: frames and prompts go into the streaming
engine (``ovsam_ros.engine``) in O(1), and inference runs on the engine's worker thread, which
publishes its results from there (rclpy publishers are thread-safe). configure loads the model and
the vocabulary, activate starts subscriptions, publishers and the worker, deactivate stops them.
Bad input (an unknown encoding, a click off the image, an unreadable vocabulary, missing weights) is
logged, throttled, and skipped: the node keeps running. This is the only module that imports rclpy
and the generated messages.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
import tf2_geometry_msgs
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from message_filters import ApproximateTimeSynchronizer
from message_filters import Subscriber as FilterSubscriber
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger
from tf2_ros import Buffer, TransformException, TransformListener
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo
from visualization_msgs.msg import MarkerArray

from ovsam_ros.config import (
    NODE_NAME,
    ConfigError,
    OvsamConfig,
    ParameterSpec,
    config_from_parameters,
    parameter_specs,
)
from ovsam_ros.engine import Engine, EngineError
from ovsam_ros.msg import InstanceArray, PointPrompt
from ovsam_ros.pipeline import build_processor
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.results import FrameResult
from ovsam_ros.ros.factory import RclpyFactory
from ovsam_ros.ros.geometry import CameraModel, GeometryError, instance_box, point_to_pixel
from ovsam_ros.ros.image_conversions import ConversionError, depth_to_meters, image_to_rgb, numpy_to_image
from ovsam_ros.ros.message_builders import (
    class_image_msg,
    detection2d_array_msg,
    detection3d_array_msg,
    instance_array_msg,
    instance_image_msg,
    label_info_msg,
    marker_array_msg,
    stamp_seconds,
)
from ovsam_ros.ros.prompt_conversions import detection_prompts, point_prompt, segment_request_prompts
from ovsam_ros.srv import Segment, SetVocabulary

THROTTLE_S = 5.0
"""Seconds between repeats of one warning: a bad stream must not flood the log."""

_PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
_RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
_RELIABLE_SENSOR = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def parameter_descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """What ``ros2 param describe`` shows: the description, the valid range or choices, and read-only
    for settings that need a reconfigure (model, topics, QoS, buffer sizes)."""
    descriptor = ParameterDescriptor(name=spec.name, type=_PARAMETER_TYPES[spec.type],
                                     description=spec.description, read_only=not spec.dynamic)
    if spec.choices:
        descriptor.additional_constraints = f"one of: {', '.join(spec.choices)}"
    if spec.range is not None:
        lo, hi = spec.range
        if spec.type is int:
            descriptor.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                                  step=0.0)]
    return descriptor


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


class OvsamNode(LifecycleNode):
    """Lifecycle node: see the module docstring. Runs with ``autostart`` or under the launch file."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._factory = RclpyFactory()
        self._config, self._config_error = self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._processor: Any = None
        self._engine: Engine | None = None
        self._outputs: dict[str, Any] = {}
        self._inputs: list[Any] = []
        self._servers: list[Any] = []
        self._sync: ApproximateTimeSynchronizer | None = None
        self._diagnostics_timer: Any = None
        self._headers = _Bounded(64)
        self._depths = _Bounded(8)
        self._newest: tuple[float, np.ndarray, Any] | None = None
        self._camera: CameraModel | None = None
        self._clicks = 0
        self._tf_buffer: Buffer | None = None
        self._tf_listener: TransformListener | None = None
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._click_group = MutuallyExclusiveCallbackGroup()
        self._autostart_timer = None
        if self._config.node.autostart:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ---------------------------------------------------------------------------------- parameters

    def _declare_parameters(self) -> tuple[OvsamConfig, str]:
        """Declare every parameter with its descriptor; an override of the wrong type or out of range
        is logged and replaced by the default, and a combination the config rejects is kept as the
        reason configure fails, so a bad params file never kills the node."""
        values = {}
        for spec in parameter_specs():
            descriptor = parameter_descriptor(spec)
            try:
                values[spec.name] = self.declare_parameter(spec.name, spec.default, descriptor).value
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                self.get_logger().error(f"parameter {spec.name}: {exc}; using the default {spec.default!r}")
                values[spec.name] = self.declare_parameter(spec.name, spec.default, descriptor,
                                                           ignore_override=True).value
        try:
            return config_from_parameters(values), ""
        except ConfigError as exc:
            self.get_logger().error(f"invalid parameters: {exc}")
            return OvsamConfig(), str(exc)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate a run-time change as a whole; apply it only if all of it is valid."""
        try:
            config = self._config.updated({p.name: p.value for p in params})
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        processor = self._processor
        if processor is not None and config.vocab.vocabulary != self._config.vocab.vocabulary:
            try:
                self._set_vocabulary(config.vocab.vocabulary)
            except (ValueError, OSError) as exc:
                return SetParametersResult(successful=False, reason=f"vocab.vocabulary: {exc}")
        old, self._config = self._config, config
        if processor is not None:
            processor.vocab_config, processor.everything = config.vocab, config.everything
        if self._engine is not None and (config.engine != old.engine
                                         or config.node.publish_overlay != old.node.publish_overlay):
            self._restart_engine()
        if config.vocab.score_threshold != old.vocab.score_threshold:
            self._publish_label_info()
        if config.everything.standing != old.everything.standing:
            self._apply_everything()
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------------------------- lifecycle

    def _autostart(self) -> None:
        """``autostart``: configure and activate once the executor spins (for ``ros2 run``)."""
        self.destroy_timer(self._autostart_timer)
        self._autostart_timer = None
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the model and the vocabulary; create publishers and services."""
        if self._config_error:
            self.get_logger().error(f"cannot configure: {self._config_error}")
            return TransitionCallbackReturn.FAILURE
        cfg = self._config.model
        try:
            processor = build_processor(cfg, self._config.vocab, self._config.everything, progress=False)
            self._processor, self._predictor = processor, processor.predictor
        except Exception as exc:  # any load failure: stay unconfigured, alive
            self.get_logger().error(f"cannot load the {cfg.preset} model on {cfg.device}: {exc}")
            self._predictor = self._processor = None
            return TransitionCallbackReturn.FAILURE
        self._create_publishers()
        self._servers = [
            self.create_service(SetVocabulary, "~/set_vocabulary", self._srv_set_vocabulary,
                                callback_group=self._service_group),
            self.create_service(Segment, "~/segment", self._srv_segment, callback_group=self._service_group),
            self.create_service(Trigger, "~/clear_prompts", self._srv_clear_prompts,
                                callback_group=self._service_group),
        ]
        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self)  # reentrant group, this executor
        predictor = self._predictor
        self.get_logger().info(f"configured: {cfg.preset} on {predictor.device} ({predictor.dtype}), "
                               "vocabulary "
                               f"{self._vocabulary_label() or 'off (no recognizer)'}")
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the engine worker, then the subscriptions that feed it, then diagnostics."""
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._start_engine()
        self._create_subscriptions()
        rate = self._config.node.diagnostics_rate_hz
        if rate > 0:
            self._diagnostics_timer = self.create_timer(1.0 / rate, self._publish_diagnostics)
        self._publish_label_info()
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop the inputs first, then the worker (joined), then free cached GPU memory."""
        self._destroy_subscriptions()
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        self._stop_engine()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.close()
        return super().on_shutdown(state)

    def close(self) -> None:
        """Stop everything whatever the lifecycle state (the exit path of :func:`main`)."""
        self._destroy_subscriptions()
        self._stop_engine()
        self._release()

    def _release(self) -> None:
        """Drop the model, publishers, services and TF so cleanup leaves nothing behind."""
        for service in self._servers:
            self.destroy_service(service)
        self._servers = []
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if self._tf_listener is not None:
            self._tf_listener.unregister()
        self._tf_listener = self._tf_buffer = None
        self._predictor = self._processor = None
        self._headers.clear()
        self._depths.clear()
        self._newest = self._camera = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------- model & vocabulary

    def _set_vocabulary(self, vocabulary: Any) -> None:
        """Cached text embeddings, base classes and query phrases (ovsam_ros.pipeline); then LabelInfo."""
        self._processor.use_vocabulary(vocabulary, self._config.model.preset, progress=False)
        self._publish_label_info()

    @property
    def _vocabulary(self) -> Any:
        processor = self._processor
        return None if processor is None else processor.vocabulary

    def _vocabulary_label(self) -> str:
        vocabulary = self._vocabulary
        return "" if vocabulary is None else vocabulary.label

    # ---------------------------------------------------------------------------------- engine

    def _engine_config(self) -> Any:
        """The engine keeps each encoded frame's image only when an overlay may be drawn from it."""
        return dataclasses.replace(self._config.engine.engine_config(),
                                   keep_images=self._config.node.publish_overlay)

    def _start_engine(self) -> None:
        self._engine = Engine(self._processor, self._engine_config(), on_result=self._on_result,
                              on_error=self._on_engine_error)
        self._engine.start()
        self._apply_everything()

    def _apply_everything(self) -> None:
        """``everything.standing``: an everything prompt on every newly encoded frame, or none."""
        if self._engine is not None:
            standing = [Prompt.everything()] if self._config.everything.standing else []
            self._engine.set_standing("everything", standing)

    def _stop_engine(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and not engine.stop(timeout=10.0):
            self.get_logger().warn("the engine worker did not stop within 10 s")

    def _restart_engine(self) -> None:
        """Timing and encode settings change in place; buffer sizes and image keeping need a new
        engine, which keeps the standing prompts (the few cached frames are dropped)."""
        old = self._engine
        if old is None:
            return
        try:
            old.reconfigure(self._engine_config())
            return
        except EngineError:
            pass
        standing = old.standing()
        self._stop_engine()
        self._start_engine()
        assert self._engine is not None
        for key, prompts in standing.items():
            self._engine.set_standing(key, prompts)

    def _on_engine_error(self, message: str, prompt: Prompt | None) -> None:
        self.get_logger().warn(message, throttle_duration_sec=THROTTLE_S)

    # ---------------------------------------------------------------------------------- subscriptions

    def _image_qos(self) -> QoSProfile:
        return qos_profile_sensor_data if self._config.node.image_qos == "sensor_data" else _RELIABLE_SENSOR

    def _create_subscriptions(self) -> None:
        cfg = self._config.node
        qos = self._image_qos()
        image_type, image_topic = Image, cfg.image_topic
        if cfg.image_transport == "compressed":
            image_type, image_topic = CompressedImage, f"{cfg.image_topic}/compressed"
        if cfg.use_depth:
            filters = [FilterSubscriber(self, image_type, image_topic, qos_profile=qos),
                       FilterSubscriber(self, Image, cfg.depth_topic, qos_profile=qos)]
            self._sync = ApproximateTimeSynchronizer(filters, queue_size=10,
                                                     slop=max(self._config.engine.sync_slop_s, 1e-3))
            self._sync.registerCallback(self._on_image_and_depth)
            self._inputs += [f.sub for f in filters]
        else:
            self._inputs.append(self.create_subscription(image_type, image_topic, self._on_image, qos))
        self._inputs += [
            self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_camera_info, qos),
            self.create_subscription(PointStamped, "clicked_point", self._on_clicked_point, _RELIABLE,
                                     callback_group=self._click_group),  # may wait for TF
            self.create_subscription(PointPrompt, "prompts/points", self._on_point_prompt, _RELIABLE),
            self.create_subscription(Detection2DArray, "prompts/boxes", self._on_box_prompts, _RELIABLE),
            self.create_subscription(String, "prompts/text", self._on_text_prompt, _RELIABLE),
        ]

    def _destroy_subscriptions(self) -> None:
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []
        self._sync = None

    def _frame(self, msg: Any) -> tuple[float, np.ndarray] | None:
        """Decode one image for the engine; the stamp keys the header every output will carry."""
        try:
            rgb = image_to_rgb(msg)
        except ConversionError as exc:
            self.get_logger().warn(f"skipping image on {self._config.node.image_topic}: {exc}",
                                   throttle_duration_sec=THROTTLE_S)
            return None
        stamp = stamp_seconds(msg.header.stamp)
        if stamp <= 0:
            self.get_logger().warn("image has a zero stamp: keying it by the receive time (outputs keep "
                                   "its header)", throttle_duration_sec=THROTTLE_S)
            stamp = self.get_clock().now().nanoseconds * 1e-9
        with self._lock:
            self._headers.put(stamp, msg.header)
            self._newest = (stamp, rgb, msg.header)
        return stamp, rgb

    def _push_frame(self, stamp: float, rgb: np.ndarray, frame_id: str) -> None:
        engine = self._engine
        try:
            if engine is not None:
                engine.push_frame(rgb, stamp, frame_id)
        except EngineError as exc:
            self.get_logger().warn(f"frame rejected: {exc}", throttle_duration_sec=THROTTLE_S)

    def _on_image(self, msg: Any) -> None:
        frame = self._frame(msg)
        if frame is not None:
            self._push_frame(frame[0], frame[1], msg.header.frame_id)

    def _on_image_and_depth(self, image: Any, depth: Any) -> None:
        frame = self._frame(image)
        if frame is None:
            return
        try:
            meters = depth_to_meters(depth)
        except ConversionError as exc:
            self.get_logger().warn(f"skipping depth on {self._config.node.depth_topic}: {exc}",
                                   throttle_duration_sec=THROTTLE_S)
        else:
            if meters.shape == frame[1].shape[:2]:
                with self._lock:
                    self._depths.put(frame[0], meters)
            else:
                self.get_logger().warn(f"depth {meters.shape[1]}x{meters.shape[0]} is not aligned to the "
                                       f"{frame[1].shape[1]}x{frame[1].shape[0]} image: no 3D output",
                                       throttle_duration_sec=THROTTLE_S)
        self._push_frame(frame[0], frame[1], image.header.frame_id)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera = CameraModel.from_msg(msg, rectified=self._config.node.rectified_image)
        except GeometryError as exc:
            self.get_logger().warn(f"ignoring camera_info: {exc}", throttle_duration_sec=THROTTLE_S)

    def _image_size(self) -> tuple[int, int] | None:
        newest = self._newest
        return None if newest is None else newest[1].shape[:2]

    def _push_prompt(self, prompt: Prompt) -> None:
        engine = self._engine
        try:
            if engine is not None:
                engine.push_prompt(prompt)
        except EngineError as exc:
            self.get_logger().warn(f"prompt rejected: {exc}", throttle_duration_sec=THROTTLE_S)

    def _on_point_prompt(self, msg: Any) -> None:
        try:
            self._push_prompt(point_prompt(msg, self._image_size()))
        except PromptError as exc:
            self.get_logger().warn(f"skipping prompt: {exc}", throttle_duration_sec=THROTTLE_S)

    def _on_clicked_point(self, msg: PointStamped) -> None:
        """RViz "Publish Point": transform into the camera's optical frame and project to a pixel."""
        camera, buffer = self._camera, self._tf_buffer
        if camera is None or buffer is None:
            self.get_logger().warn("clicked point ignored: no camera_info received yet",
                                   throttle_duration_sec=THROTTLE_S)
            return
        newest = self._newest
        target = self._config.node.camera_frame or camera.frame_id or (newest[2].frame_id if newest else "")
        try:
            transform = buffer.lookup_transform(target, msg.header.frame_id, Time(),
                                                timeout=Duration(seconds=self._config.node.tf_timeout_s))
            pixel = point_to_pixel(camera, tf2_geometry_msgs.do_transform_point(msg, transform))
        except (TransformException, GeometryError) as exc:
            self.get_logger().warn(f"clicked point in {msg.header.frame_id!r} ignored: {exc}",
                                   throttle_duration_sec=THROTTLE_S)
            return
        self._clicks += 1
        self._push_prompt(Prompt.point([pixel], [1], id=f"click_{self._clicks}"))

    def _on_box_prompts(self, msg: Detection2DArray) -> None:
        """Detector boxes stand for every new frame until the next array (empty clears); the frame they
        were detected on is answered too when it is already encoded."""
        engine = self._engine
        if engine is None:
            return
        prompts, errors = detection_prompts(msg, standing=True, image_size=self._image_size())
        for error in errors:
            self.get_logger().warn(f"skipping detection: {error}", throttle_duration_sec=THROTTLE_S)
        stamp = stamp_seconds(msg.header.stamp)
        encoded = stamp > 0 and engine.frame(stamp) is not None
        engine.set_standing("boxes", prompts)
        if encoded:
            for prompt in prompts:
                self._push_prompt(dataclasses.replace(prompt, standing=False))

    def _on_text_prompt(self, msg: String) -> None:
        """Comma-separated queries stand until replaced; an empty string clears them."""
        engine, text = self._engine, msg.data.strip()
        if engine is None:
            return
        if text and self._vocabulary is None:
            self.get_logger().warn(f"text query {text!r} ignored: the {self._config.model.preset} model has "
                                   "no recognizer", throttle_duration_sec=THROTTLE_S)
            return
        engine.set_standing("text", [Prompt.from_text(text)] if text else [])

    # ---------------------------------------------------------------------------------- outputs

    def _create_publishers(self) -> None:
        make = self.create_lifecycle_publisher
        self._outputs = {
            "instances": make(InstanceArray, "~/instances", _RELIABLE),
            "detections": make(Detection2DArray, "~/detections", _RELIABLE),
            "instance_image": make(Image, "~/instance_image", _RELIABLE),
            "class_image": make(Image, "~/class_image", _RELIABLE),
            "label_info": make(LabelInfo, "~/label_info", _LATCHED),
            "overlay": make(Image, "~/overlay", _RELIABLE),
            "detections_3d": make(Detection3DArray, "~/detections_3d", _RELIABLE),
            "markers": make(MarkerArray, "~/markers", _RELIABLE),
            "diagnostics": make(DiagnosticArray, "/diagnostics", _RELIABLE),
        }

    def _publish(self, name: str, build: Callable[[], Any]) -> None:
        publisher = self._outputs.get(name)
        if publisher is not None:
            publisher.publish(build())

    def _on_result(self, result: FrameResult) -> None:
        """Engine worker thread: publish every enabled output with the source image's header."""
        try:
            self._publish_result(result)
        except Exception as exc:  # a bad result must not stop the next frame
            self.get_logger().error(f"publishing the result of frame {result.stamp:.6f} failed: {exc}",
                                    throttle_duration_sec=THROTTLE_S)

    def _publish_result(self, result: FrameResult) -> None:
        cfg, f = self._config.node, self._factory
        result.vocabulary = self._vocabulary_label()
        with self._lock:
            header = self._headers.get(result.stamp)
            depth = self._depths.get(result.stamp)
        for error in result.errors:
            self.get_logger().warn(f"frame {result.stamp:.6f}: {error}", throttle_duration_sec=THROTTLE_S)
        if cfg.publish_instances:
            self._publish("instances", lambda: instance_array_msg(f, result, header))
        if cfg.publish_detections:
            self._publish("detections", lambda: detection2d_array_msg(f, result, header))
        if cfg.publish_instance_image:
            self._publish("instance_image", lambda: instance_image_msg(f, result, header))
        if cfg.publish_class_image:
            self._publish("class_image", lambda: class_image_msg(f, result, header))
        overlay = self._outputs.get("overlay")
        if cfg.publish_overlay and overlay is not None and overlay.get_subscription_count() > 0:
            self._publish_overlay(result, header)
        if cfg.use_depth and cfg.publish_3d and depth is not None and self._camera is not None:
            boxes = [instance_box(inst.mask, depth, self._camera) for inst in result.instances]
            self._publish("detections_3d", lambda: detection3d_array_msg(f, result, boxes, header))
            self._publish("markers", lambda: marker_array_msg(f, result, boxes, header))

    def _publish_overlay(self, result: FrameResult, header: Any) -> None:
        from ovsam_ros.overlay import draw_overlay

        engine = self._engine
        frame = engine.frame(result.stamp) if engine is not None else None
        if frame is None or frame.image is None:
            return
        drawn = draw_overlay(frame.image, result.instances)
        self._publish("overlay", lambda: numpy_to_image(self._factory, drawn, "rgb8", header))

    def _publish_label_info(self) -> None:
        if self._vocabulary is not None and self._config.node.publish_class_image:
            names = self._vocabulary.display_names
            self._publish("label_info", lambda: label_info_msg(self._factory, names,
                                                                 self._config.vocab.score_threshold))

    def _publish_diagnostics(self) -> None:
        engine = self._engine
        if engine is None:
            return
        stats = engine.stats()
        values = {"device": str(self._predictor.device) if self._predictor is not None else "",
                  "preset": self._config.model.preset, "vocabulary": self._vocabulary_label(), **stats}
        flat: list[KeyValue] = []
        for key, value in values.items():
            if isinstance(value, dict):
                flat += [KeyValue(key=f"{key}.{k}", value=str(v)) for k, v in value.items()]
            else:
                flat.append(KeyValue(key=key, value=str(value)))
        trouble = not stats.get("running", False) or stats.get("encode_errors", 0) > 0
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if trouble else DiagnosticStatus.OK,
            name=f"{self.get_fully_qualified_name()}: streaming engine", hardware_id=values["device"],
            message="encode errors or worker stopped" if trouble else "running", values=flat)
        self._publish("diagnostics",
                      lambda: DiagnosticArray(header=self._diagnostics_header(), status=[status]))

    def _diagnostics_header(self) -> Any:
        header = DiagnosticArray().header
        header.stamp = self.get_clock().now().to_msg()
        return header

    # ---------------------------------------------------------------------------------- services

    def _srv_set_vocabulary(self, request: Any, response: Any) -> Any:
        from ovsam_ros.vocab.vocabulary import Vocabulary

        given = [bool(request.preset), bool(request.file), bool(request.names)]
        try:
            if sum(given) != 1:
                raise ValueError("fill exactly one of preset, file or names")
            if request.preset:
                vocabulary = Vocabulary.from_name(request.preset)
            elif request.file:
                vocabulary = Vocabulary.from_file(request.file)
            else:
                vocabulary = Vocabulary.from_names(list(request.names))
            if self._predictor is None:
                raise ValueError("the node is not configured")
            self._set_vocabulary(vocabulary)
        except (ValueError, OSError) as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success, response.size = True, len(vocabulary)
        response.vocabulary_id = vocabulary.label
        response.message = f"loaded {vocabulary.label} ({len(vocabulary)} classes)"
        return response

    def _srv_segment(self, request: Any, response: Any) -> Any:
        """Synchronous: on the given image, else the newest frame (its cached features when encoded)."""
        processor = self._processor
        try:
            if processor is None:
                raise ValueError("the node is not configured")
            if request.image.width and request.image.height:
                rgb = image_to_rgb(request.image)
                stamp, header = stamp_seconds(request.image.header.stamp), request.image.header
                features = processor.encode(rgb)
            else:
                stamp, header, features = self._newest_features(processor)
            size = tuple(features.original_size)
            prompts = segment_request_prompts(request, size)
            instances = processor.answer(features, prompts)
        except Exception as exc:  # a failed request must not take the executor (and the node) down
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
            return response
        result = FrameResult(stamp=stamp, frame_id=header.frame_id, image_size=size, instances=instances,
                             vocabulary=self._vocabulary_label())
        response.instances = instance_array_msg(self._factory, result, header)
        response.success, response.message = True, f"{len(instances)} instance(s)"
        return response

    def _newest_features(self, processor: Any) -> tuple[float, Any, Any]:
        newest, engine = self._newest, self._engine
        if newest is None:
            raise ValueError("no image received yet: pass one in the request")
        stamp, rgb, header = newest
        frame = engine.frame(stamp) if engine is not None else None
        return stamp, header, frame.features if frame is not None else processor.encode(rgb)

    def _srv_clear_prompts(self, request: Any, response: Any) -> Any:
        engine = self._engine
        if engine is not None:
            engine.clear_standing()
            self._apply_everything()  # the everything.standing parameter stays the truth
        response.success, response.message = True, "standing prompts (text, boxes) cleared"
        return response


def main(argv: list[str] | None = None) -> None:
    """``ros2 run ovsam_ros ovsam_node``: spin until shutdown (Ctrl-C ends it cleanly)."""
    rclpy.init(args=argv)
    node = OvsamNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
