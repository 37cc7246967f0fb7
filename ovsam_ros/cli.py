"""``ovsam-ros``: the offline tools, no ROS needed. Images on disk, rosbag2 files, weights, vocabularies.

Every command turns bad input into one line on stderr and a non-zero exit code (2 for a malformed
command line, as argparse does; 1 for everything else), never a traceback. Images and bags go through the same
streaming engine and prompt processor the node uses (:mod:`ovsam_ros.pipeline`), so an image answered
here is answered as the node would answer it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovsam_ros.model_options import model_config
from ovsam_ros.prompts import Prompt, PromptKind
from ovsam_ros.results import FrameResult, Instance

log = logging.getLogger("ovsam_ros.cli")

DELEGATED = {"weights": "ovsam_ros.weights", "eval": "ovsam_ros.evaluate", "bench": "ovsam_ros.bench"}
"""Commands with their own parser: ``ovsam-ros weights ...`` runs ``ovsam_ros.weights.main([...])``."""
IMAGE_STAMP = 1.0
"""Stamp given to a still image in the engine (any positive number: one image, one frame)."""


class CliError(ValueError):
    """Bad input found by the CLI itself (a missing image, an unusable option combination)."""


# ---------------------------------------------------------------------------------------------- prompts


def _numbers(text: str, what: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not np.isfinite(values).all():
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected {' or '.join(map(str, counts))} "
                                         "comma-separated numbers")
    return values


def parse_point_prompt(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``"X,Y[,LABEL][;X,Y[,LABEL]...]"`` -> points ``[K, 2]`` and labels ``[K]``: the points of ONE
    prompt (one object); LABEL 1 = object (default), 0 = background."""
    points, labels = [], []
    for part in text.split(";"):
        values = _numbers(part.strip(), "point", (2, 3))
        label = 1 if len(values) == 2 else values[2]
        if label not in (0, 1):
            raise argparse.ArgumentTypeError(f"point {part.strip()!r}: LABEL must be 1 (object) or 0 "
                                             "(background)")
        points.append(values[:2])
        labels.append(int(label))
    return np.array(points, dtype=np.float64), np.array(labels, dtype=np.int64)


def parse_box(text: str) -> np.ndarray:
    """``"X0,Y0,X1,Y1"`` in pixels, with X1 > X0 and Y1 > Y0."""
    box = _numbers(text, "box", (4,))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise argparse.ArgumentTypeError(f"box {text!r}: need X1 > X0 and Y1 > Y0")
    return np.array(box, dtype=np.float64)


def build_prompts(points: Sequence[tuple[np.ndarray, np.ndarray]], boxes: Sequence[np.ndarray], text: str,
                  everything: bool) -> list[Prompt]:
    """One-off prompts for one frame, in the order the JSON lists their instances."""
    prompts = [Prompt.point(p, lab, id=f"point_{i}") for i, (p, lab) in enumerate(points)]
    prompts += [Prompt.from_box(b, id=f"box_{i}") for i, b in enumerate(boxes)]
    if text.strip():
        prompts.append(Prompt.from_text(text.strip(), standing=False))
    if everything:
        prompts.append(Prompt.everything(standing=False))
    return prompts


def prompt_record(inst: Instance, prompts: dict[str, Prompt]) -> dict:
    """Where an instance came from: kind, id and the prompt's geometry or text."""
    record: dict[str, Any] = {"kind": inst.prompt_kind.name.lower(), "id": inst.prompt_id}
    source = prompts.get(inst.prompt_id)
    if inst.prompt_kind == PromptKind.POINT and source is not None and source.points is not None:
        record["points"] = source.points.tolist()
        record["labels"] = np.asarray(source.labels).tolist()
    elif inst.prompt_kind == PromptKind.BOX and source is not None and source.box is not None:
        record["box"] = source.box.tolist()
    elif inst.prompt_kind == PromptKind.TEXT:
        record["query"] = inst.prompt_id
    return record


# ---------------------------------------------------------------------------------------------- model


