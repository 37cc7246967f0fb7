"""Results as a COCO instances file, so standard tools (pycocotools, FiftyOne, CVAT) can read them.

Category ids are ``class_index + 1`` in the vocabulary (COCO ids start at 1); unnamed instances
(label "", class_index -1) get category 0, listed as "unlabeled" (LabelInfo's name) only when used.
Masks are COCO RLE from pycocotools with ``counts`` as text, boxes COCO ``[x, y, w, h]``. Each
annotation also carries the instance's ``score``, ``top_k``, ``mask_score`` and ``prompt_id``, so
the file doubles as a detection-results file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ovsam_ros.results import Instance
from ovsam_ros.vocab.vocabulary import Vocabulary

UNLABELED_CATEGORY = {"id": 0, "name": "unlabeled", "supercategory": ""}

ImageResult = tuple[int, str, int, int, list[Instance]]


class CocoExportError(ValueError):
    """Results that cannot be written as COCO; the message says which instance and why."""


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a 2-D mask with ``counts`` decoded to str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _annotation(
    inst: Instance, ann_id: int, image_id: int, height: int, width: int, vocab: Vocabulary
) -> dict:
    where = f"image {image_id}, instance {inst.id or inst.prompt_id!r}"
    if inst.mask.shape != (height, width):
        raise CocoExportError(f"{where}: mask {inst.mask.shape} does not match the image ({height}, {width})")
    if not -1 <= inst.class_index < len(vocab):
        raise CocoExportError(f"{where}: class_index {inst.class_index} outside vocabulary {vocab.label}")
    rle = encode_mask(inst.mask.astype(bool))
    x0, y0, x1, y1 = (float(v) for v in inst.bbox)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": inst.class_index + 1,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
        "score": float(inst.score),
        "top_k": [[name, float(p)] for name, p in inst.top_k],
        "mask_score": float(inst.mask_score),
        "prompt_id": inst.prompt_id,
        "instance_id": inst.id,
    }


def to_coco(results: Iterable[ImageResult], vocab: Vocabulary) -> dict:
    """COCO instances dict from ``(image_id, file_name, height, width, instances)`` per image."""
    images, annotations, seen = [], [], set()
    for image_id, file_name, height, width, instances in results:
        if image_id in seen:
            raise CocoExportError(f"image id {image_id} appears twice")
        seen.add(image_id)
        images.append(
            {"id": int(image_id), "file_name": str(file_name), "height": int(height), "width": int(width)}
        )
        for inst in instances:
            annotations.append(_annotation(inst, len(annotations) + 1, int(image_id), height, width, vocab))
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(vocab.display_names)]
    if any(a["category_id"] == 0 for a in annotations):
        categories.insert(0, UNLABELED_CATEGORY)
    return {
        "info": {"description": f"ovsam_ros instances, vocabulary {vocab.label}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(path: str | Path, results: Iterable[ImageResult], vocab: Vocabulary) -> Path:
    """Write :func:`to_coco` as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_coco(results, vocab)))
    return path


def export_vocabulary(label: str, spec: str | None, instances: list[Instance]) -> Vocabulary:
    """The vocabulary the class indices refer to: ``spec`` (a name or file), or the recorded one (``label``)
    when it is shipped (name and content hash match). Otherwise one built from the names seen,
    re-indexing the instances (a class-agnostic "object" category when nothing was named)."""
    from ovsam_ros.pipeline import load_vocabulary
    from ovsam_ros.vocab.vocabulary import ALL, PRESETS

    if spec:
        return load_vocabulary(spec)
    name = label.split("@", 1)[0]
    if name in (*PRESETS, ALL):
        vocab = Vocabulary.from_name(name)
        if vocab.label == label:
            return vocab
    seen = sorted({i.label for i in instances if i.label})
    names = seen or ["object"]
    for inst in instances:
        inst.class_index = names.index(inst.label) if inst.label in names else (-1 if seen else 0)
    return Vocabulary.from_names([[n] for n in names], name="labels" if seen else "object")
