"""Importing ROS 2 (and the fleet's Ray) in tests: skipped where it is not installed, a failure where
it must be.

``.ci/run`` sets ``OVSAM_ROS_REQUIRE_ROS=1`` after installing ROS 2, Ray (the ``fleet`` extra) and
building this package, so in CI a node or fleet test can never pass by skipping; on a machine without
them those tests skip cleanly.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRED = os.environ.get("OVSAM_ROS_REQUIRE_ROS") == "1"


def require(module: str, reason: str) -> ModuleType:
    """``pytest.importorskip(module)``, or a plain import (an ImportError fails) where ROS is required."""
    if REQUIRED:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)