def processor_configs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The model, vocabulary and everything-mode settings of the model flags: what
    :func:`ovsam_ros.pipeline.build_processor` takes (here, and in each worker of ``fleet label``)."""
    from ovsam_ros.config import EverythingConfig, VocabConfig

    vocab = VocabConfig(vocabulary=args.vocab, top_k=args.top_k,
                        embeddings_file=str(args.vocab_embeddings or ""))
    return model_config(args), vocab, EverythingConfig(points_per_side=args.points_per_side)


def build_processor(args: argparse.Namespace, needs_names: bool) -> tuple[Any, str]:
    """The prompt processor with its vocabulary set (when the model can name masks); returns it and the
    vocabulary label ("" when recognition is off)."""
    from ovsam_ros.pipeline import build_processor as build
    from ovsam_ros.pipeline import require_names

    processor = build(*processor_configs(args), progress=not args.quiet)
    if needs_names:
        require_names(processor, args.model)
    return processor, "" if processor.vocabulary is None else processor.vocabulary.label


def answer_image(processor: Any, rgb: np.ndarray, prompts: list[Prompt], frame_id: str,
                 ) -> tuple[list[Instance], list[str], dict]:
    """All prompts on one image through the streaming engine (one encode, one batch); returns the
    instances in prompt order, the reasons prompts were skipped, and the engine's stats."""
    from ovsam_ros.engine import Engine, EngineConfig, RejectReason

    results: list[FrameResult] = []
    errors: list[str] = []

    def rejected(message: str, prompt: Prompt | None) -> None:
        if not message.startswith(RejectReason.FAILED.value):  # failures are in FrameResult.errors too
            errors.append(message)

    engine = Engine(processor, EngineConfig(encode_mode="on_demand"), replay=True, on_result=results.append,
                    on_error=rejected)
    engine.push_frame(rgb, IMAGE_STAMP, frame_id)
    for prompt in prompts:
        engine.push_prompt(prompt)
    engine.finish()
    instances = [inst for result in results for inst in result.instances]
    return instances, errors + [e for result in results for e in result.errors], engine.stats()


# ---------------------------------------------------------------------------------------------- segment


def read_rgb(path: Path) -> np.ndarray:
    """The image file as RGB; a truncated or damaged file is refused (:func:`strict_imdecode`)."""
    import cv2

    from ovsam_ros.ros.image_conversions import ConversionError, strict_imdecode

    try:
        bgr = strict_imdecode(path.read_bytes(), cv2.IMREAD_COLOR, f"image {path}")
    except OSError as exc:
        raise CliError(f"cannot read image {path}: {exc.strerror or exc}") from None
    except ConversionError as exc:
        raise CliError(str(exc)) from None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_images(paths: Sequence[Path]) -> None:
    """Fail before loading a model: every image must exist and have a reader."""
    import cv2

    for path in paths:
        if not path.is_file():
            raise CliError(f"image {path} does not exist")
        if not cv2.haveImageReader(str(path)):
            raise CliError(f"cannot read image {path}: not an image format OpenCV knows")


def instance_record(inst: Instance, prompts: dict[str, Prompt]) -> dict:
    from ovsam_ros.coco_export import encode_mask

    return {
        "id": inst.id,
        "bbox": [float(v) for v in inst.bbox],
        "mask": encode_mask(inst.mask),
        "mask_score": float(inst.mask_score),
        "label": inst.label,
        "class_index": int(inst.class_index),
        "score": float(inst.score),
        "top_k": [[name, float(p)] for name, p in inst.top_k],
        "prompt": prompt_record(inst, prompts),
    }


def overlay_paths(overlay: Path, images: Sequence[Path]) -> list[Path]:
    """``OUT.png`` for one image; ``OUT_<stem>.png`` each when there are several."""
    if len(images) == 1:
        return [overlay]
    return [overlay.with_name(f"{overlay.stem}_{image.stem}{overlay.suffix or '.png'}") for image in images]


