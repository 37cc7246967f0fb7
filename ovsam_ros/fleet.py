"""Label a fleet's recordings: ``ovsam-ros bag`` over many bags on a Ray cluster, resumable, exactly once.

Why it is built this way:

- **Work is one bag** (a shard). A replay is stateful (standing detector boxes, text queries and tracks
  carry from frame to frame), so cutting a bag into time windows would change what later frames answer;
  per-bag shards give each bag exactly the output ``ovsam-ros bag`` gives it. Bags are handed out
  largest first, one at a time per worker, so a long bag does not leave the other workers idle at the end.
- **One model per worker**: a :class:`LabelWorker` actor (one per GPU, or ``workers`` on CPUs) builds its
  prompt processor once, from the settings the CLI builds it from
  (:func:`ovsam_ros.pipeline.build_processor`), and replays every bag it is given through
  :func:`ovsam_ros.bag.replay_bag`, the single-bag path itself.
- **Nothing half-written is ever taken as done**: a bag is written under ``OUT_DIR/.partial/`` and
  renamed into place (``os.rename``, atomic on one filesystem) only when complete; the manifest marks it
  done only after that, from the driver. A worker killed mid-bag is restarted by Ray (``max_restarts``)
  and the bag replayed again from its start (``max_task_retries``), so each frame is in the output once.
- **Resumable**: the manifest keys each bag by the sha256 of its bytes and of the settings that shape
  the output (model, vocabulary, prompts, topics, engine); a re-run skips the bags done under the same
  key and starts no worker when nothing is left.
- **A bad bag fails alone**: a bag that cannot be opened is failed before any worker starts, one that
  breaks during its replay fails in its worker; either way with its reason in the manifest while the
  others finish.

Ray is imported only here, inside :func:`label_fleet` and the worker, so the rest of the package does
not need it. Dependencies point inwards: fleet -> bag (-> session -> engine) and pipeline.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsam_ros.bag import BagError, ReplayOptions, count_images, frame_images, replay_bag
from ovsam_ros.config import EverythingConfig, ModelConfig, VocabConfig

MANIFEST = "manifest.json"
COCO = "coco.json"
PARTIAL = ".partial"
"""Folder in OUT_DIR where bags are written before they are renamed into place."""
LOCK = ".lock"
"""File in OUT_DIR that a run holds locked (see :func:`output_lock`)."""
BAG_SUFFIXES = (".mcap", ".db3")
LOCAL_RAY = {"include_dashboard": False}
"""How a local Ray starts (see also :func:`loopback_ray`)."""

CRASH_ENV = "OVSAM_ROS_FLEET_CRASH"
"""Fault injection for the tests: ``NAME:IMAGES:MARKER`` makes the worker replaying bag NAME exit its
process (``os._exit``) after IMAGES image messages, once: it first creates the file MARKER, and does
nothing while MARKER exists. The driver hands it to its workers."""


def loopback_ray() -> None:
    """Make a local Ray started from this process talk over loopback only. Ray's own switch, read when
    Ray is imported and named for the desktop systems where loopback is its default; on Linux a local
    Ray otherwise binds the machine's network address. Joining a cluster (``--address``) needs the
    network, so only a local start sets it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


