"""``ovsam-ros fleet label`` on a real local Ray cluster, with the real MobileSAM on bags of the real bear
photos (MCAP and sqlite3): every output equals ``ovsam-ros bag`` on the same bag, a worker process killed
mid-bag is restarted and its bag replayed once, a garbage and a truncated bag fail alone with their
reasons, and a second run does no work."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ros_env import require
from rosbags.rosbag2 import Reader
from test_bag import T0, BagBuilder, gt  # noqa: F401 (gt: a fixture)

from ovsam_ros.bag import ReplayOptions, read_results
from ovsam_ros.cli import main
from ovsam_ros.config import EverythingConfig, ModelConfig, VocabConfig
from ovsam_ros.fleet import (
    CRASH_ENV,
    LOCAL_RAY,
    LOCK,
    MANIFEST,
    FleetJob,
    content_hash,
    find_bags,
    loopback_ray,
    output_lock,
    settings_hash,
)

loopback_ray()  # before Ray is imported: the test cluster binds 127.0.0.1 only
ray = require("ray", reason="needs Ray: pip install '.[fleet]'")

WIDTH = 320
GOOD = {"a_mcap": ("mcap", "1.jpeg"), "b_sqlite": ("sqlite3", "2.jpeg"), "c_mcap": ("mcap", "3.jpeg"),
        "d_sqlite": ("sqlite3", "2.jpeg")}
FRAMES = 3
CRASHED = "c_mcap"


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


@pytest.fixture(scope="module")
def cluster():
    """One new local Ray for the module (2 CPUs: two CPU workers of one thread each), whatever cluster
    this machine may run."""
    ray.init(address="local", num_cpus=2, log_to_driver=False, configure_logging=False, **LOCAL_RAY)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, gt) -> Path:  # noqa: F811 (the fixture imported above)
    """4 good bags (3 frames of a 320 px photo each; detector boxes on frame 0, a click on frame 1), a
    garbage file named like a bag, and a sqlite3 bag whose database is cut in half."""
    root = tmp_path_factory.mktemp("recordings")
    for k, (name, (storage, photo)) in enumerate(GOOD.items()):
        rgb, objects = gt[photo]
        scale = WIDTH / rgb.shape[1]
        small = cv2.resize(rgb, (WIDTH, round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        b = BagBuilder()
        stamps = [T0 + 10 * k + 0.1 * i for i in range(FRAMES)]
        for stamp in stamps:
            b.image(small, stamp)
        b.boxes(stamps[0], [box * scale for box, _ in objects])
        x0, y0, x1, y1 = objects[0][0] * scale
        b.points(stamps[1], [((x0 + x1) / 2, (y0 + y1) / 2)], id=f"click_{name}")
        b.write(root / name, storage)
    (root / "junk.mcap").write_bytes(b"this is not a bag" * 50)
    shutil.copytree(root / "b_sqlite", root / "truncated")
    (root / "truncated" / "b_sqlite.db3").rename(root / "truncated" / "truncated.db3")
    meta = root / "truncated" / "metadata.yaml"
    meta.write_text(meta.read_text().replace("b_sqlite.db3", "truncated.db3"))
    db = root / "truncated" / "truncated.db3"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    return root


def _model_flags(mobile_sam_path: Path) -> list[str]:
    return ["--model", "mobilesam", "--weights-dir", str(mobile_sam_path.parent), "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, recordings, mobile_sam_path) -> Path:
    """``ovsam-ros bag`` on each good bag, one torch thread like each fleet worker (same arithmetic)."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in GOOD:
            code, err = _cli("-q", "bag", str(recordings / name), str(out / name),
                             *_model_flags(mobile_sam_path))
            assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory, recordings, reference, mobile_sam_path,
              ) -> tuple[Path, int, str, Path]:
    """The fleet over the whole folder, two workers; the worker on CRASHED dies after its second frame.
    The folder also holds an output of `ovsam-ros bag`, which opens but which a worker refuses to
    replay (it has /ovsam/ topics already)."""
    shutil.copytree(reference / "a_mcap", recordings / "relabelled")
    out = tmp_path_factory.mktemp("fleet") / "labelled"
    marker = out.parent / "crashed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CRASH_ENV, f"{CRASHED}:2:{marker}")
        code, err = _cli("-q", "fleet", "label", str(recordings), str(out), "--workers", "2",
                         *_model_flags(mobile_sam_path))
    return out, code, err, marker


