"""Start the ovsam_node lifecycle node (configured and activated by default) and, optionally, RViz.

    ros2 launch ovsam_ros ovsam.launch.py image:=/camera/color/image_raw \\
        camera_info:=/camera/color/camera_info depth:=/camera/aligned_depth_to_color/image_raw \\
        model:=mobilesam vocabulary:=coco use_rviz:=true

Arguments left empty keep the value of the params file (config/ovsam.yaml by default), so the file
stays the one place for defaults; given ones override it.
"""

from __future__ import annotations

import os
import tempfile

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from ovsam_ros.preset_registry import PRESET_NAMES

PACKAGE = "ovsam_ros"
NODE_NAME = "ovsam_node"

ARGUMENTS = {
    "image": ("image", "input image topic (sensor_msgs/Image)"),
    "image_transport": ("", "raw, or compressed to read <image>/compressed (sensor_msgs/CompressedImage); "
                            "empty = params file"),
    "camera_info": ("camera_info", "camera intrinsics topic"),
    "depth": ("", "aligned depth topic (16UC1 mm / 32FC1 m); empty = no depth, no 3D outputs"),
    "model": ("", f"model preset: {', '.join(PRESET_NAMES)}; empty = params file"),
    "vocabulary": ("", "vocabulary name (coco, lvis, imagenet21k, all) or file; empty = params file"),
    "device": ("", "auto, cpu, cuda or cuda:N; empty = params file"),
    "namespace": ("", "namespace of the node"),
    "params_file": ("", "ROS 2 params file; empty = share/ovsam_ros/config/ovsam.yaml"),
    "use_rviz": ("false", "start RViz with config/ovsam.rviz (camera image, overlay, depth cloud to click "
                          "on, 3D labels); needs the rviz2 package, which the robot itself need not have"),
    "fixed_frame": ("camera_color_optical_frame", "RViz fixed frame"),
    "autostart": ("true", "configure and activate the lifecycle node right away"),
}


def _value(context: LaunchContext, name: str) -> str:
    return LaunchConfiguration(name).perform(context).strip()


def _absolute(namespace: str, topic: str) -> str:
    return topic if topic.startswith("/") else f"/{namespace.strip('/')}/{topic}".replace("//", "/")


def _rviz_config(share: str, namespace: str, image: str, fixed_frame: str) -> str:
    """config/ovsam.rviz with this launch's topics and frame (RViz cannot remap), as a temporary file."""
    with open(os.path.join(share, "config", "ovsam.rviz"), encoding="utf-8") as f:
        text = f.read()
    text = (text.replace("Value: /image\n", f"Value: {_absolute(namespace, image)}\n")
            .replace("Value: /ovsam_node/", f"Value: {_absolute(namespace, NODE_NAME)}/")
            .replace("Value: /clicked_point\n", f"Value: {_absolute(namespace, 'clicked_point')}\n")
            .replace("Fixed Frame: camera_color_optical_frame", f"Fixed Frame: {fixed_frame}"))
    with tempfile.NamedTemporaryFile("w", suffix=".rviz", prefix="ovsam_", delete=False) as f:
        f.write(text)
    return f.name


def _launch_setup(context: LaunchContext) -> list:
    share = get_package_share_directory(PACKAGE)
    params_file = _value(context, "params_file") or os.path.join(share, "config", "ovsam.yaml")
    overrides: dict[str, object] = {}
    for arg, param in (("model", "model.preset"), ("vocabulary", "vocab.vocabulary"),
                       ("device", "model.device"), ("image_transport", "node.image_transport")):
        if _value(context, arg):
            overrides[param] = _value(context, arg)
    image, depth = _value(context, "image"), _value(context, "depth")
    remappings = [("image", image), ("image/compressed", f"{image}/compressed"),
                  ("camera_info", _value(context, "camera_info"))]
    if depth:
        overrides["node.use_depth"] = True
        remappings.append(("depth", depth))
    autostart = _value(context, "autostart").lower() in ("true", "1", "yes")
    if autostart:
        overrides["node.autostart"] = False  # the launch file drives the transitions, not the node

    namespace = _value(context, "namespace")
    node = LifecycleNode(package=PACKAGE, executable=NODE_NAME, name=NODE_NAME, namespace=namespace,
                         output="screen",
                         parameters=[params_file, overrides], remappings=remappings)
    actions: list = [node]
    if autostart:
        def transition(transition_id: int) -> EmitEvent:
            return EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

        actions += [
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, goal_state="inactive",
                entities=[transition(Transition.TRANSITION_ACTIVATE)])),
            transition(Transition.TRANSITION_CONFIGURE),
        ]
    if IfCondition(LaunchConfiguration("use_rviz")).evaluate(context):
        try:
            get_package_share_directory("rviz2")
        except PackageNotFoundError:
            return [*actions, LogInfo(msg="use_rviz:=true, but rviz2 is not installed here: run RViz on "
                                          "another machine with config/ovsam.rviz")]
        rviz = _rviz_config(share, namespace, image, _value(context, "fixed_frame"))
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                            arguments=["-d", rviz]))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_launch_setup)])
