"""Instance tracks across frames: stable ids for clicks, boxes, text queries and everything mode.

ROS-free; :class:`~ovsam_ros.session.Session` runs a :class:`Tracker` on the engine's worker for the
node and ``ovsam-ros bag --track`` alike.
"""

from ovsam_ros.tracking.association import Assignment, associate, cost_matrix
from ovsam_ros.tracking.regions import colour_histogram, histogram_similarity, mask_iou_matrix, shift_mask
from ovsam_ros.tracking.tracker import REPROMPT_PREFIX, Track, Tracker, TrackUpdate

__all__ = ["REPROMPT_PREFIX", "Assignment", "Track", "TrackUpdate", "Tracker", "associate",
           "colour_histogram", "cost_matrix", "histogram_similarity", "mask_iou_matrix", "shift_mask"]
