"""The project's message and service types in a rosbags Typestore, so bags and tests work without ROS.

The definitions are read from the package's own ``msg/`` and ``srv/`` files (one source of truth for
rosidl and for rosbags). A service ``Name.srv`` becomes the two message types
``ovsam_ros/srv/Name_Request`` and ``ovsam_ros/srv/Name_Response``, as rosidl names them.

rosbags ships no ``vision_msgs``, so the few definitions used here are included below, verbatim
minus comments, from ros-perception/vision_msgs 4.1.1 (Apache-2.0), the version in Humble and Jazzy.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

PACKAGE = "ovsam_ros"

VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\n"
                                "geometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
    "Detection3D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox3D bbox\nstring id\n",
    "Detection3DArray": "std_msgs/Header header\nvision_msgs/Detection3D[] detections\n",
    "VisionClass": "uint16 class_id\nstring class_name\n",
    "LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}


def interface_root() -> Path:
    """Where ``msg/`` and ``srv/`` live: the source checkout, else ``<prefix>/share/ovsam_ros``.

    Both a ROS install (rosidl copies the files there) and ``pip install`` (pyproject data-files)
    put them in ``share/ovsam_ros`` under the prefix that holds ``lib/pythonX.Y/site-packages``.
    """
    parents = Path(__file__).resolve().parents  # ros/, ovsam_ros/, checkout or site-packages, ...
    candidates = [parents[2], Path(sys.prefix) / "share" / PACKAGE]
    if len(parents) > 5:  # <prefix>/lib/pythonX.Y/site-packages/ovsam_ros/ros/interfaces.py
        candidates.insert(1, parents[5] / "share" / PACKAGE)
    for root in candidates:
        if (root / "msg" / "Instance.msg").is_file():
            return root
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"msg/Instance.msg of {PACKAGE} not found; searched {searched}")


def split_service(text: str) -> tuple[str, str]:
    """The request and response parts of a ``.srv`` definition."""
    lines = text.splitlines()
    separators = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(separators) != 1:
        raise ValueError(f"a service definition needs exactly one '---' line, found {len(separators)}")
    i = separators[0]
    return "\n".join(lines[:i]) + "\n", "\n".join(lines[i + 1:]) + "\n"


def project_types(root: Path | None = None) -> dict:
    """rosbags type definitions of vision_msgs (subset) and of every msg/srv file of the package."""
    root = interface_root() if root is None else root
    types: dict = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    for path in sorted((root / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{PACKAGE}/msg/{path.stem}"))
    for path in sorted((root / "srv").glob("*.srv")):
        request, response = split_service(path.read_text(encoding="utf-8"))
        for part, text in (("Request", request), ("Response", response)):
            # rosbags only knows msg/ and action/ namespaces: parse as msg/, register as srv/.
            parsed = get_types_from_msg(text, f"{PACKAGE}/msg/{path.stem}_{part}")
            types[f"{PACKAGE}/srv/{path.stem}_{part}"] = parsed.pop(f"{PACKAGE}/msg/{path.stem}_{part}")
    return types


@cache
def typestore(store: Stores = Stores.ROS2_JAZZY) -> Typestore:
    """A typestore of a ROS distribution plus the project's and vision_msgs' types (built once)."""
    ts = get_typestore(store)
    ts.register(project_types())
    return ts
