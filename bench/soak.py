"""Soak the real pipeline: thousands of frames through the node's Session with the real MobileSAM,
rotating text queries and vocabulary swaps; prints JSON with the resident set and the engine's cache
bytes every ``--every`` frames and their slope (MB per 1,000 frames). Memory should stay flat.

    python bench/soak.py --frames 2000 --json bench/results/soak-mobilesam-cpu.json

Naming uses a randomly initialised open_clip RN50 (no real CLIP weights here), which exercises the
same code and memory as real weights. One frame in ``--prompt-every`` gets a click (and so an
encode); a text query stands and changes every ``--query-every`` frames (each new phrase is a new
query set for the bounded cache); the vocabulary alternates every ``--vocab-every`` frames.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from ovsam_ros import assets
from ovsam_ros.bench import emit
from ovsam_ros.config import EverythingConfig, OvsamConfig, VocabConfig
from ovsam_ros.engine import EngineConfig
from ovsam_ros.model.feature_crop import build_feature_crop
from ovsam_ros.model.sam import build_mobile_sam
from ovsam_ros.pipeline import PromptProcessor
from ovsam_ros.predictor import Predictor
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import numpy_to_image
from ovsam_ros.ros.message_builders import make_header
from ovsam_ros.session import Session
from ovsam_ros.vocab.vocabulary import Vocabulary

VOCABULARIES = (["toy", "cup", "plate"], ["bear", "bottle", "book", "chair"])


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope_per_1000(frames: list[int], values: list[float]) -> float:
    """Least-squares growth per 1,000 frames, over the second half (after warm-up)."""
    half = len(frames) // 2
    x, y = np.asarray(frames[half:], float), np.asarray(values[half:], float)
    return float(np.polyfit(x, y, 1)[0] * 1000) if len(x) >= 2 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100, help="sample memory every N frames")
    parser.add_argument("--prompt-every", type=int, default=10)
    parser.add_argument("--query-every", type=int, default=50)
    parser.add_argument("--vocab-every", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    recognizer, text = build_feature_crop("RN50", random_init=True, input_size=224)
    model = build_mobile_sam(assets.mobile_sam_checkpoint(), recognizer=recognizer)
    model.text_tower = text
    processor = PromptProcessor(Predictor(model), EverythingConfig(points_per_side=4),
                                VocabConfig(text_threshold=0.0))
    processor.use_vocabulary(Vocabulary.from_names(VOCABULARIES[0], name="v0"), progress=False)
    config = OvsamConfig(engine=EngineConfig(encode_mode="on_demand", max_prompt_age_s=3600.0),
                         everything=processor.everything, vocab=processor.vocab_config)
    factory = RosbagsFactory()
    published = {"messages": 0}

    def publish(name: str, msg: object, received_ns: int | None) -> None:
        published["messages"] += 1

    session = Session(processor, config, factory, warn=lambda m: None, replay=True, publish=publish)
    rgb = cv2.cvtColor(cv2.imread(str(assets.bear_dataset().images()[0])), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (320, 428))
    click = factory.make("geometry_msgs/msg/Point", x=160.0, y=214.0)
    samples = []
    start, t0 = time.perf_counter(), 1_700_000_000.0
    load_before = os.getloadavg()
    for k in range(args.frames):
        stamp = t0 + k / 30
        frame = rgb if k % 2 else rgb[:, ::-1].copy()
        session.image(numpy_to_image(factory, frame, "rgb8", make_header(factory, stamp, "camera")))
        if k % args.query_every == 0:
            session.text(f"object {k // args.query_every}")
        if k % args.vocab_every == args.vocab_every - 1:
            index = (k // args.vocab_every + 1) % 2
            session.change_vocabulary(Vocabulary.from_names(VOCABULARIES[index], name=f"v{index}"))
        if k % args.prompt_every == 0:
            header = make_header(factory, stamp, "camera")
            session.points(factory.make("ovsam_ros/msg/PointPrompt", header=header, id=f"p{k}",
                                        points=[click], labels=[1]))
        session.engine.run_until_idle()
        if k % args.every == 0 or k == args.frames - 1:
            stats = session.engine.stats()
            samples.append({"frame": k, "rss_mb": round(resident_mb(), 1),
                            "cache_mb": round(stats["cache_bytes"] / 2**20, 2),
                            "query_sets": processor.cached_queries, "encodes": stats["frames_encoded"]})
            print(json.dumps(samples[-1]), flush=True)
    session.engine.finish()
    frames = [s["frame"] for s in samples]
    report = {
        "frames": args.frames, "encodes": session.engine.stats()["frames_encoded"],
        "messages_published": published["messages"], "wall_s": round(time.perf_counter() - start, 1),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rss_mb_first": samples[0]["rss_mb"], "rss_mb_last": samples[-1]["rss_mb"],
        "rss_slope_mb_per_1000_frames": round(slope_per_1000(frames, [s["rss_mb"] for s in samples]), 2),
        "cache_slope_mb_per_1000_frames": round(slope_per_1000(frames, [s["cache_mb"] for s in samples]), 3),
        "samples": samples,
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
