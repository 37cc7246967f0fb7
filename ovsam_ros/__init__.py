"""Open-Vocabulary SAM for ROS 2.

Importing the package is cheap on purpose: no torch model and no rclpy are loaded here, so the
CLI, the tests and the ROS node can each import only what they use.
"""

__version__ = "0.1.0"

from pkgutil import extend_path

# A colcon build installs the generated interfaces (ovsam_ros.msg, ovsam_ros.srv) into its own copy of
# this package; with that workspace sourced, a source checkout imports them from there.
__path__ = extend_path(__path__, __name__)
