"""Importing the package (or the engine, the CLI module, the config) loads neither rclpy nor a model, nor
Ray (only `fleet label` needs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["ovsam_ros", "ovsam_ros.cli", "ovsam_ros.config", "ovsam_ros.engine"])
def test_import_loads_no_rclpy_and_no_torch_model(module):
    code = (f"import sys, {module}; "
            "bad = [m for m in ('rclpy', 'ovsam_ros.msg', 'ovsam_ros.node', 'ovsam_ros.model.ovsam', 'ray') "
            "if m in sys.modules]; print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing {module} loaded {result.stdout.strip()}"


def test_console_script_help_runs_without_ros():
    result = subprocess.run([sys.executable, "-m", "ovsam_ros.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "segment" in result.stdout and "bag" in result.stdout
