"""The paper's evaluation protocol on any COCO-format dataset: mask IoU per instance, naming accuracy,
base and novel classes reported apart.

One prompt per ground-truth instance: its box (``box``), or one click at the maximum of the
distance transform of its mask (``point``, the paper's "*" setting). IoU is computed against the GT
mask at the image's original resolution and averaged over instances. With recognition on, the
predicted label is compared with the GT category (top-1), each image's categories being the
vocabulary. A click's RoI for naming is the predicted mask's box, never the GT box (the predictor
does that whenever a prompt has no box). Every image is encoded once; all its prompts are decoded
in batches from cached features.

As the released ``InsClsIoUMetric`` defines them: ``IoU`` is the mean mask IoU over instances and
``Acc`` the share of instances whose top-1 label is their GT category, both in percent; ``_b`` and
``_n`` restrict the means to instances of base and of novel categories. The dataset's released split
is applied by default (OV-COCO 48/17 on a COCO-class dataset, LVIS 866/337 on an LVIS-class one):
instances of excluded categories are not evaluated, and those categories score -1000 in the fused
log-scores, so they are never predicted, exactly as in the released protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from tqdm import tqdm

from ovsam_ros.predictor import Predictor
from ovsam_ros.ros.image_conversions import ConversionError, strict_imdecode
from ovsam_ros.vocab.base_classes import base_mask_for
from ovsam_ros.vocab.class_splits import RELEASED_SPLITS, dataset_split, split_for
from ovsam_ros.vocab.vocabulary import Vocabulary, VocabularyError, normalise_name

PROMPTS = ("box", "point")
BASE, NOVEL = "base", "novel"
AUTO, NO_SPLIT = "auto", "none"
SPLIT_CHOICES = (AUTO, NO_SPLIT, *sorted(RELEASED_SPLITS))


class EvalError(ValueError):
    """A dataset, split or option the evaluator cannot use; the message says what is wrong."""


@dataclass(frozen=True)
class GtInstance:
    """One ground-truth object: its COCO ids, its mask at original resolution and its box ``xyxy``."""

    ann_id: int
    category_id: int
    mask: np.ndarray
    box: np.ndarray


@dataclass
class InstanceResult:
    """The answer to one prompt. ``predicted_category_id`` is None when recognition is off."""

    image_id: int
    ann_id: int
    category_id: int
    group: str
    iou: float
    prompt: list[float]
    predicted_category_id: int | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.predicted_category_id is None else self.predicted_category_id == self.category_id


@dataclass
class EvalReport:
    """Every instance's answer plus what was skipped and why."""

    prompt: str
    instances: list[InstanceResult] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        """``IoU`` and ``Acc`` (percent) over all instances and per group (``_b`` base, ``_n`` novel),
        the instance counts, and the mean IoU per image (fraction)."""
        out: dict = {"prompt": self.prompt, "images": self.images, "instances": len(self.instances),
                     **_means(self.instances, "")}
        for group in (BASE, NOVEL):
            members = [r for r in self.instances if r.group == group]
            if members:
                out[f"instances_{group[0]}"] = len(members)
                out.update(_means(members, f"_{group[0]}"))
        per_image: dict[int, list[float]] = defaultdict(list)
        for r in self.instances:
            per_image[r.image_id].append(r.iou)
        out["iou_per_image"] = {str(k): float(np.mean(v)) for k, v in sorted(per_image.items())}
        out["skipped"] = dict(self.skipped)
        out["seconds"] = round(self.seconds, 3)
        return out

    def to_json(self) -> dict:
        return {"summary": self.summary(),
                "instances": [{**asdict(r), "correct": r.correct} for r in self.instances]}


def _means(results: Sequence[InstanceResult], suffix: str) -> dict[str, float]:
    """``IoU<suffix>`` and, where the instances were named, ``Acc<suffix>``, both in percent."""
    out = {f"IoU{suffix}": 100.0 * float(np.mean([r.iou for r in results])) if results else float("nan")}
    named = [r.correct for r in results if r.correct is not None]
    if named:
        out[f"Acc{suffix}"] = 100.0 * float(np.mean(named))
    return out


