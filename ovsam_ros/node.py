"""ovsam_node: the ROS 2 face of ovsam_ros, a lifecycle shell over :class:`ovsam_ros.session.Session`.

The node only declares parameters, subscribes, publishes, serves and moves through the lifecycle;
what a message means and what a result publishes is the session's (the bag replay uses the same
session). One thread runs the model: the session's engine worker. Callbacks hand over in O(1);
``~/segment`` and vocabulary changes are tasks for that worker, and a vocabulary is embedded on a
thread of its own while the old one keeps answering. Bad input is logged (throttled) and skipped.
This is the only module that imports rclpy and the generated messages.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import rclpy
import tf2_geometry_msgs
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
    qos_profile_sensor_data,
)
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
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
from ovsam_ros.msg import InstanceArray, PointPrompt
from ovsam_ros.pipeline import build_processor, load_vocabulary
from ovsam_ros.prompts import PromptError
from ovsam_ros.ros.factory import RclpyFactory
from ovsam_ros.ros.image_conversions import cv_bridge_decoder, image_to_rgb
from ovsam_ros.session import Session, SessionError
from ovsam_ros.srv import Segment, SetVocabulary
from ovsam_ros.vocab.vocabulary import names_file

THROTTLE_S = 5.0
"""Seconds between repeats of one warning: a bad stream must not flood the log."""

_PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
_RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
_RELIABLE_SENSOR = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
_PROMPTS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
"""Prompt subscriptions: best effort matches best-effort and reliable publishers alike."""
_NO_SUBSCRIPTION_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)
_NO_PUBLISHER_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
"""For what the lifecycle creates and destroys while the executor spins. Released rclpy (Jazzy,
before ros2/rclpy#1590) kills its executor when an entity's QoS event handler is destroyed between
the executor listing it and waiting on it (ros2/rclpy#1284: InvalidHandle in add_to_wait_set), so
these entities have no event handlers, and :meth:`OvsamNode._check_input_qos` gives the warning about
incompatible publishers that rclpy's default handler would have given."""
QOS_CHECK_PERIOD_S = 2.0

_OUTPUTS = {"instances": InstanceArray, "detections": Detection2DArray, "instance_image": Image,
            "class_image": Image, "overlay": Image, "detections_3d": Detection3DArray,
            "markers": MarkerArray, "points": PointCloud2, "track_events": InstanceArray}
_ON_DEMAND = ("overlay", "points")
"""Outputs built only while someone subscribes (drawing and deprojecting cost time)."""


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


class OvsamNode(LifecycleNode):
    """Lifecycle node: see the module docstring. Runs with ``autostart`` or under the launch file."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._factory = RclpyFactory()
        self._config, self._config_error = self._declare_parameters()
        self._pending_config: OvsamConfig | None = None
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._session: Session | None = None
        self._vocabulary_change: Future | None = None
        self._outputs: dict[str, Any] = {}
        self._label_info: Any = None
        self._inputs: list[Any] = []
        self._input_qos: list[tuple[str, QoSProfile]] = []  # read without the handles, which may be gone
        self._servers: list[Any] = []
        # for the node's lifetime: unregistering the listener destroys subscriptions that have event
        # handlers (see _NO_SUBSCRIPTION_EVENTS)
        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self)
        self._qos_problems: list[str] = []
        self._status = (DiagnosticStatus.WARN, "unconfigured")
        self._warned: OrderedDict[str, float] = OrderedDict()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._request_group = ReentrantCallbackGroup()  # concurrent ~/segment calls wait side by side
        self._click_group = MutuallyExclusiveCallbackGroup()  # may wait for TF
        # a plain publisher: diagnostics also tell why the node is unconfigured
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", _RELIABLE)
        rate = self._config.node.diagnostics_rate_hz
        if rate > 0:
            self.create_timer(1.0 / rate, self._publish_diagnostics)
        self.create_timer(QOS_CHECK_PERIOD_S, self._check_input_qos)
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

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Accept a run-time change only if all of it is valid; no side effects here (see
        :meth:`_apply_parameters`)."""
        try:
            config = self._config.updated({p.name: p.value for p in params})
            if config.vocab.vocabulary != self._config.vocab.vocabulary and self._session is not None:
                if self._session.vocabulary.loading:
                    raise ConfigError(f"vocab.vocabulary: {self._session.vocabulary.loading} is still being "
                                      "embedded")
                load_vocabulary(config.vocab.vocabulary)  # readable? (the embedding comes later)
        except (ConfigError, ValueError, OSError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._pending_config = config
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        config, self._pending_config = self._pending_config, None
        if config is None:
            return
        old, self._config = self._config, config
        session = self._session
        if session is None:
            return
        session.update(config)
        if config.vocab.vocabulary != old.vocab.vocabulary:
            self._vocabulary_change = session.change_vocabulary(config.vocab.vocabulary)
        elif config.vocab.score_threshold != old.vocab.score_threshold:
            session.publish_label_info()

    # ---------------------------------------------------------------------------------- lifecycle

    def _autostart(self) -> None:
        """``autostart``: configure and activate once the executor spins (for ``ros2 run``)."""
        self.destroy_timer(self._autostart_timer)
        self._autostart_timer = None
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the model and the vocabulary; create the session, publishers and services."""
        cfg = self._config.model
        if self._config_error:
            return self._fail_configure(self._config_error)
        try:
            processor = build_processor(cfg, self._config.vocab, self._config.everything, progress=False)
        except Exception as exc:  # any load failure: stay unconfigured, alive
            return self._fail_configure(f"cannot load the {cfg.preset} model on {cfg.device}: {exc}")
        make = self.create_lifecycle_publisher
        self._outputs = {name: make(kind, f"~/{name}", _RELIABLE, event_callbacks=_NO_PUBLISHER_EVENTS)
                         for name, kind in _OUTPUTS.items()}
        self._label_info = self.create_publisher(LabelInfo, "~/label_info", _LATCHED,
                                                 event_callbacks=_NO_PUBLISHER_EVENTS)
        self._session = Session(processor, self._config, self._factory, publish=self._publish,
                                warn=self._warn, info=self.get_logger().info, wants=self._wants,
                                decode=cv_bridge_decoder() or image_to_rgb)
        self._session.publish_label_info()
        self._servers = [
            self.create_service(SetVocabulary, "~/set_vocabulary", self._srv_set_vocabulary,
                                callback_group=self._service_group),
            self.create_service(Segment, "~/segment", self._srv_segment, callback_group=self._request_group),
            self.create_service(Trigger, "~/clear_prompts", self._srv_clear_prompts,
                                callback_group=self._service_group),
        ]
        predictor = processor.predictor
        vocabulary = processor.vocabulary.label if processor.vocabulary else "off (no recognizer)"
        self.get_logger().info(f"configured: {cfg.preset} on {predictor.device} ({predictor.dtype}), "
                               f"vocabulary {vocabulary}")
        self._status = (DiagnosticStatus.WARN, "configured, inactive")
        return super().on_configure(state)

    def _fail_configure(self, reason: str) -> TransitionCallbackReturn:
        self.get_logger().error(f"cannot configure: {reason}")
        self._status = (DiagnosticStatus.ERROR, f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the engine worker, then the subscriptions that feed it."""
        result = super().on_activate(state)  # enables the lifecycle publishers
        assert self._session is not None
        self._session.start()
        self._create_subscriptions()
        self._status = (DiagnosticStatus.OK, "active")
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop the inputs first, then the worker (joined), then free cached GPU memory."""
        self._destroy_subscriptions()
        self._stop_session()
        self._status = (DiagnosticStatus.WARN, "configured, inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        self._status = (DiagnosticStatus.WARN, "unconfigured")
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.close()
        return super().on_shutdown(state)

    def close(self) -> None:
        """Stop everything whatever the lifecycle state (the exit path of :func:`main`)."""
        self._destroy_subscriptions()
        self._stop_session()
        self._release()

    def _stop_session(self) -> None:
        session = self._session
        if session is not None and not session.stop(timeout=10.0):
            self.get_logger().warn("the engine worker did not stop within 10 s")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _release(self) -> None:
        """Drop the model, publishers and services so cleanup leaves nothing behind (TF stays)."""
        for service in self._servers:
            self.destroy_service(service)
        self._servers = []
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if self._label_info is not None:
            self.destroy_publisher(self._label_info)
            self._label_info = None
        self._session = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------- subscriptions

    def _create_subscriptions(self) -> None:
        cfg, session = self._config.node, self._session
        assert session is not None
        qos = qos_profile_sensor_data if cfg.image_qos == "sensor_data" else _RELIABLE_SENSOR
        image_type, image_topic = Image, cfg.image_topic
        if cfg.image_transport == "compressed":
            image_type, image_topic = CompressedImage, f"{cfg.image_topic}/compressed"
        def sub(*args: Any, **kwargs: Any) -> Any:
            return self.create_subscription(*args, **kwargs, event_callbacks=_NO_SUBSCRIPTION_EVENTS)
        self._inputs = [
            sub(image_type, image_topic, session.image, qos),
            sub(CameraInfo, cfg.camera_info_topic, session.camera_info, qos),
            sub(PointStamped, "clicked_point", self._on_clicked_point, _PROMPTS,
                callback_group=self._click_group),
            sub(PointPrompt, "prompts/points", session.points, _PROMPTS),
            sub(Detection2DArray, "prompts/boxes", session.boxes, _PROMPTS),
            sub(String, "prompts/text", lambda msg: session.text(msg.data), _PROMPTS),
        ]
        if cfg.use_depth:
            self._inputs.append(sub(Image, cfg.depth_topic, session.depth, qos))
        self._input_qos = [(s.topic_name, s.qos_profile) for s in self._inputs]

    def _destroy_subscriptions(self) -> None:
        self._input_qos, self._qos_problems = [], []
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []

    def _on_clicked_point(self, msg: PointStamped) -> None:
        """RViz "Publish Point": into the camera's optical frame with tf2 at the click's stamp, then the
        session projects it and binds it to the frame nearest that stamp."""
        session = self._session
        if session is None:
            return
        target = session.camera_frame
        if not target:
            self._warn("clicked point ignored: no camera_info or image received yet")
            return
        try:
            transform = self._tf_buffer.lookup_transform(
                target, msg.header.frame_id, Time.from_msg(msg.header.stamp),
                timeout=Duration(seconds=self._config.node.tf_timeout_s))
        except TransformException as exc:
            self._warn(f"clicked point in {msg.header.frame_id!r} ignored: {exc}")
            return
        session.click(tf2_geometry_msgs.do_transform_point(msg, transform))

    # ---------------------------------------------------------------------------------- outputs

    def _warn(self, message: str) -> None:
        """Throttled per kind of problem (the text before its first colon): a flood of one bad stream
        cannot hide a different problem, as one throttle for this call site would."""
        kind, now = message.split(":", 1)[0][:80], time.monotonic()
        if now - self._warned.get(kind, -THROTTLE_S) < THROTTLE_S:
            return
        self._warned[kind] = now
        self._warned.move_to_end(kind)
        while len(self._warned) > 256:
            self._warned.popitem(last=False)
        self.get_logger().warn(message)

    def _wants(self, name: str) -> bool:
        publisher = self._outputs.get(name)
        return publisher is not None and (name not in _ON_DEMAND or publisher.get_subscription_count() > 0)

    def _publish(self, name: str, msg: Any, received_ns: int | None) -> None:
        publisher = self._label_info if name == "label_info" else self._outputs.get(name)
        if publisher is not None:
            publisher.publish(msg)

    def _publish_diagnostics(self) -> None:
        level, message = self._status
        session = self._session
        values = session.diagnostics() if session is not None else {"preset": self._config.model.preset}
        if session is not None and level == DiagnosticStatus.OK and (
                not values.get("running") or values.get("encode_errors", 0)):
            level, message = DiagnosticStatus.WARN, "encode errors or worker stopped"
        if self._qos_problems:
            level, message = max(level, DiagnosticStatus.WARN), f"{message}; {self._qos_problems[0]}"
        status = DiagnosticStatus(
            level=level, name=f"{self.get_fully_qualified_name()}: streaming engine", message=message,
            hardware_id=str(values.get("device", "")),
            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])
        header = DiagnosticArray().header
        header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(DiagnosticArray(header=header, status=[status]))

    def _check_input_qos(self) -> None:
        """Warn of publishers whose QoS cannot reach an input (a reliable image subscription and a
        best-effort camera driver, say): rclpy's default warning for it needs event handlers that the
        inputs do without (see ``_NO_SUBSCRIPTION_EVENTS``)."""
        problems = []
        for topic, qos in self._input_qos:
            for info in self.get_publishers_info_by_topic(topic):
                compatibility, reason = qos_check_compatible(info.qos_profile, qos)
                if compatibility == QoSCompatibility.ERROR:
                    publisher = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
                    problems.append(f"incompatible QoS on {topic} from {publisher}: no messages arrive "
                                    f"from it; {reason}")
        for problem in problems:
            self._warn(problem)
        self._qos_problems = problems

    # ---------------------------------------------------------------------------------- services

    def _srv_set_vocabulary(self, request: Any, response: Any) -> Any:
        """Sets the ``vocab.vocabulary`` parameter (explicit names go to a file, so the parameter can
        always be reloaded) and waits for the new vocabulary up to ``node.request_timeout_s``."""
        given = [bool(request.preset), bool(request.file), bool(request.names)]
        if sum(given) != 1:
            response.success, response.message = False, "fill exactly one of preset, file or names"
            return response
        if self._session is None:
            response.success, response.message = False, "the node is not configured"
            return response
        if self._session.processor.predictor.model.recognizer is None:
            response.success = False
            response.message = (f"the {self._config.model.preset} model has no recognizer: configure a "
                                "CLIP model (model.clip_model)")
            return response
        spec = request.preset or request.file or str(names_file(list(request.names)))
        result = self.set_parameters([Parameter("vocab.vocabulary", value=spec)])[0]
        if not result.successful:
            response.success, response.message = False, result.reason
            return response
        change = self._vocabulary_change
        try:
            if change is not None:
                change.result(timeout=self._config.node.request_timeout_s)
        except FutureTimeout:
            response.success = True
            response.message = (f"{spec}: embedding in the background (progress on /diagnostics); the old "
                                "vocabulary answers until it is ready")
            return response
        except Exception as exc:
            response.success, response.message = False, str(exc)
            return response
        vocabulary = self._session.processor.vocabulary
        response.success, response.size, response.vocabulary_id = True, len(vocabulary), vocabulary.label
        response.message = f"loaded {vocabulary.label} ({len(vocabulary)} classes)"
        return response

    def _srv_segment(self, request: Any, response: Any) -> Any:
        """Answered by the engine worker (the given image, else the newest frame), waiting up to
        ``node.request_timeout_s``."""
        session = self._session
        try:
            if session is None:
                raise SessionError("the node is not configured")
            response.instances = session.segment(request, self._config.node.request_timeout_s)
        except (SessionError, PromptError) as exc:
            response.success, response.message = False, str(exc)
            return response
        except Exception as exc:  # a failed request must not take the executor (and the node) down
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
            return response
        response.success, response.message = True, f"{len(response.instances.instances)} instance(s)"
        return response

    def _srv_clear_prompts(self, request: Any, response: Any) -> Any:
        if self._session is not None:
            self._session.clear_prompts()
        response.success, response.message = True, "standing prompts (text, boxes) cleared"
        return response


def main(argv: list[str] | None = None) -> None:
    """``ros2 run ovsam_ros ovsam_node``: spin until shutdown (Ctrl-C ends it cleanly)."""
    rclpy.init(args=argv)
    node = OvsamNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
