"""Every setting a user tunes, with one default, one description and one valid range each, in one place.

The same dataclasses serve the ROS node (which declares one ROS parameter per field, with the
description and range below as its descriptor), the CLI and the bag tool. Parameter names are the
dotted ROS names, ``section.field`` (``model.preset``, ``vocab.top_k``, ...), which is also what a
nested ``ros__parameters`` block in ``config/ovsam.yaml`` becomes in ROS 2.

The ``engine`` section is the engine's own :class:`~ovsam_ros.engine.EngineConfig`: its fields are
declared there once, with the same :func:`~ovsam_ros.settings.setting` descriptors as the sections here.

Fields marked ``dynamic`` may change while the node runs (thresholds, rates, the vocabulary); the
others need a reconfigure (the node declares them read-only).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ovsam_ros.engine.config import EngineConfig, EngineConfigError
from ovsam_ros.preset_registry import (
    DEFAULT_PRESET,
    PRESET_NAMES,
    RECOGNITION_MODES,
    PresetError,
    recognition_mode,
)
from ovsam_ros.settings import is_parameter, setting, validate_settings

NODE_NAME = "ovsam_node"


class ConfigError(ValueError):
    """A setting with a wrong name, type or value; the message names the parameter."""


_param = setting
"""``_param(default, description, range=/choices=/pattern=, dynamic=)``: one setting of a section."""


class _Section:
    """Validation shared by every section: runs on construction, so an invalid config never exists."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        validate_settings(self, f"{self.section}.", ConfigError)


@dataclass(frozen=True)
class ModelConfig(_Section):
    section: ClassVar[str] = "model"

    preset: str = _param(DEFAULT_PRESET, "network preset (ovsam_ros.preset_registry)", choices=PRESET_NAMES)
    weights_dir: str = _param("", "directory with the weight files; empty = the package cache "
                                  "(~/.cache/ovsam_ros/weights)")
    device: str = _param("auto", "auto (CUDA when available), cpu, cuda or cuda:N",
                         pattern=r"auto|cpu|cuda(:\d+)?")
    precision: str = _param("auto", "compute precision; auto = fp16 on CUDA, fp32 on CPU",
                            choices=("auto", "fp32", "fp16", "bf16"))
    recognition: str = _param("auto", "how masks are named: head (trained CLIP2SAM head), clip (frozen CLIP "
                                      "only), ensemble (both; best for novel classes) or auto (ensemble for "
                                      "ovsam-*, clip for mobilesam / sam-clip, which have no head and refuse "
                                      "head and ensemble)", choices=RECOGNITION_MODES)
    clip_model: str = _param("", "open_clip architecture naming masks for mobilesam / sam-clip (e.g. "
                                 "ViT-B-32, RN50; open_clip.list_models()); empty = RN50x16 for sam-clip, "
                                 "no naming for mobilesam; ovsam-* take RN50x16 only")
    sam_variant: str = _param("vit_h", "SAM image encoder of the sam-clip preset",
                              choices=("vit_h", "vit_l", "vit_b"))
    clip_weights: str = _param("", "weights of clip_model: an open_clip checkpoint, or OpenAI's file (a "
                                   "TorchScript archive, or named <clip_model>.pt); empty = the weights "
                                   "folder's, which has RN50x16.pt only")
    random_init: bool = _param(False, "random weights, no files (tests and benchmarks only; never a "
                                      "fallback for missing weights)")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:  # the preset's own rules (preset_registry): refused here, before any weights load
            recognition_mode(self.preset, self.recognition, self.clip_model)
        except PresetError as exc:
            raise ConfigError(f"model.recognition / model.clip_model: {exc}") from None
        if self.clip_weights and self.random_init:
            raise ConfigError("model.clip_weights and model.random_init exclude each other")


