"""Tracking quality and cost on the sequences of :mod:`ovsam_ros.tracking.sequences` (real MobileSAM,
real photo, known motion), run through the node's ROS-free core (a Session in replay, tracking on)
and scored with motmetrics against the moved ground truth.

Prints JSON (stable keys): per sequence ``frames``, ``mota``, ``idf1``, ``num_switches``,
``num_false_positives``, ``num_misses``, ``mostly_tracked``, ``num_unique_objects``, ``mean_iou``
(tracked mask against its toy, over the matched frames), ``encodes``, ``wall_s`` and ``ms_per_frame``;
and ``load_average`` before and after. ``python bench/tracking.py --json bench/results/tracking-cpu.json``

``--clip-model ARCH --clip-weights FILE`` names the masks with that open_clip model (a one-class
vocabulary, "toy"), so the re-prompt checks also use the recognizer's region embedding and the class
distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ovsam_ros import assets
from ovsam_ros.bench import emit
from ovsam_ros.config import ModelConfig, OvsamConfig, TrackingConfig, VocabConfig
from ovsam_ros.engine import EngineConfig
from ovsam_ros.model.presets import build_model
from ovsam_ros.pipeline import PromptProcessor, build_processor
from ovsam_ros.predictor import Predictor
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import numpy_to_image
from ovsam_ros.ros.message_builders import frame_result_from_msg, make_header
from ovsam_ros.session import Session
from ovsam_ros.tracking import sequences
from ovsam_ros.tracking.metrics import mot_summary


def _detections(factory: RosbagsFactory, header: object, boxes: list[np.ndarray]) -> object:
    dets = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        centre = factory.make("vision_msgs/msg/Pose2D", position=factory.make(
            "vision_msgs/msg/Point2D", x=float(x0 + x1) / 2, y=float(y0 + y1) / 2))
        bbox = factory.make("vision_msgs/msg/BoundingBox2D", center=centre, size_x=float(x1 - x0),
                            size_y=float(y1 - y0))
        dets.append(factory.make("vision_msgs/msg/Detection2D", header=header, bbox=bbox, id=f"det_{i}"))
    return factory.make("vision_msgs/msg/Detection2DArray", header=header, detections=dets)


def run_sequence(processor: PromptProcessor, seq: sequences.TrackingSequence) -> dict:
    """One sequence through a fresh Session (as ``ovsam-ros bag --track`` replays it)."""
    factory = RosbagsFactory()
    results = []

    def publish(name: str, msg: object, received_ns: int | None) -> None:
        if name == "instances":
            results.append(frame_result_from_msg(msg))

    config = OvsamConfig(engine=EngineConfig(encode_mode="auto", max_encode_rate_hz=0.0),
                         tracking=TrackingConfig(enabled=True))
    session = Session(processor, config, factory, publish=publish, warn=lambda m: None, replay=True,
                      wants=lambda name: name == "instances")
    started = time.perf_counter()
    for t, image in enumerate(seq.frames):
        header = make_header(factory, seq.stamp(t), "camera")
        session.image(numpy_to_image(factory, image, "rgb8", header))
        for prompt_id, (x, y) in seq.clicks.get(t, []):
            session.points(factory.make("ovsam_ros/msg/PointPrompt", header=header, id=prompt_id, labels=[1],
                                        points=[factory.make("geometry_msgs/msg/Point", x=x, y=y)]))
        if seq.boxes[t]:
            session.boxes(_detections(factory, header, seq.boxes[t]))
        session.engine.finish()
    wall = time.perf_counter() - started
    tracked = seq.tracked(results)
    summary = mot_summary(seq.truth, tracked)
    ious = []
    for frame, truth in zip(tracked, seq.truth, strict=True):
        for mask in truth.values():
            best = max(((m & mask).sum() / max((m | mask).sum(), 1) for m in frame.values()), default=0.0)
            if best >= 0.5:
                ious.append(float(best))
    return {"frames": len(seq.frames), **summary, "mean_iou": float(np.mean(ious)) if ious else 0.0,
            "encodes": session.engine.stats()["frames_encoded"], "wall_s": round(wall, 2),
            "ms_per_frame": round(1000 * wall / len(seq.frames), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--clip-model", default="", help="an open_clip architecture that names the masks")
    parser.add_argument("--clip-weights", type=Path, help="its checkpoint file")
    args = parser.parse_args()
    load_before = os.getloadavg()
    sam = assets.mobile_sam_checkpoint()
    if args.clip_model:
        with tempfile.TemporaryDirectory() as tmp:
            names = Path(tmp) / "toy.txt"
            names.write_text("toy\n")
            processor = build_processor(
                ModelConfig(preset="mobilesam", weights_dir=str(sam.parent), clip_model=args.clip_model,
                            clip_weights=str(args.clip_weights or ""), device="cpu"),
                VocabConfig(vocabulary=str(names)), progress=False)
    else:
        processor = PromptProcessor(Predictor(build_model("mobilesam", files={"sam": sam})))
    report = {"model": "mobilesam", "clip_model": args.clip_model, "sequences": {}}
    for seq in sequences.all_sequences():
        report["sequences"][seq.name] = run_sequence(processor, seq)
        print(json.dumps({seq.name: report["sequences"][seq.name]}), flush=True)
    report["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    emit(report, args.json)


if __name__ == "__main__":
    main()
