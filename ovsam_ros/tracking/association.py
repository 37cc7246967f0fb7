"""Standing outputs to tracks: a cost from mask IoU and appearance, solved by Hungarian assignment
(scipy's ``linear_sum_assignment``), with gating so an instance far from every track starts a new one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

GATED = 1e6
"""Cost of a pair that may not be matched (below the IoU gate)."""


@dataclass(frozen=True)
class Assignment:
    """Matched (track row, instance column) pairs and the rows and columns left over."""

    matches: list[tuple[int, int]]
    unmatched_tracks: list[int]
    unmatched_instances: list[int]


def cost_matrix(iou: np.ndarray, similarity: np.ndarray, appearance_weight: float, min_iou: float
                ) -> np.ndarray:
    """``(1 - w) * (1 - IoU) + w * (1 - similarity)``; pairs under ``min_iou`` are gated out. A NaN
    similarity (no appearance for that pair) counts as neutral: the pair's cost is its IoU term alone."""
    sim = np.where(np.isnan(similarity), iou, similarity)
    cost = (1.0 - appearance_weight) * (1.0 - iou) + appearance_weight * (1.0 - sim)
    return np.where(iou >= max(min_iou, 1e-9), cost, GATED)


def associate(cost: np.ndarray) -> Assignment:
    """Minimum-cost one-to-one matching of rows (tracks) to columns (instances); gated pairs never
    match."""
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return Assignment([], list(range(rows)), list(range(cols)))
    r, c = linear_sum_assignment(cost)
    matches = [(int(i), int(j)) for i, j in zip(r, c, strict=True) if cost[i, j] < GATED]
    matched_rows = {i for i, _ in matches}
    matched_cols = {j for _, j in matches}
    return Assignment(matches, [i for i in range(rows) if i not in matched_rows],
                      [j for j in range(cols) if j not in matched_cols])