@dataclass(frozen=True)
class VocabConfig(_Section):
    section: ClassVar[str] = "vocab"

    vocabulary: str = _param("lvis", "vocabulary name (coco, lvis, imagenet21k, all) or a .txt/.yaml "
                                     "file of class names", dynamic=True)
    embeddings_file: str = _param("", "a released class-embedding file [C, P, D] (e.g. "
                                      "RN50x16_LVISV1Dataset.pth) naming the classes of vocab.vocabulary in "
                                      "order, used instead of a text-tower pass (`ovsam-ros vocab import` "
                                      "checks one); empty = the released file of lvis / coco in the weights "
                                      "folder for the ovsam-* presets, else the text tower", dynamic=True)
    top_k: int = _param(5, "how many (name, probability) pairs each instance carries",
                        range=(1, 100), dynamic=True)
    score_threshold: float = _param(0.0, "top-1 probability below which an instance is unnamed "
                                         "(label '', class_index -1, no hypotheses in Detection2D or "
                                         "top-k, 65535 in the class image)", range=(0.0, 1.0), dynamic=True)
    text_threshold: float = _param(0.3, "probability a candidate mask needs to answer a text query",
                                   range=(0.0, 1.0), dynamic=True)


@dataclass(frozen=True)
class EverythingConfig(_Section):
    section: ClassVar[str] = "everything"

    points_per_side: int = _param(32, "grid of point prompts per image side", range=(1, 128))
    points_per_batch: int = _param(64, "grid points decoded per decoder call", range=(1, 4096))
    pred_iou_threshold: float = _param(0.88, "minimum predicted IoU of a kept mask (decoders with an "
                                             "IoU head)", range=(0.0, 1.0), dynamic=True)
    stability_score_threshold: float = _param(0.95, "minimum stability score of a kept mask",
                                              range=(0.0, 1.0), dynamic=True)
    nms_threshold: float = _param(0.7, "box IoU above which the weaker of two masks is dropped",
                                  range=(0.0, 1.0), dynamic=True)
    min_area: int = _param(0, "minimum mask area in pixels", range=(0, 1 << 30), dynamic=True)
    standing: bool = _param(False, "segment everything on every newly encoded frame (as often as "
                                   "engine.max_encode_rate_hz allows); false = only on request", dynamic=True)


_TOPIC = r"[~/]?[A-Za-z_][A-Za-z0-9_/{}~]*"


