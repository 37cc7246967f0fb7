"""``ovsam-ros bench``: where the time and memory go, every figure from one run on one machine.

Measured: the image encoder; one prompt decoded (and named) from cached features; batches of 1, 8
and 32 prompts; everything mode (SAM's 32 x 32 grid) on the photo; tracks followed from frame to frame (one
decoder call for all re-prompts, and the tracker's update) per track; the classifier (matmul + top-k) at
80 / 1,203 / 21,843 classes, with each vocabulary's real synonym counts; the node-side
conversions (Image message -> array, result -> messages) as a share of model time; peak memory; for
OVSAM, the extra cost per prompt of the frozen-CLIP branch (ensemble vs head) relative to the
decoder; and the architecture cost of OVSAM against the paper's SAM-H + CLIP Feature-Crop baseline
(parameters, FLOPs counted by ``torch.utils.flop_counter`` at 1024 px, encoder time ratio).
``ratios`` sets the per-prompt figures against the encode measured in the same run.

Times are medians over ``repeats`` after ``warmup`` calls; on CUDA the device is synchronised only
around each timed call. The two heavy encoders of the architecture comparison run ``heavy_repeats``
times (default once, without warm-up: SAM-H takes minutes on a small CPU). FLOPs are counted on the
``meta`` device (shapes only, no arithmetic), after the timed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ovsam_ros.model.base import ImageFeatures, Segmenter
from ovsam_ros.predictor import Predictor

BATCHES = (1, 8, 32)
TRACKS = (1, 8)
VOCABULARIES = ("coco", "lvis", "imagenet21k")
CONVERSION_PROMPTS = 8
TOP_K = 5
_IMAGE_SIZE = 1024


class BenchError(ValueError):
    """An option the benchmark cannot use."""


# ---- timing ---------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> dict:
    """Median / min wall time of ``fn`` in ms; the device is synchronised around each timed call only."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "n": len(times)}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as torch counts them (a multiply-add is 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def params_m(module: torch.nn.Module, skip: Sequence[str] = ()) -> float:
    """Parameters in millions, shared modules counted once, leaving out the children named in ``skip``."""
    left_out = {id(p) for name in skip if hasattr(module, name) and getattr(module, name) is not None
                for p in getattr(module, name).parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in left_out) / 1e6


# The CLIP text tower embeds a vocabulary once, off the per-frame path; the paper's 304 M / 808 M leave it
# out, and so does every "params_m" here (it is listed on its own).
TEXT_TOWER = ("text_tower",)


# ---- inputs ---------------------------------------------------------------------------------------


