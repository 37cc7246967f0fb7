""""Everything" mode: segment every object of a frame from a grid of point prompts.

The recipe is SAM's automatic mask generator (one crop, no crop layers): a regular grid of single
positive clicks, decoded in batches from the frame's cached features (the image encoder is not run
again); every mask of every click (3 per click where the decoder has several mask tokens) is kept
only if its predicted IoU (where the decoder has an IoU head), its stability score and its area pass
the thresholds; duplicates are removed by box NMS and, optionally, mask-IoU NMS. The thresholds are
judged at the original resolution as SAM does, but a mask is only upscaled (as the crop of its box,
:class:`ovsam_ros.transforms.MaskUpscaler`) once its predicted IoU and a low-res stability score
suggest it can pass, and only the masks left after NMS become RLEs. By default the grid is decoded
coarse to fine and a click that lies well inside a mask already kept is skipped (SAM decodes every
click; the decoder is most of the cost). segment_anything's
own helpers (grid, stability score, boxes, small-region removal) do the work, so the numbers match
SAM's; masks are held as COCO RLEs by pycocotools (see :func:`encode_masks`). Kept masks are named
afterwards, once, from their own low-res logits: the recognizer takes the box of the predicted mask
(there is no other box here), and only survivors are named.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything.utils import amg
from torchvision.ops import batched_nms

from ovsam_ros.config import EverythingConfig, VocabConfig
from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.predictor import STABILITY_OFFSET
from ovsam_ros.prompts import PromptKind
from ovsam_ros.recognition import Naming, name_instances
from ovsam_ros.results import Instance, mask_bbox
from ovsam_ros.transforms import paste
from ovsam_ros.vocab.vocabulary import Vocabulary

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_TENSOR_FIELDS = ("boxes", "points", "mask_score", "stability_score", "low_res_logits")
# How far below the stability threshold a mask's low-res stability score may lie and still be
# upscaled for the exact, original-resolution test (the largest gap on the test photos is far
# smaller, see test_upscale.py).
LOW_RES_STABILITY_MARGIN = 0.2
# With skip_covered_points, a click is skipped only this many grid spacings inside a kept mask.
COVER_MARGIN = 0.25


class EverythingError(ValueError):
    """Everything mode was asked for something it cannot do; the message says what."""


@dataclass
class Candidates:
    """The masks everything mode kept, best first (by mask score), before naming.

    ``rles`` are COCO RLEs at the original resolution (compact while hundreds of candidates are
    collected); ``boxes`` are SAM's XYXY boxes (x1/y1 inclusive, as
    ``amg.batched_mask_to_box`` gives them); ``points`` are the clicks (original pixels) that
    produced each mask; ``mask_score`` is the predicted IoU where the decoder has an IoU head, else
    the stability score; ``low_res_logits`` ``[K, 256, 256]`` are kept for the recognizer.
    """

    rles: list[dict[str, Any]]
    boxes: torch.Tensor
    points: torch.Tensor
    mask_score: torch.Tensor
    stability_score: torch.Tensor
    low_res_logits: torch.Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rles)

    def masks(self) -> list[np.ndarray]:
        """Full-resolution bool masks."""
        return [decode_mask(rle) for rle in self.rles]

    def areas(self) -> list[int]:
        return [int(a) for a in mask_utils.area(self.rles)] if self.rles else []

    def subset(self, index: Sequence[int]) -> Candidates:
        """The candidates at ``index``, in that order."""
        rows = torch.as_tensor(list(index), dtype=torch.long)
        return Candidates(
            rles=[self.rles[i] for i in rows.tolist()],
            **{key: getattr(self, key)[rows.to(getattr(self, key).device)]
               for key in _TENSOR_FIELDS},
            image_size=self.image_size,
        )


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO RLEs of bool ``[K, H, W]`` masks.

    pycocotools' C encoder, not segment_anything's ``mask_to_rle_pytorch``: the latter loops over
    masks in Python and took 2.6 s for 50 masks of 756x1008 on 2 CPU cores, against 0.17 s here.
    """
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8)))


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """A COCO RLE -> bool ``[H, W]`` (C order)."""
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=bool)


