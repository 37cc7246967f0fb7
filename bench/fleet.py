"""Fleet throughput: the same bags labelled by ``ovsam-ros fleet label`` with 1 and then 2 model workers
on a local Ray, real MobileSAM, bags of the real bear photos with recorded detector boxes on every
frame (one encode per frame). Prints JSON: ``workers_1.frames_per_s``, ``workers_2.frames_per_s``
(frames over the run's wall time, worker start and model load included), ``speedup`` and the
``load_average`` before and after.

    python bench/fleet.py --bags 4 --frames 3 --json bench/results/fleet-cpu.json

On a CPU the workers share the machine's cores (``--num-cpus`` split between them, one torch thread
pool each), so the speedup shows what splitting cores between processes buys, not what GPUs buy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from rosbags.rosbag2 import StoragePlugin, Writer

from ovsam_ros import assets
from ovsam_ros.bag import ReplayOptions
from ovsam_ros.bench import emit
from ovsam_ros.config import EverythingConfig, ModelConfig, VocabConfig
from ovsam_ros.fleet import FleetJob, label_fleet
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import numpy_to_image
from ovsam_ros.ros.interfaces import typestore
from ovsam_ros.ros.message_builders import make_header

T0 = 1_700_000_000


def photos(width: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The bear photos at ``width`` pixels, with their ground-truth boxes (xyxy) scaled alike."""
    bear = assets.bear_dataset()
    data = json.loads(bear.annotations.read_text())
    out = []
    for image in data["images"]:
        rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / image["file_name"])), cv2.COLOR_BGR2RGB)
        scale = width / rgb.shape[1]
        small = cv2.resize(rgb, (width, round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        boxes = [np.array([x, y, x + w, y + h]) * scale for x, y, w, h in
                 (a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"])]
        out.append((small, boxes))
    return out


def write_bag(path: Path, frames: list[tuple[np.ndarray, list[np.ndarray]]], t0: float, storage: str) -> None:
    """Images 0.1 s apart, each with its detector boxes 10 ms later."""
    f = RosbagsFactory(typestore())
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        image_conn = writer.add_connection("/camera/image", "sensor_msgs/msg/Image", typestore=f.store)
        box_conn = writer.add_connection("/detector/boxes", "vision_msgs/msg/Detection2DArray",
                                         typestore=f.store)
        for k, (rgb, boxes) in enumerate(frames):
            stamp = t0 + 0.1 * k
            header = make_header(f, stamp, "camera")
            writer.write(image_conn, round(stamp * 1e9), f.serialize(numpy_to_image(f, rgb, "rgb8", header)))
            dets = [f.make("vision_msgs/msg/Detection2D", header=header, id=f"det_{i}", bbox=f.make(
                "vision_msgs/msg/BoundingBox2D", size_x=x1 - x0, size_y=y1 - y0, center=f.make(
                    "vision_msgs/msg/Pose2D", position=f.make("vision_msgs/msg/Point2D", x=(x0 + x1) / 2,
                                                              y=(y0 + y1) / 2))))
                    for i, (x0, y0, x1, y1) in enumerate(boxes)]
            msg = f.make("vision_msgs/msg/Detection2DArray", header=header, detections=dets)
            writer.write(box_conn, round((stamp + 0.01) * 1e9), f.serialize(msg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3, help="frames per bag")
    parser.add_argument("--width", type=int, default=320, help="image width in pixels")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    pictures = photos(args.width)
    job = FleetJob(ModelConfig(preset="mobilesam", device="cpu",
                               weights_dir=str(assets.mobile_sam_checkpoint().parent)),
                   VocabConfig(), EverythingConfig(), ReplayOptions())
    report: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                                "python": platform.python_version()},
                    "bags": args.bags, "frames_per_bag": args.frames, "width": args.width,
                    "num_cpus": args.num_cpus, "load_average": {"before": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for b in range(args.bags):
            frames = [pictures[(b + k) % len(pictures)] for k in range(args.frames)]
            write_bag(root / "in" / f"bag_{b}", frames, T0 + 10 * b, "mcap" if b % 2 else "sqlite3")
        for workers in (1, 2):
            started = time.perf_counter()
            run = label_fleet([root / "in"], root / f"out_{workers}", job, workers=workers,
                              num_cpus=args.num_cpus, progress=False)
            wall = time.perf_counter() - started
            manifest = run.manifest
            frames = manifest["last_run"]["frames"]
            report[f"workers_{workers}"] = {
                "frames": frames, "wall_s": round(wall, 2), "frames_per_s": round(frames / wall, 3),
                "per_worker_frames_per_s": {k: w["frames_per_s"] for k, w in manifest["workers"].items()},
                "failed": sorted(run.failed)}
    report["speedup"] = round(report["workers_2"]["frames_per_s"] / report["workers_1"]["frames_per_s"], 3)
    report["load_average"]["after"] = os.getloadavg()
    emit(report, args.json)


if __name__ == "__main__":
    main()
