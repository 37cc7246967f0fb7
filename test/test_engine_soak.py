"""Thousands of frames and prompts through the engine: memory and the cache must stop growing.

Most frames are skipped or answered from cache, so this stays fast; the stand-in processor makes
1 MiB of features per encoded frame so that a leaked frame would show in the resident set at once.
"""

from __future__ import annotations

import itertools
import os
import threading

import numpy as np
import pytest
import torch
from test_engine import T0, StampProcessor

from ovsam_ros.engine import Engine, EngineConfig
from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.prompts import Prompt
from ovsam_ros.results import FrameResult, Instance

HZ = 30.0
SIZE = (120, 160)  # 57.6 kB per frame
CONFIG = EngineConfig(cache_size=6, raw_buffer_size=4, encode_mode="auto", max_encode_rate_hz=3.0,
                      prompt_queue_size=16, sync_slop_s=0.01, max_prompt_age_s=0.5)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SamSizedProcessor(StampProcessor):
    """The stand-in with an extra 1 MiB feature (a quarter of SAM's embedding); it keeps no logs."""

    def encode(self, rgb: np.ndarray) -> ImageFeatures:
        features = super().encode(rgb)
        self.encoded.clear()
        features.extras["sam_sized"] = torch.zeros(1, 256, 32, 32)
        return features

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]:
        self.batches.clear()
        return super().answer(features, prompts)


def stream(engine: Engine, start: int, stop: int, after_each=None) -> None:
    """Frames at 30 Hz and a click every 3rd frame: mostly on the newest encoded frame (what a user
    sees in the overlay: a cache hit), sometimes on the newest frame (an encode) or on a stale stamp
    (rejected); the standing text query is switched on and off so auto mode flips policies."""
    for k in range(start, stop):
        engine.push_frame(np.full((*SIZE, 3), k % 256, np.uint8), T0 + k / HZ, "cam")
        if k % 3 == 0:
            shown = engine.frame()
            kind = k // 3 % 8
            stamp = 0.0 if kind == 0 or shown is None else T0 if kind == 1 else shown.stamp
            engine.push_prompt(Prompt.point([(5.0, 5.0)], id=f"c{k}", stamp=stamp))
        if k % 500 == 0:
            engine.set_standing("text", [Prompt.from_text("mug")] if k % 1000 == 0 else [])
        if after_each is not None:
            after_each(k)


def check_bounded(engine: Engine) -> None:
    s = engine.stats()
    assert s["cached_frames"] <= CONFIG.cache_size
    assert s["raw_frames_pending"] <= CONFIG.raw_buffer_size
    assert s["prompts_pending"] <= CONFIG.prompt_queue_size
    assert s["cache_bytes"] <= CONFIG.cache_size * (2**20 + 8 * 4)


@pytest.mark.parametrize("live", [False, True], ids=["replay", "live"])
def test_memory_and_cache_stop_growing(live: bool):
    results = [0]

    def count(result: FrameResult) -> None:
        results[0] += 1

    proc = SamSizedProcessor()
    engine = Engine(proc, CONFIG, on_result=count, replay=not live)
    if live:
        engine.start()

        def step(k: int) -> None:
            if k % 50 == 0:  # let the worker catch up now and then, so prompts also hit the cache
                assert engine.wait_idle(60)
    else:

        def step(k: int) -> None:
            engine.run_until_idle()
    rounds = []
    try:
        for r in range(5):  # 5000 frames; the first two rounds warm up the allocator
            stream(engine, 1 + 1000 * r, 1001 + 1000 * r, step)
            if live:
                assert engine.wait_idle(60)
            check_bounded(engine)
            rounds.append(resident_bytes())
    finally:
        assert engine.stop(10)
    assert not any(t.name == "ovsam-engine" for t in threading.enumerate())
    s = engine.stats()
    assert s["frames_received"] == 5000 and s["prompts_received"] == 5000 // 3
    assert s["frames_encoded"] < s["frames_received"] / 3
    assert s["cache_hits"] > 0 and results[0] > 0
    assert s["prompts_answered"] + s["prompts_rejected"] + s["prompts_pending"] == s["prompts_received"]
    grown = [(b - a) / 2**20 for a, b in itertools.pairwise(rounds)]
    print(f"resident set growth per 1000 frames (MiB): {grown}")
    # One leaked image per frame would add 55 MiB per round, one leaked encoding 1 MiB per encode.
    assert sum(grown[1:]) < 24, f"resident set still growing after warm-up: {grown} MiB per round"