class FleetError(ValueError):
    """Inputs or an output folder the fleet cannot work with; the message says what is wrong."""


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold OUT_DIR for this run alone: a second run into it would delete the first's staging folder and
    both would rewrite the manifest. An advisory ``flock`` that the kernel drops when its process ends,
    so a killed run leaves no stale lock; the file names the holder for the refusal."""
    with open(out / LOCK, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FleetError(f"{out} is being labelled by another `ovsam-ros fleet label` ({holder}); "
                             "wait for it to end or choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class FleetJob:
    """What every bag is labelled with: the model and its vocabulary (as the CLI builds them) and the
    replay options of ``ovsam-ros bag``."""

    model: ModelConfig
    vocab: VocabConfig
    everything: EverythingConfig
    replay: ReplayOptions = field(default_factory=ReplayOptions)

    def settings(self) -> dict:
        """The settings that shape the outputs (not progress reporting), as JSON-ready data."""
        replay = {f.name: getattr(self.replay, f.name) for f in dataclasses.fields(self.replay)
                  if f.name not in ("progress", "on_image")}
        data = {"model": self.model, "vocab": self.vocab, "everything": self.everything, "replay": replay}
        return json.loads(json.dumps(data, default=_plain, sort_keys=True))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Shard:
    """One input bag: its name in OUT_DIR, its path and the image messages to label."""

    name: str
    path: Path
    frames: int


# ---------------------------------------------------------------------------------------------- inputs


def find_bags(inputs: Sequence[str | Path], out_dir: Path) -> dict[str, Path]:
    """Output name -> bag, for each bag given or found under a given folder: a folder with a
    ``metadata.yaml``, or a lone ``.mcap`` / ``.db3`` file. Nothing under ``out_dir`` is an input. Names
    are the bag's folder name (or file stem); bags of the same name get their path's hash appended."""
    out = out_dir.resolve()
    found: list[Path] = []
    for given in map(Path, inputs):
        if not given.exists():
            raise FleetError(f"input {given} does not exist")
        found.extend(_bags_under(given) if given.is_dir() and not (given / "metadata.yaml").exists()
                     else [given])
    bags = sorted({p.resolve() for p in found if out != p.resolve() and out not in p.resolve().parents})
    if not bags:
        raise FleetError(f"no rosbag2 bag (a folder with metadata.yaml, or a {' / '.join(BAG_SUFFIXES)} "
                         f"file) in {', '.join(map(str, inputs))}")
    stems = [p.stem if p.is_file() else p.name for p in bags]
    names = {}
    for stem, path in zip(stems, bags, strict=True):
        unique = stems.count(stem) == 1 and not stem.startswith(".") and stem not in (MANIFEST, COCO)
        names[stem if unique else f"{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"] = path
    return names


def _bags_under(folder: Path) -> list[Path]:
    bags: list[Path] = []
    for root, dirs, files in os.walk(folder):
        if "metadata.yaml" in files:
            bags.append(Path(root))
            dirs.clear()  # a bag's own files are not bags
            continue
        dirs.sort()
        bags.extend(Path(root) / f for f in files if f.endswith(BAG_SUFFIXES))
    return bags


def content_hash(path: Path) -> str:
    """sha256 of a bag's bytes: its file, or every file of its folder with their relative paths."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- worker


class LabelWorker:
    """A Ray actor: one model, loaded once, replaying the bags it is given into OUT_DIR."""

    def __init__(self, index: int, job: FleetJob, out_dir: str, board: str, threads: int) -> None:
        import ray
        import torch

        from ovsam_ros.pipeline import build_processor, require_names

        if threads > 0:
            torch.set_num_threads(threads)
        # The board by name, not by handle: an actor whose arguments hold handles may not restart.
        self.index, self.job, self.out_dir = index, job, Path(out_dir)
        self.board = ray.get_actor(board)
        self.processor: Any = None
        self.error = ""
        started = time.perf_counter()
        try:
            processor = build_processor(job.model, job.vocab, job.everything, progress=False)
            if job.replay.text.strip():
                require_names(processor, job.model.preset)
            self.processor = processor
        except Exception as exc:  # every bag given to this worker then fails with this reason
            self.error = f"cannot build the model: {type(exc).__name__}: {exc}"
        self.load_s = time.perf_counter() - started

    def label(self, shard: Shard) -> dict:
        """Replay one bag; returns its record for the manifest (status done, or failed with the reason)."""
        record: dict[str, Any] = {"worker": self.index, "pid": os.getpid(), "load_s": round(self.load_s, 3)}
        if self.processor is None:
            return {**record, "status": "failed", "reason": self.error}
        final = self.out_dir / shard.name
        staging = self.out_dir / PARTIAL / f"{shard.name}.{uuid.uuid4().hex[:12]}"
        if final.exists():  # a complete bag renamed by an attempt killed before it could report: redo it
            shutil.rmtree(final)
        crash = _crash_hook(shard.name)
        options = dataclasses.replace(self.job.replay, progress=False,
                                      on_image=lambda n: self._image(shard.name, n, crash))
        started = time.perf_counter()
        try:
            staging.mkdir(parents=True)
            stats = replay_bag(shard.path, staging / shard.name, self.processor, options)
            os.rename(staging / shard.name, final)
        except Exception as exc:  # a bad bag fails alone, with its reason
            return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                    "seconds": round(time.perf_counter() - started, 3)}
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        keep = ("storage", "topics", "messages", "frames", "bad_frames", "encodes", "prompts", "results",
                "instances", "tracks", "warnings", "first_warnings", "timings")
        return {**record, **{key: stats[key] for key in keep}, "status": "done", "output": str(final),
                "seconds": round(time.perf_counter() - started, 3)}

    def _image(self, name: str, count: int, crash: int | None) -> None:
        self.board.set.remote(name, count)
        if crash is not None and count >= crash:
            marker = Path(os.environ[CRASH_ENV].split(":", 2)[2])
            if not marker.exists():
                marker.touch()
                os._exit(1)