# ---- base / novel split ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Category ids of the base (training) and novel classes; ids in neither are excluded: not
    evaluated, and never predicted (they score -1000, as in the released protocol)."""

    base: frozenset[int]
    novel: frozenset[int]
    name: str = "custom"

    def excluded_mask(self, cat_ids: Sequence[int]) -> np.ndarray:
        """Bool ``[C]`` over the dataset's categories sorted by id: True where excluded."""
        return np.array([c not in self.base and c not in self.novel for c in cat_ids], dtype=bool)

    def group(self, category_id: int) -> str | None:
        if category_id in self.base:
            return BASE
        if category_id in self.novel:
            return NOVEL
        return None


def dataset_vocabulary(coco: COCO) -> tuple[list[int], Vocabulary]:
    """The dataset's categories sorted by id and a vocabulary of their names (LVIS synonyms kept)."""
    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise EvalError("the annotation file lists no categories")
    cats = coco.loadCats(cat_ids)
    names = [c.get("synonyms") or c["name"] for c in cats]
    try:
        return cat_ids, Vocabulary.from_names(names, name="dataset")
    except VocabularyError as exc:
        raise EvalError(f"category names: {exc}") from exc


def _ids_named(vocab: Vocabulary, cat_ids: list[int], path: Path, strict: bool = True) -> set[int]:
    """Ids of the dataset categories whose name (first synonym) is listed in ``path``; ``strict``: a
    listed name that is no category is an error (a typo in a user's file; packaged lists may hold
    classes a dataset subset lacks)."""
    try:
        wanted = {normalise_name(n) for n in Vocabulary.from_file(path).display_names}
    except VocabularyError as exc:
        raise EvalError(str(exc)) from exc
    found = {normalise_name(n): cid for n, cid in zip(vocab.display_names, cat_ids, strict=True)}
    missing = sorted(wanted - found.keys())
    if missing and strict:
        raise EvalError(f"{path}: {len(missing)} class name(s) are not categories of the dataset: "
                        f"{missing[:10]}")
    return {found[n] for n in wanted if n in found}


def make_split(
    coco: COCO,
    split: str | None = None,
    base_classes: Path | None = None,
    novel_classes: Path | None = None,
    base_ids: Sequence[int] = (),
    novel_ids: Sequence[int] = (),
) -> Split | None:
    """A base/novel split from a released split name, class-name files or category ids (None: no split).

    ``split``: ``"coco"`` / ``"lvis"`` (:mod:`ovsam_ros.vocab.class_splits`), ``"auto"`` (the released
    split of the dataset's classes, if they are COCO or LVIS classes, unless files or ids are given)
    or ``"none"``. One side given: the other side is every remaining category. Both given:
    categories in neither are excluded (COCO's 65-class 48/17 protocol).
    """
    cat_ids, vocab = dataset_vocabulary(coco)
    base: set[int] | None = None
    novel: set[int] | None = None
    name = "custom"
    if split == AUTO:
        split = None if (base_classes or novel_classes or base_ids or novel_ids) else dataset_split(vocab)
    if split not in (None, NO_SPLIT):
        if split not in RELEASED_SPLITS:
            raise EvalError(f"unknown split {split!r}; choose from {', '.join(SPLIT_CHOICES)}")
        released = split_for(vocab, split)
        base = {cid for cid, b in zip(cat_ids, released.base, strict=True) if b}
        novel = {cid for cid, n in zip(cat_ids, released.novel, strict=True) if n}
        name = split
    if base_classes is not None:
        base = (base or set()) | _ids_named(vocab, cat_ids, Path(base_classes))
    if novel_classes is not None:
        novel = (novel or set()) | _ids_named(vocab, cat_ids, Path(novel_classes))
    if base_ids:
        base = (base or set()) | set(base_ids)
    if novel_ids:
        novel = (novel or set()) | set(novel_ids)
    if base is None and novel is None:
        return None
    unknown = sorted(((base or set()) | (novel or set())) - set(cat_ids))
    if unknown:
        raise EvalError(f"category id(s) not in the dataset: {unknown[:10]}")
    base = set(cat_ids) - novel if base is None else base
    novel = set(cat_ids) - base if novel is None else novel
    if both := sorted(base & novel):
        raise EvalError(f"category id(s) both base and novel: {both[:10]}")
    return Split(frozenset(base), frozenset(novel), name)