def point_grid(points_per_side: int, image_size: tuple[int, int]) -> np.ndarray:
    """``[n*n, 2]`` (x, y) click positions in pixels of an ``(h, w)`` image: the centres of an
    n x n tiling, as SAM's automatic mask generator places them."""
    if points_per_side < 1:
        raise EverythingError(f"points_per_side must be >= 1, got {points_per_side}")
    h, w = image_size
    return amg.build_point_grid(points_per_side) * np.array([w, h], dtype=np.float64)


def _check_config(config: EverythingConfig, mask_nms_threshold: float | None, min_region_area: int) -> None:
    if not isinstance(config, EverythingConfig):
        raise EverythingError(f"config must be an EverythingConfig, got {type(config).__name__}")
    if mask_nms_threshold is not None and not 0.0 <= mask_nms_threshold <= 1.0:
        raise EverythingError(f"mask_nms_threshold must be in [0, 1] or None, got {mask_nms_threshold}")
    if min_region_area < 0:
        raise EverythingError(f"min_region_area must be >= 0, got {min_region_area}")


def quality_keep(pred: Any, config: EverythingConfig) -> torch.Tensor:
    """Bool ``[N, M]``: the masks of a :class:`~ovsam_ros.predictor.Prediction` whose predicted IoU
    (where the decoder has an IoU head), stability score and area reach the config's thresholds.
    Empty masks never pass. Each threshold only removes masks, so raising one never adds any."""
    keep = pred.stability_score >= config.stability_score_threshold
    if pred.iou_pred is not None:
        keep &= pred.iou_pred >= config.pred_iou_threshold
    return keep & (pred.area >= max(config.min_area, 1))


def _decode_batch(predictor: Any, features: ImageFeatures, points: np.ndarray,
                  config: EverythingConfig) -> dict[str, Any]:
    """Decode one batch of clicks, every mask of every click flattened, with a cheap pre-filter on the
    low-res logits (predicted IoU, and the stability score at the low resolution within
    ``LOW_RES_STABILITY_MARGIN``); everything stays on the device."""
    low, iou = predictor.decode_clicks(features, points)
    per_click = low.shape[1]
    low = low.flatten(0, 1)
    valid_h, valid_w = predictor.upscaler(features).valid
    rough = amg.calculate_stability_score(low[:, :valid_h, :valid_w], 0.0, STABILITY_OFFSET).nan_to_num(0.0)
    passed = rough >= config.stability_score_threshold - LOW_RES_STABILITY_MARGIN
    if iou is not None:
        iou = iou.flatten()
        passed &= iou >= config.pred_iou_threshold
    clicks = torch.as_tensor(points, dtype=torch.float32, device=low.device)
    return {"low_res_logits": low, "iou": iou, "passed": passed,
            "points": clicks.repeat_interleave(per_click, dim=0)}


def _upscale_survivors(predictor: Any, features: ImageFeatures, parts: list[dict[str, Any]],
                       config: EverythingConfig) -> dict[str, Any] | None:
    """The pre-filtered masks of all batches, upscaled (as crops) and filtered exactly by
    :func:`quality_keep`'s rule at the original resolution; None when none pass."""
    low = torch.cat([p["low_res_logits"] for p in parts])
    rows = torch.cat([p["passed"] for p in parts]).nonzero().flatten()  # the host sync of a pass
    if len(rows) == 0:
        return None
    crops = predictor.upscaler(features).masks(low[rows], STABILITY_OFFSET)
    iou = None if parts[0]["iou"] is None else torch.cat([p["iou"] for p in parts])[rows]
    keep = (crops.stability >= config.stability_score_threshold) & (crops.area >= max(config.min_area, 1))
    if iou is not None:
        keep &= iou >= config.pred_iou_threshold
    kept = keep.nonzero().flatten()
    if len(kept) == 0:
        return None
    score = crops.stability if iou is None else iou
    boxes = crops.boxes[kept].clone()
    boxes[:, 2:] -= 1  # SAM's boxes: x1/y1 inclusive
    pieces = crops.pieces()
    return {
        "crops": [pieces[k] for k in kept.tolist()],
        "boxes": boxes,
        "points": torch.cat([p["points"] for p in parts])[rows][kept],
        "mask_score": score[kept],
        "stability_score": crops.stability[kept],
        "area": crops.area[kept],
        "low_res_logits": low[rows][kept],
    }