def _crash_hook(name: str) -> int | None:
    """Images after which :data:`CRASH_ENV` asks the worker replaying ``name`` to die, or None."""
    spec = os.environ.get(CRASH_ENV, "")
    parts = spec.split(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[0] == name else None


class ProgressBoard:
    """A Ray actor: image messages read so far per bag, the latest attempt's (a retried bag restarts)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def set(self, name: str, count: int) -> None:
        self.counts[name] = count

    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------------------------------------- driver


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    if not path.exists():
        return {"version": 1, "bags": {}}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("bags"), dict):
            raise ValueError("no 'bags' object")
    except (OSError, ValueError) as exc:
        raise FleetError(f"{path} is not a manifest of `ovsam-ros fleet label` ({exc}); move it away to "
                         "start over") from exc
    return manifest


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class FleetRun:
    """What one :func:`label_fleet` call did (the manifest holds the same, and every earlier run's bags)."""

    manifest: dict
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    coco: Path | None = None


def label_fleet(inputs: Sequence[str | Path], out_dir: str | Path, job: FleetJob, workers: int | None = None,
                address: str | None = None, num_cpus: int | None = None, retries: int = 2,
                progress: bool = True) -> FleetRun:
    """Label every bag of ``inputs`` (bags, or folders searched for bags) into ``out_dir``: one output bag
    each, ``manifest.json`` and a merged ``coco.json``. Bags done under the same content and settings hash
    are skipped. ``address`` joins a Ray cluster (``"auto"``: the running one); otherwise a Ray already
    initialised in this process is used, or a local one started with ``num_cpus``. ``workers``: model
    actors (default: one per GPU, else one); a killed worker is restarted and its bag retried ``retries``
    times. A second run into ``out_dir`` is refused while this one holds it (:func:`output_lock`)."""
    out = Path(out_dir)
    bags = find_bags(inputs, out)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _label(bags, out, job, workers, address, num_cpus, retries, progress)


def _label(bags: dict[str, Path], out: Path, job: FleetJob, workers: int | None, address: str | None,
           num_cpus: int | None, retries: int, progress: bool) -> FleetRun:
    manifest = read_manifest(out)
    settings = job.settings()
    key = settings_hash(settings)
    manifest.update(version=1, settings=settings, settings_sha256=key)
    run = FleetRun(manifest)
    todo: list[Shard] = []
    for name, path in bags.items():
        digest = content_hash(path)
        entry = manifest["bags"].get(name, {})
        if (entry.get("status") == "done" and entry.get("input_sha256") == digest
                and entry.get("settings_sha256") == key and (out / name).exists()):
            run.skipped.append(name)
            continue
        base = {"input": str(path), "input_sha256": digest, "settings_sha256": key}
        try:
            todo.append(Shard(name, path, count_images(path, job.replay.topics)))
            manifest["bags"][name] = {**base, "status": "pending"}
        except BagError as exc:
            manifest["bags"][name] = {**base, "status": "failed", "reason": str(exc)}
            run.failed[name] = str(exc)
        shutil.rmtree(out / name, ignore_errors=True)  # stale: not done under this hash
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    started = time.perf_counter()
    worker_stats: dict[str, dict] = {}
    if todo:
        _run_on_ray(todo, out, job, manifest, run, worker_stats, workers, address, num_cpus, retries,
                    progress)
        shutil.rmtree(out / PARTIAL, ignore_errors=True)  # what killed workers left
    wall = time.perf_counter() - started
    frames = sum(manifest["bags"][n].get("frames", 0) for n in run.processed)
    manifest["workers"] = worker_stats
    manifest["last_run"] = {"processed": run.processed, "skipped": run.skipped, "failed": sorted(run.failed),
                            "frames": frames, "wall_s": round(wall, 3),
                            "frames_per_s": round(frames / wall, 3) if frames else 0.0}
    done = [n for n in sorted(bags) if manifest["bags"].get(n, {}).get("status") == "done"]
    run.coco = export_coco(out, done)
    manifest["coco"] = run.coco.name if run.coco is not None else None
    write_atomically(out / MANIFEST, json.dumps(manifest, indent=1))
    return run


def _run_on_ray(todo: list[Shard], out: Path, job: FleetJob, manifest: dict, run: FleetRun,
                worker_stats: dict[str, dict], workers: int | None, address: str | None, num_cpus: int | None,
                retries: int, progress: bool) -> None:
    """Start the workers, hand out the bags largest first and record each result as it comes."""
    if not address:
        loopback_ray()
    import ray
    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        local = {} if address else {"num_cpus": num_cpus, **LOCAL_RAY}
        ray.init(address=address or "local", log_to_driver=False, configure_logging=False, **local)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if job.model.device != "cpu" else 0
        count = workers or max(gpus, 1)
        count = min(count, len(todo))
        options: dict[str, Any] = {"max_restarts": retries, "max_task_retries": retries}
        if os.environ.get(CRASH_ENV):
            options["runtime_env"] = {"env_vars": {CRASH_ENV: os.environ[CRASH_ENV]}}
        model = job.model
        if gpus:
            options["num_gpus"] = gpus / count if workers else 1
            threads = 0
        else:  # the cores shared out, but no more than one machine has (an actor runs on one)
            largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
            threads = max(1, min(int(resources.get("CPU", 1)) // count, int(largest)))
            options["num_cpus"] = threads
            if model.device == "auto":
                model = dataclasses.replace(model, device="cpu")
        board_name = f"ovsam-fleet-progress-{uuid.uuid4().hex[:12]}"
        board = ray.remote(ProgressBoard).options(num_cpus=0, name=board_name).remote()
        actor = ray.remote(LabelWorker).options(**options)
        job = dataclasses.replace(job, model=model)
        pool = [actor.remote(i, job, str(out), board_name, threads) for i in range(count)]
        queue = sorted(todo, key=lambda s: -s.frames)
        running: dict[Any, tuple[int, Shard]] = {}
        idle = list(range(count))
        with tqdm(total=sum(s.frames for s in todo), unit="frame", desc="fleet", disable=not progress) as bar:
            while queue or running:
                while queue and idle:
                    index, shard = idle.pop(0), queue.pop(0)
                    running[pool[index].label.remote(shard)] = (index, shard)
                if not running:  # every worker is gone
                    for shard in queue:
                        _record(manifest, run, shard, {"status": "failed", "reason": "every worker died"})
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                bar.update(ray.get(board.total.remote()) - bar.n)
                for ref in ready:
                    index, shard = running.pop(ref)
                    try:
                        record = ray.get(ref)
                        idle.append(index)
                    except ray.exceptions.RayActorError as exc:  # restarts and retries used up: drop it
                        record = {"worker": index, "status": "failed",
                                  "reason": f"its worker died {retries + 1} time(s): {_first_line(exc)}"}
                    except ray.exceptions.RayError as exc:
                        idle.append(index)
                        record = {"worker": index, "status": "failed", "reason": _first_line(exc)}
                    _record(manifest, run, shard, record)
                    _add_worker(worker_stats, record)
                    write_atomically(out / MANIFEST, json.dumps(manifest, indent=1))
    finally:
        if started_here:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _record(manifest: dict, run: FleetRun, shard: Shard, record: dict) -> None:
    entry = manifest["bags"][shard.name]
    entry.update(record, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if record["status"] == "done":
        entry.pop("reason", None)
        run.processed.append(shard.name)
    else:
        run.failed[shard.name] = record["reason"]


def _add_worker(stats: dict[str, dict], record: dict) -> None:
    """Per-worker throughput of this run: frames over the seconds spent replaying them."""
    worker = stats.setdefault(f"worker_{record['worker']}", {"bags": 0, "failed": 0, "frames": 0,
                                                               "busy_s": 0.0, "pids": []})
    worker["bags" if record["status"] == "done" else "failed"] += 1
    worker["frames"] += record.get("frames", 0)
    worker["busy_s"] = round(worker["busy_s"] + record.get("seconds", 0.0), 3)
    worker["frames_per_s"] = round(worker["frames"] / worker["busy_s"], 3) if worker["busy_s"] else 0.0
    if "load_s" in record:
        worker["load_s"] = record["load_s"]
    if record.get("pid") not in (None, *worker["pids"]):
        worker["pids"].append(record["pid"])  # more than one: the worker was restarted


def export_coco(out: Path, names: Iterable[str]) -> Path | None:
    """One COCO file over the bags ``names`` of ``out``: images named ``<bag>/<frame_id>@<stamp>``, image
    and annotation ids unique across the fleet. None when there is no bag."""
    from ovsam_ros.coco_export import export_vocabulary, write_coco

    images, label = [], ""
    for name in names:
        frames, recorded = frame_images(out / name)
        label = label or recorded
        images.extend((f"{name}/{image}", h, w, instances) for image, h, w, instances in frames)
    if not images:
        return None
    vocab = export_vocabulary(label, None, [i for *_, instances in images for i in instances])
    results = [(k + 1, image, h, w, instances) for k, (image, h, w, instances) in enumerate(images)]
    tmp = out / f".{COCO}.{uuid.uuid4().hex[:8]}.tmp"
    write_coco(tmp, results, vocab)
    os.replace(tmp, out / COCO)
    return out / COCO

