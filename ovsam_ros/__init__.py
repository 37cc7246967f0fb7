"""Open-Vocabulary SAM for ROS 2.

Importing the package is cheap on purpose: no torch model and no rclpy are loaded here, so the
CLI, the tests and the ROS node can each import only what they use.
"""

__version__ = "0.1.0"