def _join(values: list[Any]) -> Any:
    return [v for value in values for v in value] if isinstance(values[0], list) else torch.cat(values)


def _lattice(points_per_side: int, stride: int) -> np.ndarray:
    """Bool ``[n * n]`` (SAM's grid order, row by row): the grid points on every ``stride``-th row and
    column, centred (offset ``stride // 2``)."""
    on = np.arange(points_per_side) % stride == stride // 2
    return (on[:, None] & on[None, :]).ravel()


def _passes(grid: np.ndarray, n: int, skip_covered: bool,
            cover: list[tuple[torch.Tensor, int, int]]) -> Iterator[np.ndarray]:
    """The grid clicks (``n`` per side) to decode, pass by pass. Without ``skip_covered``: all of them
    at once. With it: coarse to fine (every 8th, 4th, 2nd row and column, then the rest), each pass
    leaving out the clicks inside a mask in ``cover`` (filled in by the caller between passes)."""
    if not skip_covered:
        yield grid
        return
    todo = np.ones(len(grid), dtype=bool)
    for stride in [s for s in (8, 4, 2) if n >= 2 * s] + [1]:
        chosen = todo & (_lattice(n, stride) if stride > 1 else True)
        chosen &= ~_covered(grid, cover)
        todo &= ~chosen
        if chosen.any():
            yield grid[chosen]


def _cover_masks(survivors: dict[str, Any], image_area: int) -> list[tuple[torch.Tensor, int, int]]:
    """Per click, the mask whose area later clicks are skipped in: its largest kept mask that covers
    at most half the frame (an object rather than a part of it), else its smallest one. A click on
    the background yields the background (with holes where the objects are) and the whole frame;
    covering with the whole frame would hide every object from the clicks still to come."""
    points = survivors["points"].cpu().numpy()
    area = survivors["area"].cpu().numpy()
    best: dict[tuple[float, float], int] = {}
    for k, point in enumerate(map(tuple, points)):
        if point not in best:
            best[point] = k
            continue
        old = area[best[point]]
        small, old_small = area[k] <= image_area // 2, old <= image_area // 2
        if (small and (not old_small or area[k] > old)) or (not small and not old_small and area[k] < old):
            best[point] = k
    return [survivors["crops"][k] for k in best.values()]


def _erode(piece: tuple[torch.Tensor, int, int], margin: int) -> tuple[torch.Tensor, int, int]:
    """The mask shrunk by ``margin`` pixels (a square neighbourhood): clicks near a mask's edge are
    still decoded, since that is where a click finds a different part or a whole."""
    crop, top, left = piece
    if margin < 1 or crop.numel() == 0:
        return piece
    outside = F.max_pool2d((~crop)[None, None].float(), 2 * margin + 1, stride=1, padding=margin)
    return outside[0, 0] == 0, top, left


def _covered(grid: np.ndarray, cover: list[tuple[torch.Tensor, int, int]]) -> np.ndarray:
    """Bool ``[P]``: the clicks that lie inside any of the ``cover`` masks."""
    covered = np.zeros(len(grid), dtype=bool)
    pixels = np.floor(grid).astype(np.int64)  # (x, y)
    for crop, top, left in cover:
        y, x = pixels[:, 1] - top, pixels[:, 0] - left
        inside = (y >= 0) & (y < crop.shape[0]) & (x >= 0) & (x < crop.shape[1]) & ~covered
        if inside.any():
            rows = np.flatnonzero(inside)
            covered[rows] = crop[y[rows], x[rows]].cpu().numpy()
    return covered


def _select(data: dict[str, Any], order: torch.Tensor) -> dict[str, Any]:
    index = order.tolist()
    return {key: [value[i] for i in index] if isinstance(value, list) else value[order.to(value.device)]
            for key, value in data.items()}


