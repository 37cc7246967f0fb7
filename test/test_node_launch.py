"""launch/ovsam.launch.py for real under launch_testing: the installed ``ovsam_node`` executable starts
in a namespace with a params file keyed ``/**`` (so it applies there), reads compressed images, is
driven to active by the launch file, segments a real bear photo, and exits cleanly on shutdown.

Needs ROS 2 (launch_testing, rclpy) with this package built and installed; skipped without, a
failure in CI (``ros_env``). Run with ``launch_test test/test_node_launch.py`` or plain pytest
(launch_testing's pytest plugin).
"""

from __future__ import annotations

import os
import tempfile
import time
import unittest

import pytest
from ros_env import require

require("launch_testing", reason="needs ROS 2 (launch_testing)")
require("ovsam_ros.msg", reason="needs the built ovsam_ros package (generated messages)")

import cv2
import launch_testing.actions
import launch_testing.asserts
import rclpy
import yaml
from ament_index_python.packages import get_package_share_directory
from geometry_msgs.msg import Point
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from ovsam_ros.msg import InstanceArray, PointPrompt
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage

from ovsam_ros import assets

NAMESPACE = "launch_test"
TIMEOUT_S = 180.0
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _params_file() -> str:
    """MobileSAM from the real checkpoint, on the CPU, encoding only prompted frames."""
    params = {"/**": {"ros__parameters": {
        "model": {"preset": "mobilesam", "weights_dir": str(assets.mobile_sam_checkpoint().parent),
                  "device": "cpu"},
        "engine": {"encode_mode": "on_demand", "prompt_wait_s": 5.0, "max_prompt_age_s": 3600.0},
        "everything": {"points_per_side": 6},
        "node": {"image_qos": "reliable"},
    }}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ovsam_launch_test_", delete=False) as f:
        yaml.safe_dump(params, f)
    return f.name


@pytest.mark.slow
@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("ovsam_ros"), "launch", "ovsam.launch.py")
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"params_file": _params_file(), "namespace": NAMESPACE, "image": "camera/image",
                          "image_transport": "compressed", "autostart": "true"}.items())
    return LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestLaunchedNode(unittest.TestCase):
    """Talks to the launched node over DDS, as any other process would."""

    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("ovsam_launch_test_client")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def _spin_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if condition():
                return
            rclpy.spin_once(self.node, timeout_sec=0.1)
        self.fail(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}")

    def _state(self) -> int:
        client = self.node.create_client(GetState, f"/{NAMESPACE}/ovsam_node/get_state")
        try:
            self._spin_until(lambda: client.service_is_ready(), "the lifecycle get_state service")
            future = client.call_async(GetState.Request())
            self._spin_until(future.done, "the lifecycle state")
            return future.result().current_state.id
        finally:
            self.node.destroy_client(client)

    def _parameter(self, name: str) -> object:
        client = self.node.create_client(GetParameters, f"/{NAMESPACE}/ovsam_node/get_parameters")
        try:
            self._spin_until(lambda: client.service_is_ready(), "the get_parameters service")
            future = client.call_async(GetParameters.Request(names=[name]))
            self._spin_until(future.done, f"parameter {name}")
            return future.result().values[0]
        finally:
            self.node.destroy_client(client)

    def test_launch_activates_the_node_and_it_segments_a_photo(self) -> None:
        self._spin_until(lambda: self._state() == State.PRIMARY_STATE_ACTIVE, "the node to become active")
        self.assertEqual(self._parameter("everything.points_per_side").integer_value, 6)  # the params file
        self.assertEqual(self._parameter("node.image_transport").string_value, "compressed")
        results: list[InstanceArray] = []
        self.node.create_subscription(InstanceArray, f"/{NAMESPACE}/ovsam_node/instances", results.append,
                                      RELIABLE)
        image_pub = self.node.create_publisher(CompressedImage, f"/{NAMESPACE}/camera/image/compressed",
                                               RELIABLE)
        points_pub = self.node.create_publisher(PointPrompt, f"/{NAMESPACE}/prompts/points", RELIABLE)
        self._spin_until(lambda: image_pub.get_subscription_count() > 0
                         and points_pub.get_subscription_count() > 0, "the node's subscriptions")

        photo = assets.bear_dataset().images()[0]
        image = CompressedImage(format="jpeg", data=photo.read_bytes())  # the camera's own JPEG
        image.header.stamp.sec, image.header.stamp.nanosec, image.header.frame_id = 42, 7, "camera"
        height, width = cv2.imread(str(photo)).shape[:2]
        click = PointPrompt(id="center", points=[Point(x=width / 2, y=height / 2)], labels=[1])
        click.header.stamp = image.header.stamp
        image_pub.publish(image)
        points_pub.publish(click)
        self._spin_until(lambda: bool(results), "an InstanceArray")

        result = results[0]
        self.assertEqual((result.header.stamp.sec, result.header.stamp.nanosec), (42, 7))
        self.assertEqual(result.header.frame_id, "camera")
        self.assertEqual([i.prompt_id for i in result.instances], ["center"])
        self.assertEqual((result.image_height, result.image_width), (height, width))
        self.assertGreater(result.instances[0].roi.width * result.instances[0].roi.height, 0)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_node_exits_cleanly(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
