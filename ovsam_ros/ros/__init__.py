"""ROS message conversions without ROS: images, masks, prompts, results and 3D geometry.

Everything here builds messages through a :class:`ovsam_ros.ros.factory.MessageFactory`, so the rclpy
node and the rosbags-based bag tool share one code path. Nothing here imports rclpy; only
``RclpyFactory`` does, lazily, when the node uses it.
"""
