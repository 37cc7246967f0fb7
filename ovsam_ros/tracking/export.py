"""Tracks as files that tracking tools read: MOT Challenge text and a COCO video-style JSON.

- MOT (``gt.txt`` / results layout of MOTChallenge, also what ``motmetrics`` loads with
  ``fmt="mot15-2D"``): one line per tracked instance and frame,
  ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1``, frames numbered from 1.
- COCO video (the YouTube-VIS layout): ``videos`` (one, with its frame stamps), ``annotations`` with
  one entry per track holding per-frame ``segmentations`` (COCO RLE, null where the track is not
  seen), ``bboxes`` and ``areas``, its smoothed ``category_id`` and its ``score``; ``categories``.

Only tracked instances (``track_id`` > 0) are written. Frames are the source frames in stamp order;
results of one frame (a click answered beside the standing prompts) are merged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ovsam_ros.coco_export import encode_mask
from ovsam_ros.results import FrameResult, Instance


class TrackExportError(ValueError):
    """Results that carry no tracks (tracking was off); the message says what to do."""


def frames_of(results: Iterable[FrameResult]) -> list[tuple[float, tuple[int, int], list[Instance]]]:
    """(stamp, image size, tracked instances) per source frame, in stamp order; a track seen twice on
    one frame keeps its first instance."""
    by_stamp: dict[float, tuple[tuple[int, int], dict[int, Instance]]] = {}
    for result in results:
        _, seen = by_stamp.setdefault(result.stamp, (tuple(result.image_size), {}))
        for inst in result.instances:
            if inst.track_id > 0:
                seen.setdefault(inst.track_id, inst)
    frames = [(stamp, size, list(seen.values())) for stamp, (size, seen) in sorted(by_stamp.items())]
    if not any(instances for _, _, instances in frames):
        raise TrackExportError("no tracked instances in these results: replay with --track "
                               "(tracking.enabled)")
    return frames


def mot_lines(results: Iterable[FrameResult]) -> list[str]:
    """MOTChallenge lines; ``conf`` is the mask score."""
    lines = []
    for number, (_, _, instances) in enumerate(frames_of(results), start=1):
        for inst in sorted(instances, key=lambda i: i.track_id):
            x0, y0, x1, y1 = (float(v) for v in inst.bbox)
            lines.append(f"{number},{inst.track_id},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},"
                         f"{inst.mask_score:.4f},-1,-1,-1")
    return lines


def coco_video(results: Iterable[FrameResult], names: list[str] | None = None, video: str = "stream") -> dict:
    """The YouTube-VIS-style dict; ``names`` (the vocabulary's display names) become the categories,
    category id = class index + 1 (0 = unnamed)."""
    frames = frames_of(results)
    height, width = frames[0][1]
    tracks: dict[int, dict] = {}
    for k, (_, _, instances) in enumerate(frames):
        for inst in instances:
            entry = tracks.setdefault(inst.track_id, {
                "id": inst.track_id, "video_id": 1, "iscrowd": 0, "segmentations": [None] * len(frames),
                "bboxes": [None] * len(frames), "areas": [None] * len(frames), "_labels": Counter(),
                "_scores": []})
            rle = encode_mask(inst.mask.astype(bool))
            x0, y0, x1, y1 = (float(v) for v in inst.bbox)
            entry["segmentations"][k] = rle
            entry["bboxes"][k] = [x0, y0, x1 - x0, y1 - y0]
            entry["areas"][k] = int(inst.mask.sum())
            entry["_labels"][inst.class_index] += 1
            entry["_scores"].append(float(inst.score))
    annotations = []
    for track_id in sorted(tracks):
        entry = tracks[track_id]
        labels, scores = entry.pop("_labels"), entry.pop("_scores")
        entry["category_id"] = labels.most_common(1)[0][0] + 1
        entry["score"] = sum(scores) / len(scores)
        entry["length"] = sum(1 for s in entry["segmentations"] if s is not None)
        annotations.append(entry)
    categories = [{"id": 0, "name": "unknown"}]
    categories += [{"id": i + 1, "name": n} for i, n in enumerate(names or [])]
    return {"info": {"description": "ovsam_ros tracks"},
            "videos": [{"id": 1, "name": video, "width": int(width), "height": int(height),
                        "length": len(frames), "stamps": [stamp for stamp, _, _ in frames]}],
            "categories": categories, "annotations": annotations}


def write_mot(path: str | Path, results: Iterable[FrameResult]) -> int:
    """Write the MOT file; returns the number of lines."""
    lines = mot_lines(results)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(line + "\n" for line in lines))
    return len(lines)


def write_coco_video(path: str | Path, results: Iterable[FrameResult], names: list[str] | None = None) -> int:
    """Write the COCO video JSON; returns the number of tracks."""
    data = coco_video(results, names)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data))
    return len(data["annotations"])
