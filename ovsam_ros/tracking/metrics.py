"""CLEAR-MOT and identity scores of tracked masks against ground truth, by ``motmetrics``.

The distance is 1 - mask IoU, and a pair under ``min_iou`` cannot match (NaN), as MOTChallenge does
with boxes. Deliberately not ``motmetrics.distances.iou_matrix``: it takes boxes only (and 1.4.0
calls ``np.asfarray``, gone in NumPy 2). ``motmetrics`` is an optional dependency (the ``test``
extra), imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ovsam_ros.tracking.regions import mask_iou_matrix

METRICS = ("mota", "idf1", "num_switches", "num_false_positives", "num_misses", "mostly_tracked",
           "num_unique_objects")


def mot_summary(truth: Sequence[dict[int, np.ndarray]], tracked: Sequence[dict[int, np.ndarray]],
                min_iou: float = 0.5) -> dict[str, float]:
    """Per frame, {object id: mask} of the ground truth and of the tracker; MOTA, IDF1, id switches,
    false positives, misses, mostly tracked and the number of objects, by ``motmetrics``."""
    import motmetrics as mm

    if len(truth) != len(tracked):
        raise ValueError(f"{len(truth)} ground-truth frames but {len(tracked)} tracked frames")
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(truth, tracked, strict=True):
        iou = mask_iou_matrix(list(gt.values()), list(hyp.values()))
        acc.update(list(gt), list(hyp), np.where(iou >= min_iou, 1.0 - iou, np.nan))
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS))
    return {name: float(summary[name].iloc[0]) for name in METRICS}