@dataclass(frozen=True)
class NodeConfig(_Section):
    section: ClassVar[str] = "node"

    image_topic: str = _param("image", "input image topic (raw); with image_transport compressed, "
                                       "<image_topic>/compressed is read", pattern=_TOPIC)
    camera_info_topic: str = _param("camera_info", "camera intrinsics topic", pattern=_TOPIC)
    depth_topic: str = _param("depth", "depth image aligned to the image (16UC1 mm or 32FC1 m)",
                              pattern=_TOPIC)
    use_depth: bool = _param(False, "subscribe to depth and publish 3D detections and markers")
    image_qos: str = _param("sensor_data", "QoS of image/depth/camera_info subscriptions",
                            choices=("sensor_data", "reliable"))
    image_transport: str = _param("raw", "how the image arrives", choices=("raw", "compressed"))
    rectified_image: bool = _param(False, "the image is rectified (image_rect): project with CameraInfo P "
                                          "and no distortion; false = K and D (image_raw)")
    camera_frame: str = _param("", "optical frame clicks are transformed into; empty = the image's "
                                   "header.frame_id")
    tf_timeout_s: float = _param(0.1, "how long to wait for a transform of a clicked point (s)",
                                 range=(0.0, 10.0), dynamic=True)
    publish_instances: bool = _param(True, "publish ~/instances (InstanceArray)", dynamic=True)
    publish_detections: bool = _param(True, "publish ~/detections (vision_msgs/Detection2DArray)",
                                      dynamic=True)
    publish_instance_image: bool = _param(True, "publish ~/instance_image (mono16 instance ids)",
                                          dynamic=True)
    publish_class_image: bool = _param(True, "publish ~/class_image (mono16) and ~/label_info",
                                       dynamic=True)
    publish_overlay: bool = _param(True, "publish ~/overlay (drawn only while someone subscribes)",
                                   dynamic=True)
    publish_3d: bool = _param(True, "publish ~/detections_3d and ~/markers (needs use_depth)",
                              dynamic=True)
    publish_cloud: bool = _param(True, "publish ~/points, the coloured cloud of each depth image that RViz "
                                       "clicks on (needs use_depth; built only while someone subscribes)",
                                 dynamic=True)
    cloud_stride: int = _param(2, "every n-th depth pixel per row and column goes into ~/points",
                               range=(1, 64), dynamic=True)
    max_image_pixels: int = _param(40_000_000, "larger images are skipped with a warning (a 40 MP frame "
                                                "already takes seconds to convert)", range=(1, 1 << 31),
                                   dynamic=True)
    max_points_per_prompt: int = _param(64, "clicks of one PointPrompt; a prompt with more is skipped",
                                        range=(1, 4096), dynamic=True)
    max_boxes_per_message: int = _param(256, "detections of one Detection2DArray used as prompts; the rest "
                                              "are skipped with a warning (a runaway detector cannot stall "
                                              "the model)", range=(1, 100000), dynamic=True)
    request_timeout_s: float = _param(30.0, "how long ~/segment and ~/set_vocabulary wait for the model "
                                            "before answering that it is busy (s)",
                                      range=(0.1, 3600.0), dynamic=True)
    diagnostics_rate_hz: float = _param(1.0, "diagnostics publishing rate; 0 = off",
                                        range=(0.0, 100.0))
    autostart: bool = _param(False, "configure and activate on start-up (for ros2 run without the "
                                    "launch file)")


@dataclass(frozen=True)
class TrackingConfig(_Section):
    """Instance tracks across frames (ovsam_ros.tracking): stable ids, re-prompted clicks and boxes."""

    section: ClassVar[str] = "tracking"

    enabled: bool = _param(False, "follow instances across frames: clicks and boxes are re-prompted on "
                                  "every newly encoded frame, standing outputs are matched to tracks, "
                                  "ids are track ids; turning it off ends every track", dynamic=True)
    keep_iou: float = _param(0.5, "mask IoU with the motion-predicted previous mask a tracked instance "
                                  "needs to stay tracked", range=(0.0, 1.0), dynamic=True)
    reacquire_iou: float = _param(0.6, "mask IoU a lost track needs to be found again (above keep_iou: "
                                       "hysteresis)", range=(0.0, 1.0), dynamic=True)
    min_similarity: float = _param(0.3, "appearance similarity (colour histogram, region embedding, class "
                                         "probabilities) a re-prompted mask needs to stay its track",
                                    range=(0.0, 1.0), dynamic=True)
    appearance_weight: float = _param(0.3, "weight of appearance against mask IoU in the association "
                                           "cost of standing outputs", range=(0.0, 1.0), dynamic=True)
    box_margin: float = _param(0.1, "a re-prompt's box is the track's last box moved by its velocity and "
                                    "grown by this fraction of its size on each side (zoom, motion the "
                                    "velocity misses)", range=(0.0, 1.0), dynamic=True)
    match_iou: float = _param(0.3, "smallest mask IoU for a standing output to join a track",
                              range=(0.0, 1.0), dynamic=True)
    min_hits: int = _param(2, "frames a track from standing outputs needs before it is confirmed; "
                              "clicks and boxes are confirmed at once", range=(1, 100), dynamic=True)
    max_lost_frames: int = _param(5, "frames a track may go unseen before it ends (an end event on "
                                     "~/track_events)", range=(0, 10000), dynamic=True)
    max_tracks: int = _param(64, "tracks kept at once; the oldest lost one ends first beyond this",
                             range=(1, 65534), dynamic=True)