def write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise CliError(f"cannot write {path}")


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovsam_ros.overlay import draw_overlay

    images = [Path(p) for p in args.images]
    _check_images(images)
    prompts = build_prompts(args.point, args.box, args.text, args.everything)
    if not prompts:
        raise CliError("no prompt: give --point, --box, --text or --everything")
    processor, vocabulary = build_processor(args, needs_names=bool(args.text.strip()))
    by_id = {p.id: p for p in prompts}
    overlays = overlay_paths(Path(args.overlay), images) if args.overlay else []
    records, unreadable = [], []
    for i, path in enumerate(tqdm(images, unit="image", disable=args.quiet or len(images) == 1)):
        try:
            rgb = read_rgb(path)
        except CliError as exc:  # the other images go on; the run fails at the end
            unreadable.append(str(exc))
            records.append({"file": str(path), "instances": [], "errors": [str(exc)]})
            continue
        instances, errors, _ = answer_image(processor, rgb, prompts, str(path))
        for error in errors:
            print(f"warning: {path}: {error}", file=sys.stderr)
        records.append({"file": str(path), "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                        "instances": [instance_record(inst, by_id) for inst in instances], "errors": errors})
        if overlays:
            write_png(overlays[i], draw_overlay(rgb, instances))
    out = {"model": args.model, "vocabulary": vocabulary, "images": records}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.quiet:
        total = sum(len(r["instances"]) for r in records)
        print(f"{total} instance(s) on {len(records) - len(unreadable)} image(s) -> {args.json}")
    if unreadable:
        raise CliError(f"{len(unreadable)} of {len(images)} image(s) could not be read (the others are in "
                       f"{args.json}): {unreadable[0]}")
    return 0


# ---------------------------------------------------------------------------------------------- bag


def replay_options(args: argparse.Namespace) -> Any:
    """The :class:`~ovsam_ros.bag.ReplayOptions` of the replay flags (``bag`` and ``fleet label``)."""
    from ovsam_ros.bag import BagTopics, ReplayOptions
    from ovsam_ros.config import OvsamConfig
    from ovsam_ros.engine import EngineConfig

    topics = BagTopics(image=args.image_topic, camera_info=args.camera_info_topic, points=args.points_topic,
                       boxes=args.boxes_topic, text=args.text_topic, clicked_point=args.clicked_point_topic)
    config = OvsamConfig(engine=EngineConfig(encode_mode="auto", max_encode_rate_hz=float(args.encode_rate)))
    return ReplayOptions(topics=topics, text=args.text, everything=args.everything, track=args.track,
                         storage=args.storage, config=config, progress=not args.quiet)


def cmd_bag(args: argparse.Namespace) -> int:
    from ovsam_ros.bag import replay_bag, resolve_topics, topic_types

    options = replay_options(args)
    resolve_topics(topic_types(args.input), options.topics)  # a wrong topic fails before the model loads
    if Path(args.output).exists():
        raise CliError(f"output {args.output} already exists; remove it or choose another path")
    processor, _ = build_processor(args, needs_names=bool(args.text.strip()))
    if (args.tracks_mot or args.tracks_coco) and not args.track:
        raise CliError("--tracks-mot / --tracks-coco export tracks: add --track")
    stats = replay_bag(args.input, args.output, processor, options)
    _export_tracks(args, processor)
    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stats).write_text(json.dumps(stats, indent=1))
    if stats["warnings"]:
        print(f"warning: {stats['warnings']} problem(s) skipped (bad frames: {stats['bad_frames']}, prompts "
              f"skipped: {stats['prompts']['skipped']}, rejected: {stats['prompts']['rejected']}); first: "
              f"{stats['first_warnings'][0]}", file=sys.stderr)
    if not args.quiet:
        print(f"{stats['frames']} frame(s), {stats['encodes']} encode(s), {stats['instances']} instance(s) "
              f"-> {args.output}")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    """``fleet label``: the replay of ``bag`` over many bags on a Ray cluster (:mod:`ovsam_ros.fleet`)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise CliError("Ray is not installed: pip install 'ovsam_ros[fleet]'")
    from ovsam_ros.fleet import MANIFEST, FleetJob, label_fleet

    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.retries < 0:
        raise CliError(f"--retries must be 0 or more, got {args.retries}")
    job = FleetJob(*processor_configs(args), replay=replay_options(args))
    run = label_fleet(args.inputs, args.output, job, workers=args.workers, address=args.address,
                      num_cpus=args.num_cpus, retries=args.retries, progress=not args.quiet)
    total = len(run.processed) + len(run.skipped) + len(run.failed)
    if not args.quiet:
        print(f"{len(run.processed)} bag(s) labelled, {len(run.skipped)} already done, {len(run.failed)} "
              f"failed, of {total} -> {args.output}")
    if run.failed:
        name, reason = sorted(run.failed.items())[0]
        first = " ".join(reason.split())
        raise CliError(f"{len(run.failed)} of {total} bag(s) failed (reasons in "
                       f"{Path(args.output) / MANIFEST}); first: {name}: {first}")
    return 0


def _export_tracks(args: argparse.Namespace, processor: Any) -> None:
    """``--tracks-mot`` / ``--tracks-coco``: the tracks of the bag just written."""
    if not (args.tracks_mot or args.tracks_coco):
        return
    from ovsam_ros.bag import read_results
    from ovsam_ros.tracking.export import TrackExportError, write_coco_video, write_mot

    results = [result for _, result in read_results(args.output)]
    vocabulary = getattr(processor, "vocabulary", None)
    try:
        if args.tracks_mot:
            lines = write_mot(args.tracks_mot, results)
            if not args.quiet:
                print(f"{lines} track line(s) -> {args.tracks_mot}")
        if args.tracks_coco:
            names = None if vocabulary is None else list(vocabulary.display_names)
            count = write_coco_video(args.tracks_coco, results, names)
            if not args.quiet:
                print(f"{count} track(s) -> {args.tracks_coco}")
    except TrackExportError as exc:
        raise CliError(f"no tracks to export from {args.output}: {exc}") from None


# ---------------------------------------------------------------------------------------------- export-coco


def _decode_rle(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _segment_json_results(path: Path) -> tuple[list[tuple[str, int, int, list[Instance]]], str]:
    """Images and instances of a JSON written by ``ovsam-ros segment``."""
    try:
        data = json.loads(path.read_text())
        images = []
        for image in data["images"]:
            instances = [Instance(
                mask=_decode_rle(r["mask"]), bbox=tuple(r["bbox"]), mask_score=float(r["mask_score"]),
                prompt_kind=PromptKind[r["prompt"]["kind"].upper()], prompt_id=str(r["prompt"]["id"]),
                id=str(r["id"]), label=str(r["label"]), class_index=int(r["class_index"]),
                score=float(r["score"]), top_k=[(str(n), float(p)) for n, p in r["top_k"]],
            ) for r in image["instances"]]
            images.append((str(image["file"]), int(image["height"]), int(image["width"]), instances))
        return images, str(data.get("vocabulary", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is not a JSON written by `ovsam-ros segment`: {type(exc).__name__}: {exc}"
                       ) from exc


def cmd_export_coco(args: argparse.Namespace) -> int:
    from ovsam_ros.bag import frame_images
    from ovsam_ros.coco_export import export_vocabulary, write_coco

    path = Path(args.input)
    if not path.exists():
        raise CliError(f"input {path} does not exist")
    if path.suffix.lower() == ".json":
        images, label = _segment_json_results(path)
    else:
        images, label = frame_images(path, args.topic)
    vocab = export_vocabulary(label, args.vocab, [i for _, _, _, insts in images for i in insts])
    results = [(k + 1, name, h, w, insts) for k, (name, h, w, insts) in enumerate(images)]
    write_coco(args.output, results, vocab)
    if not args.quiet:
        count = sum(len(insts) for *_, insts in images)
        print(f"{count} annotation(s) on {len(images)} image(s), vocabulary {vocab.label} -> {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------- vocab


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} kB"


def cmd_vocab(args: argparse.Namespace) -> int:
    from ovsam_ros.pipeline import build_predictor, embed_vocabulary, load_vocabulary
    from ovsam_ros.vocab.templates import VILD_TEMPLATES
    from ovsam_ros.vocab.text_embeddings import EmbeddingCache, text_tower_hash
    from ovsam_ros.vocab.vocabulary import ALL, PRESETS, Vocabulary

    cache = EmbeddingCache()
    if args.vocab_command == "list":
        for name in (*PRESETS, ALL):
            print(f"{name:12s} {len(Vocabulary.from_name(name)):6d} classes")
        metas = sorted(cache.root.glob("*.json")) if cache.root.is_dir() else []
        print(f"cached text embeddings in {cache.root}: {len(metas)}")
        for meta in metas:
            info = json.loads(meta.read_text())
            npy = meta.with_suffix(".npy")
            size = _size(npy.stat().st_size) if npy.exists() else "missing"
            print(f"  {info.get('vocabulary', '?'):12s} {info.get('classes', '?'):>6} classes  {size:>9s}  "
                  f"{npy.name}")
        return 0
    if args.vocab_command == "import":
        return _import_vocabulary(args, cache)
    vocab = load_vocabulary(args.name)
    predictor = build_predictor(model_config(args))
    embeddings = embed_vocabulary(predictor, vocab, progress=not args.quiet)
    npy, _ = cache.paths(cache.key(vocab, text_tower_hash(predictor.model.text_tower.model), VILD_TEMPLATES))
    print(f"{vocab.label}: {len(vocab)} classes, embeddings {list(embeddings.shape)}, "
          f"{_size(npy.stat().st_size)} at {npy}")
    return 0


def _import_vocabulary(args: argparse.Namespace, cache: Any) -> int:
    """Check a released class-embedding file against its names and the model's text tower; cache it."""
    from ovsam_ros.pipeline import PipelineError, build_predictor, load_vocabulary
    from ovsam_ros.vocab.embedding_files import import_class_embeddings, read_class_embeddings

    vocab = load_vocabulary(args.names)
    read_class_embeddings(args.file)  # a bad file fails before the (slow) model load
    predictor = build_predictor(model_config(args))
    recognizer, text = predictor.model.recognizer, predictor.model.text_tower
    if recognizer is None or text is None:
        raise PipelineError(f"the {args.model} model has no recognizer with a CLIP text tower to check the "
                            "file against (configure a CLIP model for mobilesam / sam-clip)")
    embeddings, npy = import_class_embeddings(args.file, vocab, recognizer.embed_dim, cache)
    print(f"{vocab.label}: {len(vocab)} classes, embeddings {list(embeddings.shape)} from {args.file}, "
          f"cached at {npy}; use it with --vocab {args.names} --vocab-embeddings {args.file} "
          f"(vocab.embeddings_file)")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def _add_model_options(p: argparse.ArgumentParser, names: bool = True) -> None:
    from ovsam_ros.model_options import add_model_options

    g = add_model_options(p)
    if names:
        g.add_argument("--vocab", default="lvis",
                       help="vocabulary: coco, lvis, imagenet21k, all, or a .txt/.yaml file "
                            "(default: %(default)s)")
        g.add_argument("--vocab-embeddings", type=Path, default=None, metavar="FILE",
                       help="a released class-embedding file [C, P, D] naming --vocab's classes, instead of "
                            "the text tower (see `ovsam-ros vocab import`)")
        g.add_argument("--top-k", type=int, default=5, help="names kept per instance (default: %(default)s)")
        g.add_argument("--points-per-side", type=int, default=32,
                       help="grid of clicks for --everything and --text (default: %(default)s)")


def _add_replay_options(p: argparse.ArgumentParser) -> None:
    """Topics, standing prompts, tracking, encode rate and storage of a replay (read by
    :func:`replay_options`)."""
    for role, kind in (("image", "sensor_msgs/Image or CompressedImage; default: the only one"),
                       ("camera-info", "sensor_msgs/CameraInfo, for clicked points; default: the only one"),
                       ("points", "ovsam_ros/PointPrompt; default: the only one"),
                       ("boxes", "vision_msgs/Detection2DArray; default: the only one"),
                       ("text", "std_msgs/String text queries; default: none"),
                       ("clicked-point", "geometry_msgs/PointStamped in the camera frame; default: none")):
        p.add_argument(f"--{role}-topic", default=None, help=kind)
    p.add_argument("--text", default="", help="standing text queries for every frame")
    p.add_argument("--everything", action="store_true", help="segment every object of every encoded frame")
    p.add_argument("--track", action="store_true",
                   help="follow instances across frames (tracking.enabled): a click or box keeps its object "
                        "on every later frame, ids are track ids, ended tracks go to /ovsam/track_events")
    p.add_argument("--encode-rate", type=float, default=0.0,
                   help="cap on encodes per second of bag time while text/everything prompts stand "
                        "(0 = every frame; default: %(default)s)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=None,
                   help="output storage (default: the input's)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovsam-ros", description="Open-Vocabulary SAM offline tools: images, rosbag2 files, weights and "
                                      "vocabularies (no ROS needed).")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the core does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("segment", help="segment (and name) objects in images; write JSON and overlays",
                       description="Segment objects in IMAGEs from points, boxes, text or everything mode. "
                                   "Coordinates are pixels of each image (x right, y down).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--point", action="append", default=[], type=parse_point_prompt,
                   metavar="X,Y[,L][;X,Y[,L]]",
                   help="one prompt of one or more clicks (L: 1 object, default; 0 background); repeatable")
    p.add_argument("--box", action="append", default=[], type=parse_box, metavar="X0,Y0,X1,Y1",
                   help="one box prompt; repeatable")
    p.add_argument("--text", default="", help='find every instance of each query: "red mug, screwdriver"')
    p.add_argument("--everything", action="store_true", help="segment every object (a grid of clicks)")
    p.add_argument("--json", required=True, metavar="OUT.json", help="results (masks as COCO RLE)")
    p.add_argument("--overlay", metavar="OUT.png", help="drawing of the results (OUT_<stem>.png per image "
                                                          "when there are several)")
    _add_model_options(p)
    p.set_defaults(run=cmd_segment)

    p = sub.add_parser("bag", help="replay a rosbag2 through the streaming engine into a new bag",
                       description="Replay INPUT (MCAP or sqlite3) deterministically and write OUTPUT: "
                                   "every input message plus /ovsam/instances, /ovsam/detections and "
                                   "/ovsam/overlay.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    _add_replay_options(p)
    p.add_argument("--tracks-mot", metavar="OUT.txt", help="with --track: the tracks in MOTChallenge format")
    p.add_argument("--tracks-coco", metavar="OUT.json",
                   help="with --track: the tracks as COCO video-style (YouTube-VIS) JSON")
    p.add_argument("--stats", metavar="STATS.json", help="frames, encodes, prompts, instances, timings")
    _add_model_options(p)
    p.set_defaults(run=cmd_bag)

    p = sub.add_parser("fleet", help="label many bags on a Ray cluster (`ovsam-ros fleet label --help`)",
                       description="Label a fleet's recordings on a Ray cluster (needs the fleet extra: "
                                   "pip install 'ovsam_ros[fleet]').")
    fsub = p.add_subparsers(dest="fleet_command", metavar="label", required=True)
    f = fsub.add_parser("label", help="replay many bags as `ovsam-ros bag` does, resumable",
                        description="Replay every BAG (or every bag found under DIR) as `ovsam-ros bag` "
                                    "does, one model per worker: one labelled bag each in OUT_DIR, "
                                    "OUT_DIR/manifest.json (per-bag counts, timings, status, content hash; "
                                    "per-worker throughput) and OUT_DIR/coco.json across the fleet. A re-run "
                                    "skips the bags already done with the same bytes and settings.")
    f.add_argument("inputs", nargs="+", metavar="BAG_OR_DIR")
    f.add_argument("output", metavar="OUT_DIR")
    f.add_argument("--address", default=None,
                   help="Ray cluster to join (auto: the running one; default: start a local Ray)")
    f.add_argument("--workers", type=int, default=None,
                   help="model workers (default: one per GPU of the cluster, else one)")
    f.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray (default: all); CPU workers share them")
    f.add_argument("--retries", type=int, default=2,
                   help="restarts of a killed worker, and retries of the bag it had (default: %(default)s)")
    _add_replay_options(f)
    _add_model_options(f)
    f.set_defaults(run=cmd_fleet)

    p = sub.add_parser("export-coco", help="results of `segment` (JSON) or `bag` (bag) as COCO JSON",
                       description="Write the instances of INPUT (a JSON from `ovsam-ros segment` or a bag "
                                   "from `ovsam-ros bag`) as a COCO instances file.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUT.json")
    p.add_argument("--topic", default="/ovsam/instances",
                   help="InstanceArray topic of a bag (default: %(default)s)")
    p.add_argument("--vocab", default=None,
                   help="vocabulary the class indices refer to (default: the recorded one, else the names "
                        "seen)")
    p.set_defaults(run=cmd_export_coco)

    p = sub.add_parser("vocab", help="vocabularies and their cached text embeddings",
                       description="List the shipped vocabularies and cached embeddings, or build and "
                                   "cache one.")
    vsub = p.add_subparsers(dest="vocab_command", metavar="build|import|list", required=True)
    v = vsub.add_parser("build", help="embed a vocabulary with the model's text tower and cache it",
                        description="Embed NAME|FILE with the text tower of --model; print the cache file.")
    v.add_argument("name", metavar="NAME|FILE", help="coco, lvis, imagenet21k, all, or a .txt/.yaml file")
    _add_model_options(v, names=False)
    v.set_defaults(run=cmd_vocab)
    v = vsub.add_parser("import", help="check and cache a released class-embedding file",
                        description="Check FILE, a released [C, P, D] class-embedding file such as "
                                    "RN50x16_LVISV1Dataset.pth, against its class names (shape, unit rows, "
                                    "class count) and the text tower of --model (embedding width), and cache "
                                    "it like a built vocabulary.")
    v.add_argument("file", type=Path, metavar="FILE", help="a .pth/.pt tensor or .npy array [C, P, D]")
    v.add_argument("--names", required=True, metavar="NAME|FILE",
                   help="its class names, in order: coco, lvis, ... or a .txt/.yaml file")
    _add_model_options(v, names=False)
    v.set_defaults(run=cmd_vocab)
    v = vsub.add_parser("list", help="shipped vocabularies and cached embeddings",
                        description="List the shipped vocabularies and the cached text embeddings.")
    v.set_defaults(run=cmd_vocab)

    # Listed for --help only: main() hands these to their modules' own main(argv) (DELEGATED).
    sub.add_parser("weights", help="list, fetch or verify weight files (`ovsam-ros weights --help`)")
    sub.add_parser("eval", help="the paper's evaluation protocol on a COCO dataset (`ovsam-ros eval --help`)")
    sub.add_parser("bench", help="timing, memory and FLOPs in one run (`ovsam-ros bench --help`)")
    return parser


def _error_types() -> tuple[type[BaseException], ...]:
    """Failures users cause (bad files, missing weights, bad input): reported in one line."""
    from ovsam_ros.model.checkpoints import CheckpointError
    from ovsam_ros.weights import WeightsError

    return ValueError, OSError, CheckpointError, WeightsError


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ovsam-ros`` entry point; returns the exit code (0 ok, 1 error, 2 bad command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in DELEGATED:
        delegate = importlib.import_module(DELEGATED[command]).main
        return delegate(argv[argv.index(command) + 1:])
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except _error_types() as exc:
        print(f"ovsam-ros {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ovsam-ros {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, the traceback with --verbose
        if args.verbose:
            raise
        print(f"ovsam-ros {args.command}: unexpected {type(exc).__name__}: {exc} (run with -v for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