def _messages(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(path) as reader:
        for conn, ns, data in reader.messages():
            out.setdefault(conn.topic, []).append((ns, bytes(data)))
    return out


@pytest.mark.slow
def test_every_output_is_the_bag_replay(first_run, reference):
    """Message for message: every input copied, and the same results (stamps, prompts, labels, masks)
    at the same bag times as `ovsam-ros bag`; the killed worker's bag included, each frame once."""
    out, _, _, _ = first_run
    for name in GOOD:
        fleet, ref = _messages(out / name), _messages(reference / name)
        assert sorted(fleet) == sorted(ref)
        for topic in ref:
            assert [ns for ns, _ in fleet[topic]] == [ns for ns, _ in ref[topic]], (name, topic)
            if not topic.startswith("/ovsam/"):
                assert fleet[topic] == ref[topic]
        got, want = read_results(out / name), read_results(reference / name)
        assert len(got) == len(want)
        assert len({r.stamp for _, r in got}) == FRAMES  # boxes stand: every frame answered
        answers = [(r.stamp, i.prompt_id) for _, r in got for i in r.instances]
        assert len(answers) == len(set(answers))  # and no prompt twice on a frame
        for (ns_g, g), (ns_w, w) in zip(got, want, strict=True):
            assert ns_g == ns_w and g.stamp == w.stamp and g.frame_id == w.frame_id
            assert [(i.prompt_id, i.label) for i in g.instances] == [
                (i.prompt_id, i.label) for i in w.instances]
            for a, b in zip(g.instances, w.instances, strict=True):
                assert np.array_equal(a.mask, b.mask)
                assert a.mask_score == pytest.approx(b.mask_score, abs=1e-5)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_its_bag_done_once(first_run):
    out, _, _, marker = first_run
    assert marker.exists()  # the worker really exited mid-bag
    manifest = json.loads((out / MANIFEST).read_text())
    entry = manifest["bags"][CRASHED]
    assert entry["status"] == "done" and entry["frames"] == FRAMES and entry["encodes"] == FRAMES
    restarted = manifest["workers"][f"worker_{entry['worker']}"]
    assert len(restarted["pids"]) == 2  # a new process took over
    assert not (out / ".partial").exists()  # the killed attempt's half-written bag is gone
    assert sorted(p.name for p in out.iterdir()) == sorted([*GOOD, MANIFEST, "coco.json", LOCK])


@pytest.mark.slow
def test_bad_bags_fail_alone_with_their_reasons(first_run, recordings):
    out, code, err, _ = first_run
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "3 of 7 bag(s) failed" in err
    manifest = json.loads((out / MANIFEST).read_text())
    bags = manifest["bags"]
    assert bags["junk"]["status"] == "failed" and "cannot open bag" in bags["junk"]["reason"]
    assert bags["truncated"]["status"] == "failed" and bags["truncated"]["reason"]
    refused = bags["relabelled"]  # opened by the driver, refused in a worker
    assert refused["status"] == "failed" and "already has /ovsam/" in refused["reason"]
    assert "worker" in refused
    for name in GOOD:
        entry = bags[name]
        assert entry["status"] == "done" and entry["frames"] == FRAMES and entry["instances"] > 0
        assert entry["input_sha256"] == content_hash(recordings / name)
        assert set(entry["timings"]) >= {"wall_s", "encode", "decode"}
    assert sorted(manifest["last_run"]["processed"]) == sorted(GOOD)
    workers = manifest["workers"]
    assert sum(w["frames"] for w in workers.values()) == len(GOOD) * FRAMES
    assert all(w["frames_per_s"] > 0 for w in workers.values())


@pytest.mark.slow
def test_merged_coco_has_unique_ids_across_bags(first_run):
    out, _, _, _ = first_run
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == len(GOOD) * FRAMES
    assert len({i["id"] for i in coco["images"]}) == len(coco["images"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) > 0
    assert {i["file_name"].split("/", 1)[0] for i in coco["images"]} == set(GOOD)
    assert {a["image_id"] for a in coco["annotations"]} <= {i["id"] for i in coco["images"]}


@pytest.mark.slow
def test_second_run_does_no_work(first_run, recordings, mobile_sam_path):
    out, _, _, _ = first_run
    before = {name: (out / name).stat().st_mtime_ns for name in GOOD}
    code, err = _cli("-q", "fleet", "label", *(str(recordings / name) for name in GOOD), str(out),
                     "--workers", "2", *_model_flags(mobile_sam_path))
    assert code == 0, err
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["last_run"]["skipped"]) == sorted(GOOD)
    assert manifest["last_run"]["processed"] == [] and manifest["last_run"]["frames"] == 0
    assert manifest["workers"] == {}  # no worker was started
    assert {name: (out / name).stat().st_mtime_ns for name in GOOD} == before
    assert len(json.loads((out / "coco.json").read_text())["images"]) == len(GOOD) * FRAMES


def test_bags_are_found_in_folders_and_named_uniquely(tmp_path):
    for folder in ("x/run", "y/run"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "metadata.yaml").write_text("")
        (tmp_path / folder / "run_0.mcap").write_bytes(b"")
    (tmp_path / "y" / "loose.mcap").write_bytes(b"")
    (tmp_path / "out" / "done").mkdir(parents=True)
    (tmp_path / "out" / "done" / "metadata.yaml").write_text("")
    names = find_bags([tmp_path], tmp_path / "out")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in names.values()) == ["x/run", "y/loose.mcap",
                                                                                  "y/run"]
    assert "loose" in names and len({n for n in names if n.startswith("run-")}) == 2