def bench_image(size: int) -> np.ndarray:
    """A real photo (the first bear image, 756x1008) resized so its longer side is ``size``."""
    from ovsam_ros import assets

    bgr = cv2.imread(str(assets.bear_dataset().images()[0]))
    h, w = bgr.shape[:2]
    scale = size / max(h, w)
    size_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = cv2.resize(bgr, size_wh, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def random_boxes(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` boxes of 10-50 % of the image side, inside the image (fixed seed: same prompts every run)."""
    h, w = size
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.1, 0.5, (n, 2)) * [w, h]
    x0y0 = rng.uniform(0, 1, (n, 2)) * ([w, h] - wh)
    return np.concatenate([x0y0, x0y0 + wh], axis=1)


def random_embeddings(classes: int, synonyms: int, dim: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(classes, synonyms, dim, generator=gen)
    return torch.nn.functional.normalize(rows, dim=-1).to(device)


def vocabulary_shape(name: str) -> tuple[int, int]:
    """(classes, synonyms) of a shipped vocabulary: the shapes a deployed classifier holds."""
    from ovsam_ros.vocab.vocabulary import Vocabulary

    vocab = Vocabulary.from_name(name)
    return len(vocab), vocab.max_synonyms


def vocabulary_embeddings(name: str, dim: int, device: torch.device) -> torch.Tensor:
    """Random ``[C, P, D]`` embeddings with a shipped vocabulary's own synonym count per class,
    padded as the text encoder pads them (repeats of the first synonym)."""
    from ovsam_ros.model.classifier import pad_synonyms
    from ovsam_ros.vocab.vocabulary import Vocabulary

    counts = [len(synonyms) for synonyms in Vocabulary.from_name(name).classes]
    rows = random_embeddings(sum(counts), 1, dim, torch.device("cpu"))[:, 0]
    return pad_synonyms(list(rows.split(counts))).to(device)


# ---- sections -------------------------------------------------------------------------------------


def bench_prompts(predictor: Predictor, features: ImageFeatures, repeats: int, warmup: int) -> dict:
    """One box prompt, then batches of 1 / 8 / 32, decoded (and named) from cached features, results
    brought to the host as the node needs them."""
    size = features.original_size
    out: dict = {}
    for n in BATCHES:
        boxes = random_boxes(n, size)
        timing = measure(lambda b=boxes: predictor.predict_on(features, boxes=b).cpu(), repeats, warmup,
                         predictor.device)
        out[str(n)] = {**timing, "per_prompt_ms": timing["median_ms"] / n}
    return out


def bench_classifier(dim: int, vocabularies: Sequence[str], repeats: int, warmup: int,
                     device: torch.device) -> dict:
    """Cosine against ``[C, P, D]`` text embeddings (max over synonyms), softmax and top-5, for one and
    32 region features at a time."""
    from ovsam_ros.model.classifier import TextClassifier

    out = {}
    for name in vocabularies:
        classifier = TextClassifier(dim).to(device)
        embeddings = vocabulary_embeddings(name, dim, device)
        classifier.set_embeddings(embeddings)
        entry: dict = {"shape": list(embeddings.shape), "rows": classifier.num_rows}
        for n in (1, 32):
            feats = torch.randn(n, dim, device=device)

            def run(f: torch.Tensor = feats, c: TextClassifier = classifier) -> None:
                with torch.inference_mode():
                    probs = c(f).softmax(dim=-1)[:, :-1]
                    probs.topk(TOP_K, dim=-1)

            entry[str(n)] = measure(run, repeats, warmup, device)
        out[name] = entry
    return out


def bench_everything(predictor: Predictor, features: ImageFeatures, repeats: int, warmup: int) -> dict:
    """Everything mode with SAM's 32 x 32 grid from cached features (default settings, naming the
    masks where the model can), results on the host as instances."""
    from ovsam_ros.config import EverythingConfig
    from ovsam_ros.everything import segment_everything

    config = EverythingConfig(points_per_side=32)
    timing = measure(lambda: segment_everything(predictor, features, config), repeats, warmup,
                     predictor.device)
    kept = len(segment_everything(predictor, features, config))
    return {**timing, "points_per_side": config.points_per_side, "skip_covered_points": True,
            "masks_kept": kept}


def bench_tracking(predictor: Predictor, features: ImageFeatures, rgb: np.ndarray, repeats: int,
                   warmup: int) -> dict:
    """What tracks cost on each newly encoded frame, from its cached features: the re-prompts of 1 / 8
    prompted tracks decoded in one batch, then the tracker's update (verification, appearance,
    association); ``tracker_ms`` is the update alone. The tracks start from box prompts, as a
    detector's or a click's would, and never end (a lost track is re-prompted all the same), so every
    frame pays for all of them."""
    from ovsam_ros.config import TrackingConfig, parameter_specs
    from ovsam_ros.engine.processor import PredictorProcessor
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.results import FrameResult
    from ovsam_ros.tracking import Tracker

    processor = PredictorProcessor(predictor)
    size = features.original_size
    _, never_end = next(s.range for s in parameter_specs() if s.name == "tracking.max_lost_frames")
    out: dict = {}
    for n in TRACKS:
        tracker = Tracker(TrackingConfig(enabled=True, max_lost_frames=int(never_end)))
        boxes = [Prompt.from_box(b, id=f"det_{i}") for i, b in enumerate(random_boxes(n, size, seed=1))]
        tracker.update(FrameResult(stamp=1.0, frame_id="bench", image_size=size,
                                   instances=processor.answer(features, boxes), new_frame=True), rgb)
        clock = {"stamp": 1.0, "update_s": []}

        def frame(t: Tracker = tracker, c: dict = clock) -> None:
            c["stamp"] += 0.1
            instances = processor.answer(features, t.reprompts())
            started = time.perf_counter()
            t.update(FrameResult(stamp=c["stamp"], frame_id="bench", image_size=size, instances=instances,
                                 new_frame=True), rgb)
            c["update_s"].append(time.perf_counter() - started)

        timing = measure(frame, repeats, warmup, predictor.device)
        out[str(n)] = {**timing, "tracks": len(tracker.tracks), "per_track_ms": timing["median_ms"] / n,
                       "tracker_ms": 1000 * statistics.median(clock["update_s"][warmup:])}
    return out


def ratios(result: dict) -> dict:
    """Per-prompt figures against the encode of the same run (the issue's goals are stated so)."""
    encode = result["encode"]["median_ms"]
    decode = result["decode"]
    out = {
        "encode_over_one_prompt": encode / decode["1"]["median_ms"],
        "prompts_32_over_encode": decode["32"]["median_ms"] / encode,
        "everything_over_encode": result["everything"]["median_ms"] / encode,
        "track_over_encode": result["tracking"]["1"]["per_track_ms"] / encode,
    }
    classifier = result["classifier"]
    if result["names_masks"] and {"lvis", "imagenet21k"} <= set(classifier):
        extra = classifier["imagenet21k"]["1"]["median_ms"] - classifier["lvis"]["1"]["median_ms"]
        out["imagenet21k_naming_extra_over_one_prompt"] = extra / decode["1"]["median_ms"]
    return out


def bench_recognition_modes(predictor: Predictor, features: ImageFeatures, repeats: int, warmup: int) -> dict:
    """OVSAM per prompt: the mask decoder alone, and the recognizer as head / clip / ensemble. The
    frozen-CLIP branch costs ``ensemble - head`` on top of the head; reported against the decoder."""
    model, device = predictor.model, predictor.device
    recognizer = model.recognizer
    out: dict = {}
    for n in (1, 32):
        square = random_boxes(n, (_IMAGE_SIZE, _IMAGE_SIZE))
        boxes = torch.as_tensor(square, dtype=torch.float32, device=device)
        with torch.inference_mode():
            decoded = model.decode(features, boxes=boxes)
        low, label = decoded.low_res_logits[:, 0], decoded.label_embedding

        def decode(b: torch.Tensor = boxes) -> None:
            with torch.inference_mode():
                model.decode(features, boxes=b)

        entry = {"decoder": measure(decode, repeats, warmup, device)}
        previous = recognizer.mode
        for mode in ("head", "clip", "ensemble"):
            recognizer.set_mode(mode)

            def recognize(b: torch.Tensor = boxes, lo: torch.Tensor = low, la: torch.Tensor = label) -> None:
                with torch.inference_mode():
                    recognizer(features, lo, b, la)

            entry[mode] = measure(recognize, repeats, warmup, device)
        recognizer.set_mode(previous)
        extra = entry["ensemble"]["median_ms"] - entry["head"]["median_ms"]
        entry["clip_branch_extra_ms"] = extra
        entry["clip_branch_over_decoder"] = extra / entry["decoder"]["median_ms"]
        out[str(n)] = entry
    return out


def bench_conversions(predictor: Predictor, rgb: np.ndarray, features: ImageFeatures, encode_ms: float,
                      repeats: int, warmup: int) -> dict:
    """What the node adds around the model for one frame with 8 box prompts: Image message -> RGB
    array, instances -> InstanceArray + Detection2DArray messages (rosbags classes, the same builders
    the node uses), and CDR serialisation of the InstanceArray."""
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.results import FrameResult
    from ovsam_ros.ros.factory import RosbagsFactory
    from ovsam_ros.ros.image_conversions import image_to_rgb, numpy_to_image
    from ovsam_ros.ros.message_builders import detection2d_array_msg, instance_array_msg

    factory = RosbagsFactory()
    msg = numpy_to_image(factory, rgb, "rgb8")
    prompts = [Prompt.from_box(b, id=f"b{i}") for i, b in enumerate(random_boxes(CONVERSION_PROMPTS,
                                                                                 rgb.shape[:2]))]
    device = predictor.device
    answer = measure(lambda: predictor.predict_prompts(features, prompts), repeats, warmup, device)
    result = FrameResult(1.0, "camera", rgb.shape[:2], predictor.predict_prompts(features, prompts))
    to_array = measure(lambda: image_to_rgb(msg), repeats, warmup, device)

    def to_messages() -> None:
        instance_array_msg(factory, result)
        detection2d_array_msg(factory, result)

    build = measure(to_messages, repeats, warmup, device)
    array_msg = instance_array_msg(factory, result)
    serialize = measure(lambda: factory.serialize(array_msg), repeats, warmup, device)
    node_ms = to_array["median_ms"] + build["median_ms"]
    model_ms = encode_ms + answer["median_ms"]
    return {
        "prompts": CONVERSION_PROMPTS,
        "image_msg_to_array": to_array,
        "result_to_messages": build,
        "serialize_instance_array": serialize,
        "model_ms": model_ms,
        "fraction_of_model_time": node_ms / model_ms,
        "fraction_with_serialization": (node_ms + serialize["median_ms"]) / model_ms,
    }


def memory() -> dict:
    """Peak resident memory of this process so far (and peak CUDA allocation where there is CUDA)."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _prompt_flops(model: Segmenter, features: ImageFeatures, device: torch.device) -> int:
    """One box prompt: decoder + recognizer (when it has a vocabulary)."""
    boxes = torch.tensor([[256.0, 256.0, 768.0, 640.0]], device=device)

    def run() -> None:
        with torch.inference_mode():
            out = model.decode(features, boxes=boxes)
            if model.recognizer is not None and model.recognizer.num_classes > 0:
                model.recognizer(features, out.low_res_logits[:, 0], boxes, out.label_embedding)

    return count_flops(run)


def architecture(ovsam: Segmenter | None, heavy_repeats: int, device: torch.device, classes: int = 1203,
                 synonyms: int = 10) -> dict:
    """OVSAM vs the paper's SAM-H + CLIP RN50x16 Feature-Crop baseline, both with random weights:
    parameters, FLOPs at 1024 px (image side once per frame; one box prompt with naming), and the time
    of their image encoders. The models end up on the ``meta`` device (counting FLOPs there is free)."""
    from ovsam_ros.model.presets import build_model

    if ovsam is None:
        ovsam = build_model("ovsam-lvis", random_init=True, device=device)
    baseline = build_model("sam-clip", random_init=True, clip_model="RN50x16", sam_variant="vit_h",
                           device=device)
    images = torch.randn(1, 3, _IMAGE_SIZE, _IMAGE_SIZE, device=device)
    out: dict = {}
    for name, model in (("ovsam", ovsam), ("sam_h_clip_feature_crop", baseline)):
        model.recognizer.set_text_embeddings(random_embeddings(classes, synonyms, model.recognizer.embed_dim,
                                                               device))

        def encode(m: Segmenter = model) -> tuple:
            with torch.inference_mode():
                return m.encode(images)

        timing = measure(encode, heavy_repeats, 0, device)
        embedding, levels = encode()
        square = (_IMAGE_SIZE, _IMAGE_SIZE)
        features = ImageFeatures(embedding, tuple(levels), square, square)
        prompt = _prompt_flops(model, features, device)
        del embedding, levels, features
        model.to("meta")
        image_flops = count_flops(lambda m=model: m.encode(images.to("meta")))
        out[name] = {
            "params_m": params_m(model, TEXT_TOWER),
            "params_m_by_part": {k: params_m(v) for k, v in model.named_children()},
            "image_gflops": image_flops / 1e9,
            "prompt_gflops": prompt / 1e9,
            "total_gflops_one_prompt": (image_flops + prompt) / 1e9,
            "total_gmacs_one_prompt": (image_flops + prompt) / 2e9,
            "encode": timing,
        }
    o, b = out["ovsam"], out["sam_h_clip_feature_crop"]
    out["ratios"] = {
        "params_baseline_over_ovsam": b["params_m"] / o["params_m"],
        "flops_baseline_over_ovsam": b["total_gflops_one_prompt"] / o["total_gflops_one_prompt"],
        "encode_time_baseline_over_ovsam": b["encode"]["median_ms"] / o["encode"]["median_ms"],
    }
    out["note"] = ("torch counts a multiply-add as 2 FLOPs; the paper's GFLOPs (1,180 vs 3,545) count it "
                   "as 1, so compare total_gmacs_one_prompt with them")
    return out


# ---- the run --------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args: argparse.Namespace) -> dict:
    """Every section in one process; the result is what ``main`` prints."""
    from ovsam_ros.model_options import model_config
    from ovsam_ros.pipeline import model_from_config
    from ovsam_ros.preset_registry import PRESETS

    if min(args.repeats, args.heavy_repeats) < 1 or args.warmup < 0 or args.image_size < 16:
        raise BenchError("need --repeats >= 1, --heavy-repeats >= 1, --warmup >= 0 and --image-size >= 16")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    load_before = os.getloadavg()
    started = time.perf_counter()
    model = model_from_config(model_config(args), device, torch.float32)
    predictor = Predictor(model, device=device)
    rgb = bench_image(args.image_size)
    result: dict = {
        "config": {"model": args.model, "random_init": args.random_init, "image": list(rgb.shape[:2]),
                   "repeats": args.repeats, "warmup": args.warmup, "heavy_repeats": args.heavy_repeats},
        "machine": machine(device),
        "params_m": params_m(model, TEXT_TOWER),
    }
    reps, warm = args.repeats, args.warmup
    encode = measure(lambda: predictor.encode(rgb), reps, warm, device)
    result["encode"] = encode
    features = predictor.encode(rgb)
    recognizer = model.recognizer
    if recognizer is not None:
        classes, synonyms = vocabulary_shape("lvis")
        names = [f"class {i}" for i in range(classes)]
        predictor.set_vocabulary(names, random_embeddings(classes, synonyms, recognizer.embed_dim, device))
    result["names_masks"] = recognizer is not None
    result["decode"] = bench_prompts(predictor, features, reps, warm)
    result["everything"] = bench_everything(predictor, features, reps, warm)
    result["tracking"] = bench_tracking(predictor, features, rgb, reps, warm)
    result["classifier"] = bench_classifier(768 if recognizer is None else recognizer.embed_dim,
                                            args.vocabularies, reps, warm, device)
    modes = recognizer is not None and hasattr(recognizer, "set_mode")
    result["recognition_modes"] = bench_recognition_modes(predictor, features, reps, warm) if modes else None
    result["conversion"] = bench_conversions(predictor, rgb, features, encode["median_ms"], reps, warm)
    result["ratios"] = ratios(result)
    result["memory"] = memory()
    del features
    if args.architecture:
        ours = model if PRESETS[args.model].family == "ovsam" and args.random_init else None
        result["architecture"] = architecture(ours, args.heavy_repeats, device)
        result["memory_after_architecture"] = memory()
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["seconds"] = time.perf_counter() - started
    return result


def make_parser() -> argparse.ArgumentParser:
    from ovsam_ros.model_options import add_model_options

    p = argparse.ArgumentParser(prog="ovsam-ros bench", description=__doc__.split("\n")[0])
    add_model_options(p, recognition=False)  # every recognition mode is timed (recognition_modes)
    p.add_argument("--image-size", type=int, default=1008,
                   help="longer side of the test photo in pixels (the network always sees 1024; "
                        "default: %(default)s, the photo's own size)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)")
    p.add_argument("--heavy-repeats", type=int, default=1,
                   help="timed calls of the two heavy encoders in --architecture (default: %(default)s)")
    p.add_argument("--vocabularies", nargs="+", default=list(VOCABULARIES), choices=VOCABULARIES,
                   help="classifier sizes to time (default: all three)")
    p.add_argument("--no-architecture", dest="architecture", action="store_false",
                   help="skip the OVSAM vs SAM-H + CLIP comparison (minutes on a CPU)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the result here")
    return p


def emit(result: dict, path: Path | None) -> None:
    """Print a benchmark's result as indented JSON (scripts read its keys) and, given ``path``, write
    it there too; ``ovsam-ros bench`` and the scripts in ``bench/`` all report this way."""
    text = json.dumps(result, indent=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)


def main(argv: Sequence[str] | None = None) -> int:
    """``ovsam-ros bench``: prints the result as JSON; exit code 2 with one line on bad options."""
    from ovsam_ros.model.checkpoints import CheckpointError
    from ovsam_ros.weights import WeightsError

    args = make_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, CheckpointError, WeightsError) as exc:
        print(f"ovsam-ros bench: error: {exc}", file=sys.stderr)
        return 2
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