@dataclass(frozen=True)
class OvsamConfig:
    """All settings; build it with :func:`load_config` or :func:`config_from_parameters`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    everything: EverythingConfig = field(default_factory=EverythingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_parameters(self) -> dict[str, Any]:
        """Flat ``{"section.field": value}``, the form ROS parameters take."""
        return {spec.name: getattr(getattr(self, spec.section), spec.field)
                for spec in parameter_specs()}

    def updated(self, changes: Mapping[str, Any]) -> OvsamConfig:
        """A copy with some dotted parameters changed, validated like a fresh load."""
        return config_from_parameters({**self.to_parameters(), **changes})


_SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in dataclasses.fields(OvsamConfig)  # type: ignore[misc]
}


@dataclass(frozen=True)
class ParameterSpec:
    """What the node needs to declare one ROS parameter with a descriptor."""

    name: str
    section: str
    field: str
    default: Any
    type: type
    description: str
    choices: tuple[str, ...]
    range: tuple[float, float] | None
    dynamic: bool


def parameter_specs() -> list[ParameterSpec]:
    """Every parameter, in declaration order, with its default, description and valid range."""
    specs = []
    for section, cls in _SECTIONS.items():
        for f in filter(is_parameter, dataclasses.fields(cls)):
            m = f.metadata
            specs.append(ParameterSpec(f"{section}.{f.name}", section, f.name, f.default, type(f.default),
                                       m["description"], m["choices"], m["range"], m["dynamic"]))
    return specs


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def config_from_parameters(params: Mapping[str, Any]) -> OvsamConfig:
    """Build and validate a config from dotted (or nested) names; missing ones take their default."""
    flat = dict(_flatten(params))
    known = {spec.name: spec for spec in parameter_specs()}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        hints = [f"{n} (did you mean {', '.join(difflib.get_close_matches(n, known, n=1)) or '?'})"
                 for n in unknown]
        raise ConfigError(f"unknown parameter(s): {'; '.join(hints)}")
    per_section: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    for name, value in flat.items():
        per_section[known[name].section][known[name].field] = value
    try:
        return OvsamConfig(**{section: _SECTIONS[section](**kwargs)
                              for section, kwargs in per_section.items()})
    except EngineConfigError as exc:  # the engine names its own field; the parameter is engine.<field>
        raise ConfigError(f"engine.{exc}") from None


def _node_matches(key: str, node_name: str) -> bool:
    """ROS 2 params-file keys: ``/**``, ``node``, ``/node``, ``/ns/node``, ``/ns/*``."""
    if key in ("/**", "**"):
        return True
    last = key.rstrip("/").rsplit("/", 1)[-1]
    return last in (node_name, "*")


def load_config(path: str | Path | None = None, node_name: str = NODE_NAME) -> OvsamConfig:
    """Read a ROS 2 params file (``<node>: ros__parameters: {...}``) into a validated config.

    Blocks for ``/**`` and for the node (with or without a namespace) are merged in file order,
    as ROS 2 does. ``None`` gives the defaults. A file without ``ros__parameters`` is read as the
    parameter tree itself, so a plain settings file works for the CLI too.
    """
    if path is None:
        return OvsamConfig()
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if doc is None:
        return OvsamConfig()
    if not isinstance(doc, Mapping):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    blocks = [v["ros__parameters"] for k, v in doc.items()
              if isinstance(v, Mapping) and "ros__parameters" in v and _node_matches(str(k), node_name)]
    if not blocks and not any(isinstance(v, Mapping) and "ros__parameters" in v for v in doc.values()):
        blocks = [doc]
    merged: dict[str, Any] = {}
    for block in blocks:
        if not isinstance(block, Mapping):
            raise ConfigError(f"config {path}: ros__parameters must be a mapping")
        merged.update(_flatten(block))
    try:
        return config_from_parameters(merged)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None

