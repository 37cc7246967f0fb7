"""The ROS package files, checked without ROS: package.xml (catkin_pkg), CMakeLists, launch, RViz, script."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import yaml
from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[1]
INTERFACES = sorted([*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv")])


def _referenced_packages() -> set[str]:
    """Packages whose types the msg/srv files use (``pkg/Type`` field types)."""
    packages = set()
    for path in INTERFACES:
        for line in path.read_text().splitlines():
            field = line.split("#", 1)[0].split()
            if field and "/" in field[0]:
                packages.add(field[0].split("/")[0])
    return packages - {"ovsam_ros"}


def test_package_xml_is_valid_and_declares_every_dependency():
    pkg = parse_package(ROOT / "package.xml")
    pkg.validate()
    assert pkg.name == "ovsam_ros" and pkg.package_format == 3 and pkg.licenses == ["Apache-2.0"]
    assert [e.content for e in pkg.exports if e.tagname == "build_type"] == ["ament_cmake"]
    assert [g.name for g in pkg.member_of_groups] == ["rosidl_interface_packages"]
    assert "rosidl_default_generators" in {d.name for d in pkg.buildtool_depends}
    run = {d.name for d in pkg.exec_depends}
    assert {"rclpy", "std_srvs", "visualization_msgs", "diagnostic_msgs", "cv_bridge",
            "tf2_ros", "tf2_geometry_msgs", "launch", "launch_ros", "rosidl_default_runtime",
            "lifecycle_msgs", "python3-numpy", "python3-opencv", "python3-yaml", "python3-tqdm",
            "python3-torch", "python3-torchvision"} <= run
    assert "rviz2" not in {d.name for d in pkg.exec_depends + pkg.build_depends}  # headless robots
    assert _referenced_packages() <= {d.name for d in pkg.build_depends} & run
    assert {"python3-pytest", "launch_testing", "launch_testing_ros"} <= {d.name for d in pkg.test_depends}
    assert pkg.version == _pyproject_version()


def _pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_cmakelists_generates_every_interface_and_installs_the_rest():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    generated = re.search(r"rosidl_generate_interfaces\((.*?)\)", cmake, re.S).group(1)
    assert sorted(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', generated)) == sorted(
        str(p.relative_to(ROOT)) for p in INTERFACES)
    deps = set(re.search(r"DEPENDENCIES([\w\s]+)", generated).group(1).split())
    assert deps == _referenced_packages()
    assert all(f"find_package({d} REQUIRED)" in cmake for d in deps)
    code = "\n".join(line.split("#", 1)[0] for line in cmake.splitlines())
    assert "ament_python_install_package" not in code  # clashes with rosidl on Humble/Jazzy
    assert "DESTINATION ${PYTHON_INSTALL_DIR}/${PROJECT_NAME}" in cmake
    assert "install(PROGRAMS scripts/ovsam_node" in cmake and "install(DIRECTORY launch config" in cmake
    assert cmake.rstrip().endswith("ament_package()")


def test_launcher_script():
    script = ROOT / "scripts" / "ovsam_node"
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/usr/bin/env python3")
    compile(script.read_text(), str(script), "exec")
    assert "from ovsam_ros.node import main" in script.read_text()


def test_launch_file_compiles_and_declares_its_arguments():
    path = ROOT / "launch" / "ovsam.launch.py"
    compile(path.read_text(), str(path), "exec")  # what py_compile checks, without writing a .pyc
    tree = ast.parse(path.read_text())
    arguments = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                     and getattr(node.targets[0], "id", "") == "ARGUMENTS")
    names = {key.value for key in arguments.keys}
    assert {"image", "camera_info", "depth", "model", "vocabulary", "device", "namespace", "params_file",
            "use_rviz", "autostart"} <= names
    text = path.read_text()
    assert "LifecycleNode" in text and "TRANSITION_CONFIGURE" in text and "TRANSITION_ACTIVATE" in text
    assert 'executable=NODE_NAME' in text and 'NODE_NAME = "ovsam_node"' in text


def test_rviz_config_shows_camera_overlay_and_markers():
    rviz = yaml.safe_load((ROOT / "config" / "ovsam.rviz").read_text())
    displays = {d["Name"]: d for d in rviz["Visualization Manager"]["Displays"]}
    topics = {f"{d['Class'].split('/')[-1]} {d['Topic']['Value']}" for d in displays.values() if "Topic" in d}
    assert {"Image /image", "Image /ovsam_node/overlay", "MarkerArray /ovsam_node/markers"} <= topics
    tools = {t["Class"]: t for t in rviz["Visualization Manager"]["Tools"]}
    assert tools["rviz_default_plugins/PublishPoint"]["Topic"]["Value"] == "/clicked_point"


def test_setup_py_is_a_shim_over_pyproject():
    """Tools that look for setup.py find one; the metadata lives in pyproject.toml only."""
    code = (ROOT / "setup.py").read_text()
    assert "setup()" in code and "name=" not in code