def test_missing_input_is_one_line(tmp_path):
    code, err = _cli("fleet", "label", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert code == 1 and err.strip() == f"ovsam-ros fleet: error: input {tmp_path / 'nope'} does not exist"


def test_a_second_run_into_a_held_folder_is_refused_and_a_killed_holder_frees_it(recordings, tmp_path):
    """Another process holds the output folder (as a running `fleet label` does): the CLI refuses in one
    line naming it, before any work; once that process is killed, the folder is free again."""
    out = tmp_path / "out"
    out.mkdir()
    script = ("import sys; from pathlib import Path; from ovsam_ros.fleet import output_lock\n"
              f"with output_lock(Path({str(out)!r})):\n    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _cli("fleet", "label", str(recordings), str(out))
        assert code == 1 and err.count("\n") == 1
        assert err.startswith(f"ovsam-ros fleet: error: {out} is being labelled by another `ovsam-ros fleet "
                              f"label` (pid {holder.pid} on ")
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing started, nothing written
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel dropped the killed holder's lock
        assert (out / LOCK).read_text() == f"pid {os.getpid()} on {socket.gethostname()}"


def test_settings_hash_covers_what_shapes_the_output():
    def job(**replay: object) -> FleetJob:
        return FleetJob(ModelConfig(preset="mobilesam"), VocabConfig(), EverythingConfig(),
                        ReplayOptions(**replay))

    base = settings_hash(job().settings())
    assert settings_hash(job(progress=False, on_image=print).settings()) == base  # reporting only
    assert settings_hash(job(text="mug").settings()) != base
    assert settings_hash(job(track=True).settings()) != base
    other_model = FleetJob(ModelConfig(preset="sam-clip"), VocabConfig(), EverythingConfig(), ReplayOptions())
    assert settings_hash(other_model.settings()) != base


def test_without_ray_the_command_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    code, err = _cli("fleet", "label", str(tmp_path), str(tmp_path / "out"))
    assert code == 1
    assert err.strip() == "ovsam-ros fleet: error: Ray is not installed: pip install 'ovsam_ros[fleet]'"


def test_the_local_cluster_talks_over_loopback_only(cluster):
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