def mask_iou_nms(rles: Sequence[dict[str, Any]], scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS on mask IoU (pycocotools' RLE IoU): indices of the kept masks, best score first.

    Box NMS misses duplicates whose boxes differ (a part and its whole share little box IoU but
    can, for thin or L-shaped objects, share most pixels) and drops distinct masks whose boxes
    coincide (a ring and its hole); mask IoU decides on the pixels themselves.
    """
    order = torch.argsort(scores.cpu(), descending=True, stable=True)
    ranked = [rles[i] for i in order.tolist()]
    if not ranked:
        return order
    ious = np.asarray(mask_utils.iou(ranked, ranked, [0] * len(ranked))).reshape(len(ranked), len(ranked))
    kept: list[int] = []
    for i in range(len(ranked)):
        if all(ious[i, j] <= threshold for j in kept):
            kept.append(i)
    return order[kept]


def _remove_small_regions(data: dict[str, Any], min_region_area: int, nms_threshold: float) -> dict[str, Any]:
    """SAM's post-processing: fill holes and drop islands smaller than ``min_region_area``, then NMS
    again preferring masks that were left unchanged (as SAM's generator does)."""
    masks, unchanged = [], []
    for rle in data["rles"]:
        mask, holes_changed = amg.remove_small_regions(decode_mask(rle), min_region_area, mode="holes")
        mask, islands_changed = amg.remove_small_regions(mask, min_region_area, mode="islands")
        masks.append(torch.as_tensor(mask))
        unchanged.append(float(not (holes_changed or islands_changed)))
    stacked = torch.stack(masks)
    boxes = amg.batched_mask_to_box(stacked).float().to(data["boxes"].device)
    data = {**data, "rles": encode_masks(stacked), "boxes": boxes}
    scores = torch.tensor(unchanged, device=data["boxes"].device)
    keep = batched_nms(data["boxes"], scores, torch.zeros_like(scores, dtype=torch.long), nms_threshold)
    return _select(data, keep)


@torch.no_grad()
def generate_candidates(
    predictor: Any,
    features: ImageFeatures,
    config: EverythingConfig | None = None,
    *,
    mask_nms_threshold: float | None = None,
    min_region_area: int = 0,
    skip_covered_points: bool = True,
) -> Candidates:
    """Every mask a grid of clicks yields on one frame, filtered and de-duplicated, best first.

    ``predictor`` is an :class:`ovsam_ros.predictor.Predictor` (``predict_on`` decodes from the
    cached ``features``). ``mask_nms_threshold`` adds mask-IoU NMS after box NMS (off when None);
    ``min_region_area`` > 0 runs SAM's hole/island clean-up (off at 0, as in SAM).
    ``skip_covered_points`` decodes the grid coarse to fine and skips the clicks that lie well inside
    a mask already kept (on the test photos: 30-76 of 1024 clicks, every object found as well as by
    the full grid); False decodes every click, as SAM does.
    """
    config = EverythingConfig() if config is None else config
    _check_config(config, mask_nms_threshold, min_region_area)
    image_size = tuple(int(v) for v in features.original_size)
    if min(image_size) < 1:
        raise EverythingError(f"features have no original image size ({image_size}); encode an image first")
    grid = point_grid(config.points_per_side, image_size)
    found: list[dict[str, Any]] = []
    cover: list[tuple[torch.Tensor, int, int]] = []
    margin = int(min(image_size) / config.points_per_side * COVER_MARGIN)
    area = image_size[0] * image_size[1]
    for points in _passes(grid, config.points_per_side, skip_covered_points, cover):
        parts = [_decode_batch(predictor, features, batch, config)
                 for (batch,) in amg.batch_iterator(config.points_per_batch, points)]
        if (survivors := _upscale_survivors(predictor, features, parts, config)) is not None:
            cover += [_erode(piece, margin) for piece in _cover_masks(survivors, area)]
            found.append(survivors)
    if not found:
        return _empty(features, image_size)
    data = {key: _join([part[key] for part in found]) for key in found[0] if key != "area"}
    groups = torch.zeros_like(data["mask_score"], dtype=torch.long)
    data = _select(data, batched_nms(data["boxes"], data["mask_score"], groups, config.nms_threshold))
    data["rles"] = encode_masks(paste(data.pop("crops"), image_size, data["boxes"].device))
    if min_region_area > 0:
        data = _remove_small_regions(data, min_region_area, config.nms_threshold)
    if mask_nms_threshold is not None:
        data = _select(data, mask_iou_nms(data["rles"], data["mask_score"], mask_nms_threshold))
    order = torch.argsort(data["mask_score"], descending=True, stable=True)
    return Candidates(image_size=image_size, **_select(data, order))


def _empty(features: ImageFeatures, image_size: tuple[int, int]) -> Candidates:
    device = features.embedding.device
    return Candidates(rles=[], boxes=torch.zeros(0, 4, device=device),
                      points=torch.zeros(0, 2, device=device), mask_score=torch.zeros(0, device=device),
                      stability_score=torch.zeros(0, device=device),
                      low_res_logits=torch.zeros(0, 256, 256, device=device), image_size=image_size)


def active_vocabulary(predictor: Any, vocabulary: Vocabulary | None) -> Vocabulary:
    """The vocabulary the predictor names with: ``vocabulary`` if given (checked against the
    predictor's class names), else one built from those names."""
    names = predictor.class_names
    if vocabulary is None:
        return Vocabulary.from_names([[name] for name in names], name="active")
    if vocabulary.display_names != names:
        raise EverythingError(f"vocabulary {vocabulary.label} ({len(vocabulary)} classes) is not the one the "
                              f"predictor names with ({len(names)} classes): call predictor.set_vocabulary")
    return vocabulary


def recognize_candidates(
    predictor: Any,
    features: ImageFeatures,
    candidates: Candidates,
    vocabulary: Vocabulary | None = None,
    vocab_config: VocabConfig | None = None,
) -> tuple[list[Naming], np.ndarray] | None:
    """One :class:`Naming` per candidate (top-k; unnamed below the score threshold) and the region
    embeddings ``[K, D]`` they came from (tracking's appearance), or None when recognition is off."""
    if not predictor.can_name:
        return None
    log_scores, embedding = predictor.recognize_regions(features, candidates.low_res_logits)
    vocab_config = VocabConfig() if vocab_config is None else vocab_config
    namings = name_instances(log_scores.softmax(dim=-1), active_vocabulary(predictor, vocabulary),
                             vocab_config.top_k, vocab_config.score_threshold)
    return namings, embedding.cpu().numpy()


def name_candidates(
    predictor: Any,
    features: ImageFeatures,
    candidates: Candidates,
    vocabulary: Vocabulary | None = None,
    vocab_config: VocabConfig | None = None,
) -> list[Naming] | None:
    """The namings of :func:`recognize_candidates` alone."""
    recognized = recognize_candidates(predictor, features, candidates, vocabulary, vocab_config)
    return None if recognized is None else recognized[0]


def segment_everything(
    predictor: Any,
    features: ImageFeatures,
    config: EverythingConfig | None = None,
    *,
    vocabulary: Vocabulary | None = None,
    vocab_config: VocabConfig | None = None,
    prompt_id: str = "everything",
    mask_nms_threshold: float | None = None,
    min_region_area: int = 0,
) -> list[Instance]:
    """Every object of the frame as an :class:`Instance` (``prompt_kind`` EVERYTHING), best first,
    named when the model has a recognizer and a vocabulary. See :func:`generate_candidates`."""
    candidates = generate_candidates(predictor, features, config, mask_nms_threshold=mask_nms_threshold,
                                     min_region_area=min_region_area)
    recognized = recognize_candidates(predictor, features, candidates, vocabulary, vocab_config)
    return candidates_to_instances(candidates, *(recognized or (None, None)), PromptKind.EVERYTHING,
                                   prompt_id)


def everything_records(
    predictor: Any,
    features: ImageFeatures,
    config: EverythingConfig | None = None,
    *,
    output_mode: str = "binary_mask",
    vocabulary: Vocabulary | None = None,
    vocab_config: VocabConfig | None = None,
    mask_nms_threshold: float | None = None,
    min_region_area: int = 0,
) -> list[dict[str, Any]]:
    """Like SAM's ``SamAutomaticMaskGenerator.generate``: one dict per mask, best first, with SAM's
    keys plus ``label``, ``class_index``, ``score`` and ``top_k``. See :func:`candidates_to_records`."""
    if output_mode not in OUTPUT_MODES:
        raise EverythingError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    candidates = generate_candidates(predictor, features, config, mask_nms_threshold=mask_nms_threshold,
                                     min_region_area=min_region_area)
    namings = name_candidates(predictor, features, candidates, vocabulary, vocab_config)
    return candidates_to_records(candidates, namings, output_mode)


def candidates_to_instances(candidates: Candidates, namings: Sequence[Naming] | None,
                            embeddings: np.ndarray | None, kind: PromptKind,
                            prompt_id: str) -> list[Instance]:
    """Instances with full-resolution masks; ``id`` is ``"<prompt_id>/<rank>"``; ``embeddings``
    ``[K, D]`` the recognizer's region embeddings (None when recognition is off)."""
    instances = []
    host = _host(candidates)
    for i, mask in enumerate(candidates.masks()):
        inst = Instance(mask=mask, bbox=mask_bbox(mask), mask_score=float(host["mask_score"][i]),
                        prompt_kind=kind, prompt_id=prompt_id, id=f"{prompt_id}/{i}",
                        stability_score=float(host["stability_score"][i]))
        if namings is not None:
            naming = namings[i]
            inst.label, inst.class_index, inst.score = naming.label, naming.class_index, naming.score
            inst.top_k = list(naming.top_k)
        if embeddings is not None:
            inst.embedding = embeddings[i]
        instances.append(inst)
    return instances


def candidates_to_records(candidates: Candidates, namings: Sequence[Naming] | None,
                          output_mode: str = "binary_mask") -> list[dict[str, Any]]:
    """SAM automatic-mask-generator records: ``segmentation`` (bool HxW, SAM's uncompressed RLE or
    COCO RLE per ``output_mode``), ``area``, ``bbox`` (XYWH as SAM gives it), ``predicted_iou`` (the
    mask score where the decoder has no IoU head), ``point_coords``, ``stability_score``,
    ``crop_box`` (the whole image: no crop layers); plus ``label``, ``class_index``, ``score`` and
    ``top_k`` ("" / -1 / 0.0 / [] when recognition is off)."""
    if output_mode not in OUTPUT_MODES:
        raise EverythingError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    host = _host(candidates)
    h, w = candidates.image_size
    records = []
    for i, rle in enumerate(candidates.rles):
        if output_mode == "coco_rle":  # JSON-ready, as SAM writes it
            segmentation: Any = {"size": list(rle["size"]), "counts": rle["counts"].decode("utf-8")}
        elif output_mode == "uncompressed_rle":
            segmentation = amg.mask_to_rle_pytorch(torch.from_numpy(decode_mask(rle))[None])[0]
        else:
            segmentation = decode_mask(rle)
        naming = None if namings is None else namings[i]
        records.append({
            "segmentation": segmentation,
            "area": int(mask_utils.area(rle)),
            "bbox": amg.box_xyxy_to_xywh(host["boxes"][i]).tolist(),
            "predicted_iou": float(host["mask_score"][i]),
            "point_coords": [host["points"][i].tolist()],
            "stability_score": float(host["stability_score"][i]),
            "crop_box": [0, 0, w, h],
            "label": "" if naming is None else naming.label,
            "class_index": -1 if naming is None else naming.class_index,
            "score": 0.0 if naming is None else naming.score,
            "top_k": [] if naming is None else list(naming.top_k),
        })
    return records


def _host(candidates: Candidates) -> dict[str, np.ndarray]:
    """The per-candidate numbers on the host, in one transfer each."""
    return {key: getattr(candidates, key).cpu().numpy()
            for key in ("boxes", "points", "mask_score", "stability_score")}