# ---- prompts --------------------------------------------------------------------------------------


def center_click(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the mask pixel farthest from its boundary (the paper's point prompt).

    The mask is padded with background first so the image border counts as boundary too, and the exact
    Euclidean transform is used; ties go to the first pixel in row-major order.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return float(x), float(y)


def read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image as stored (EXIF orientation ignored, as COCO's sizes are), checked against ``size``."""
    try:
        bgr = strict_imdecode(path.read_bytes(), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
                              f"image {path}")
    except (OSError, ConversionError) as exc:
        raise EvalError(f"cannot read image {path}: {exc}") from None
    if bgr.shape[:2] != size:
        raise EvalError(f"{path} is {bgr.shape[1]}x{bgr.shape[0]} but the annotations say "
                        f"{size[1]}x{size[0]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def gt_instances(coco: COCO, image_id: int, split: Split | None, skipped: dict[str, int]) -> list[GtInstance]:
    """The image's evaluable instances; crowd regions, empty masks, degenerate boxes and categories
    outside the split are counted in ``skipped`` by reason."""
    out = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        reason = None
        if ann.get("iscrowd", 0):
            reason = "crowd"
        elif split is not None and split.group(ann["category_id"]) is None:
            reason = "outside split"
        elif ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
            reason = "degenerate box"
        if reason is None:
            mask = coco.annToMask(ann).astype(bool)
            if not mask.any():
                reason = "empty mask"
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        out.append(GtInstance(int(ann["id"]), int(ann["category_id"]), mask, np.array([x, y, x + w, y + h])))
    return out


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 0.0


# ---- the run --------------------------------------------------------------------------------------


def evaluate(
    predictor: Predictor,
    annotations: str | Path,
    image_dir: str | Path,
    prompt: str = "box",
    split: Split | None = None,
    embeddings: torch.Tensor | None = None,
    base_mask: np.ndarray | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run the protocol over every image of ``annotations`` that has an evaluable instance.

    ``embeddings``: text embeddings ``[C, P, D]`` of the dataset's categories sorted by id (see
    :func:`dataset_vocabulary`); given, the labels are scored too, and the categories ``split``
    excludes are never predicted. ``base_mask``: bool ``[C]``, the classes the checkpoint was trained
    on (for OVSAM's ensemble).
    """
    if prompt not in PROMPTS:
        raise EvalError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    if batch_size < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size}")
    coco = load_coco(annotations)
    cat_ids, vocab = dataset_vocabulary(coco)
    if embeddings is not None:
        excluded = None if split is None else torch.as_tensor(split.excluded_mask(cat_ids))
        predictor.set_vocabulary(vocab.display_names, embeddings,
                                 None if base_mask is None else torch.as_tensor(base_mask), excluded)
    report = EvalReport(prompt)
    started = time.perf_counter()
    image_ids = sorted(coco.getImgIds())[:max_images]
    for image_id in tqdm(image_ids, desc=f"eval ({prompt})", unit="image", disable=not progress):
        info = coco.loadImgs([image_id])[0]
        gts = gt_instances(coco, image_id, split, report.skipped)
        if not gts:
            continue
        rgb = read_rgb(Path(image_dir) / info["file_name"], (int(info["height"]), int(info["width"])))
        features = predictor.encode(rgb)
        report.images += 1
        for start in range(0, len(gts), batch_size):
            chunk = gts[start:start + batch_size]
            if prompt == "box":
                prompts = np.stack([g.box for g in chunk])
                pred = predictor.predict_on(features, boxes=prompts, multimask_output=False).cpu()
            else:
                prompts = np.array([[center_click(g.mask)] for g in chunk])
                labels = np.ones(prompts.shape[:2], dtype=np.int64)
                pred = predictor.predict_on(features, prompts, labels).cpu()
            best = pred.mask_score.argmax(dim=1)
            for row, gt in enumerate(chunk):
                predicted = None if pred.class_index is None else cat_ids[int(pred.class_index[row])]
                report.instances.append(InstanceResult(
                    image_id=image_id, ann_id=gt.ann_id, category_id=gt.category_id,
                    group=split.group(gt.category_id) if split is not None else "all",
                    iou=mask_iou(pred.masks[row, int(best[row])].numpy(), gt.mask),
                    prompt=prompts[row].reshape(-1).tolist(), predicted_category_id=predicted))
    report.seconds = time.perf_counter() - started
    if not report.instances:
        raise EvalError(f"no evaluable instance in {annotations} (skipped: {report.skipped or 'none'})")
    return report


def load_coco(annotations: str | Path) -> COCO:
    path = Path(annotations)
    if not path.is_file():
        raise EvalError(f"annotation file not found: {path}")
    try:
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet):  # pycocotools prints on stdout
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"{path} is not a COCO instances file: {exc}") from exc



# ---- command line ---------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovsam-ros eval",
        description="The paper's protocol on a COCO-format dataset: one prompt per GT instance (its box, or "
                    "one click at the maximum of its mask's distance transform), mask IoU at the original "
                    "resolution averaged over instances, top-1 naming accuracy; base and novel classes "
                    "apart.")
    p.add_argument("--coco", required=True, type=Path, metavar="ANNOTATIONS.json",
                   help="COCO instances file")
    p.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of the file_names")
    p.add_argument("--prompt", choices=PROMPTS, default="box",
                   help="prompt per instance (default: %(default)s)")
    g = p.add_argument_group("base / novel split (reported as IoU_b, IoU_n, Acc_b, Acc_n)")
    g.add_argument("--split", choices=SPLIT_CHOICES, default=AUTO,
                   help="released split: coco = OV-COCO 48 base / 17 novel (the other 15 classes excluded: "
                        "not evaluated, never predicted); lvis = frequent + common base, rare novel; auto "
                        "(default) = the released split of the dataset's classes, unless class files or "
                        "ids are given; none = no split")
    g.add_argument("--base-classes", type=Path, metavar="FILE", help="base class names, one per line")
    g.add_argument("--novel-classes", type=Path, metavar="FILE", help="novel class names, one per line")
    g.add_argument("--base-ids", type=int, nargs="+", default=[], metavar="ID", help="base category ids")
    g.add_argument("--novel-ids", type=int, nargs="+", default=[], metavar="ID", help="novel category ids")
    from ovsam_ros.model_options import add_model_options

    m = add_model_options(p)
    m.add_argument("--no-names", action="store_true", help="score masks only, even if the model names them")
    p.add_argument("--batch-size", type=int, default=32,
                   help="prompts per decoder call (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="summary and per-instance results")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``ovsam-ros eval``: prints the summary as JSON; exit code 0, or 2 with one line on bad input."""
    args = make_parser().parse_args(argv)
    try:
        return _run(args)
    except (EvalError, VocabularyError, OSError) as exc:
        print(f"ovsam-ros eval: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from ovsam_ros.config import ConfigError
    from ovsam_ros.model.checkpoints import CheckpointError
    from ovsam_ros.model.presets import PresetError
    from ovsam_ros.model_options import model_config
    from ovsam_ros.pipeline import build_predictor, checkpoint_classes, embed_vocabulary
    from ovsam_ros.weights import WeightsError

    coco = load_coco(args.coco)
    split = make_split(coco, args.split, args.base_classes, args.novel_classes, args.base_ids, args.novel_ids)
    try:
        predictor = build_predictor(model_config(args))
    except (ConfigError, PresetError, WeightsError, CheckpointError) as exc:
        raise EvalError(str(exc)) from exc
    embeddings = base_mask = None
    model = predictor.model
    if model.text_tower is not None and model.recognizer is not None and not args.no_names:
        _, vocab = dataset_vocabulary(coco)
        embeddings = embed_vocabulary(predictor, vocab, progress=not args.quiet)
        checkpoint = checkpoint_classes(args.model)
        base_mask = None if checkpoint is None else base_mask_for(vocab, checkpoint)
    report = evaluate(predictor, args.coco, args.images, args.prompt, split, embeddings, base_mask,
                      args.batch_size, args.max_images, progress=not args.quiet)
    result = report.to_json()
    result["summary"].update(model=args.model, random_init=args.random_init, device=str(predictor.device),
                             names=embeddings is not None, annotations=str(args.coco),
                             split=None if split is None else split.name)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    return 0
