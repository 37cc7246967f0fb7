"""SAM's predictor API over any :class:`Segmenter`: encode a frame once, answer many prompts from it.

``set_image`` / ``predict`` behave like segment_anything's ``SamPredictor``; ``encode`` and
``predict_on`` do the same without touching predictor state, so the streaming engine can encode on one
thread and answer prompts for any cached frame on another. Prompts are in original-image pixels; this
module (with :mod:`ovsam_ros.transforms`) is the only place that knows about resizing and padding.
Results stay on the device as tensors until :meth:`Prediction.cpu` or :meth:`Predictor.predict_prompts`
turns them into host data; a decoder call synchronises once before that, to read the boxes of its
masks' crops (masks are upscaled only where their logits can reach, :class:`MaskUpscaler`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from ovsam_ros.model.base import ImageFeatures, Recognition, Segmenter
from ovsam_ros.prompts import Prompt, PromptError, PromptKind
from ovsam_ros.results import Instance
from ovsam_ros.transforms import (
    MaskCrops,
    MaskUpscaler,
    map_boxes,
    map_points,
    normalize_and_pad,
    resize_image,
    resized_size,
    upscale_logits,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STABILITY_OFFSET = 1.0
# probabilities [N, C + 1] (last column background) -> one naming per row, each with
# label, class_index, score and top_k (ovsam_ros.recognition.Naming)
Namer = Callable[[torch.Tensor], Sequence | None]
LOW_RES = 256
# Prompts per decoder call on the CPU: each prompt carries its own 64x64x256 image tokens through the
# two-way transformer, so large batches spill the cache (2 prompts: 44 ms each on 2 cores; 64: 159 ms).
CPU_DECODE_CHUNK = 2


class InputError(ValueError):
    """An image, prompt or vocabulary the predictor cannot use; the message says what is wrong."""


@dataclass
class Prediction:
    """Answers for N prompts with M masks each (M = 3 for SAM multimask output, else 1).

    ``masks`` ``[N, M, H, W]`` bool at the original resolution; ``low_res_logits`` ``[N, M, 256, 256]``;
    ``iou_pred`` ``[N, M]`` (None without an IoU head); ``stability_score`` ``[N, M]``; ``mask_score``
    ``[N, M]`` (``iou_pred`` where present, else the stability score); ``mask_box`` ``[N, M, 4]`` the
    masks' boxes (x1/y1 exclusive, zeros when empty) and ``area`` ``[N, M]`` their pixel counts, both
    computed once from each mask's crop. ``logits`` ``[N, M, H, W]`` only with ``return_logits``.
    With a vocabulary set: ``log_scores`` ``[N, C + 1]`` the recognizer's class log-scores (OVSAM's
    ensemble: the released fused log-scores, background last, a split's excluded classes at -1000),
    ``class_index``/``score`` ``[N]`` (best real class), ``probs`` ``[N, C]`` over the real classes
    and ``background`` ``[N]`` (the softmax of ``log_scores``), and ``embedding`` ``[N, D]`` the
    recognizer's L2-normalised region embedding, computed on each prompt's best mask (highest
    ``mask_score``).
    """

    masks: torch.Tensor
    low_res_logits: torch.Tensor
    iou_pred: torch.Tensor | None
    stability_score: torch.Tensor
    mask_score: torch.Tensor
    mask_box: torch.Tensor | None = None
    area: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    class_index: torch.Tensor | None = None
    score: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    background: torch.Tensor | None = None
    log_scores: torch.Tensor | None = None
    embedding: torch.Tensor | None = None

    def cpu(self) -> Prediction:
        """A copy with every tensor on the host."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.cpu() for k, v in moved.items() if isinstance(v, torch.Tensor)})


def _array(value: object, name: str, shape: tuple[int | None, ...], integer: bool = False) -> np.ndarray:
    """``value`` as a numpy array of ``shape`` (None = any size), finite, or an InputError."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.int64 if integer else np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric, got {type(value).__name__}: {exc}") from exc
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape, strict=True)):
        want = "x".join("N" if s is None else str(s) for s in shape)
        raise InputError(f"{name} must have shape {want}, got {tuple(arr.shape)}")
    if not integer and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def check_image(rgb: object) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array, or an InputError saying what is wrong with it."""
    if not isinstance(rgb, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise InputError(f"image must be uint8 RGB, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"image must be HxWx3 RGB, got shape {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image is empty (shape {rgb.shape})")
    return rgb


def check_points(points: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> None:
    """``points`` ``[N, K, 2]``, ``labels`` ``[N, K]`` in {1, 0, -1 (padding)}, inside the image."""
    if labels.shape != points.shape[:2]:
        raise InputError(f"point_labels shape {labels.shape} does not match point_coords {points.shape[:2]}")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise InputError(f"point_labels must be 1 (object), 0 (background) or -1 (padding), got "
                         f"{sorted(set(labels.ravel().tolist()))}")
    if (labels == -1).all(axis=1).any():
        raise InputError("every prompt needs at least one point that is not padding (label -1)")
    h, w = size
    real = labels != -1
    x, y = points[..., 0], points[..., 1]
    outside = real & ((x < 0) | (x > w) | (y < 0) | (y > h))
    if outside.any():
        bad = [f"prompt {n} point {k} at ({points[n, k, 0]:g}, {points[n, k, 1]:g})"
               for n, k in zip(*np.nonzero(outside), strict=True)]
        raise InputError(f"point(s) outside the {w}x{h} image: " + "; ".join(bad[:10]))


def check_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[N, 4]`` boxes with x1 > x0 and y1 > y0, clipped to the image; an error if one lies outside."""
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        bad = [f"#{i} {boxes[i].tolist()}" for i in np.flatnonzero(degenerate)[:10]]
        raise InputError("box(es) need x1 > x0 and y1 > y0: " + "; ".join(bad))
    h, w = size
    clipped = np.clip(boxes, 0, [w, h, w, h])
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        bad = [f"#{i} {boxes[i].tolist()}" for i in np.flatnonzero(empty)[:10]]
        raise InputError(f"box(es) outside the {w}x{h} image: " + "; ".join(bad))
    return clipped


class Predictor:
    """Encode frames and decode prompts with one :class:`Segmenter` on one device.

    ``dtype`` fp16/bf16 runs the network under autocast; post-processing is always float32.
    """

    def __init__(self, model: Segmenter, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32) -> None:
        dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in DTYPES.values():
            raise InputError(f"dtype must be one of {sorted(DTYPES)} (or the torch dtypes), got {dtype}")
        weight_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        if weight_dtype not in (torch.float32, dtype):
            raise InputError(f"the model's weights are {weight_dtype}: create the Predictor with that dtype")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.dtype = dtype
        self.model = model.to(device).eval()
        self._features: ImageFeatures | None = None
        self._names: list[str] = []
        self._upscalers: dict[tuple[tuple[int, int], tuple[int, int]], MaskUpscaler] = {}

    # ---- image side -------------------------------------------------------------------------------

    def encode(self, rgb: np.ndarray) -> ImageFeatures:
        """Run the image encoder on an ``HxWx3`` uint8 RGB image; no predictor state is touched."""
        rgb = check_image(rgb)
        original = (int(rgb.shape[0]), int(rgb.shape[1]))
        size = self.model.image_size
        input_size = resized_size(*original, size)
        resized = resize_image(np.ascontiguousarray(rgb), input_size, self.model.resize_mode)
        pixels = torch.from_numpy(resized).to(self.device)
        image = normalize_and_pad(pixels, size, self.model.pixel_mean, self.model.pixel_std)
        with torch.inference_mode(), self._autocast():
            embedding, clip_levels = self.model.encode(image)
        return ImageFeatures(embedding, tuple(clip_levels), input_size, original)

    def set_image(self, rgb: np.ndarray) -> None:
        self._features = self.encode(rgb)

    def set_image_features(self, features: ImageFeatures) -> None:
        """Adopt features computed earlier (e.g. by :meth:`encode` on another thread)."""
        self._features = self._checked_features(features)

    def get_image_features(self) -> ImageFeatures:
        if self._features is None:
            raise InputError("no image set: call set_image() or set_image_features() first")
        return self._features

    def reset_image(self) -> None:
        self._features = None

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    # ---- vocabulary -------------------------------------------------------------------------------

    def set_vocabulary(self, names: Sequence[str], embeddings: torch.Tensor,
                       base_mask: torch.Tensor | None = None, excluded: torch.Tensor | None = None) -> None:
        """Hand L2-normalised ``[C, P, D]`` text embeddings to the model's recognizer, with the base
        classes of the checkpoint and the classes a split excludes (bool ``[C]`` each, optional)."""
        recognizer = self.model.recognizer
        if recognizer is None:
            raise InputError(f"{type(self.model).__name__} has no recognizer: this preset only segments "
                             "(configure a CLIP model to name masks)")
        emb = torch.as_tensor(embeddings)
        dim = getattr(recognizer, "embed_dim", None)
        if emb.ndim != 3 or emb.shape[0] != len(names) or (dim is not None and emb.shape[2] != dim):
            raise InputError(f"embeddings must be [C={len(names)}, P, D={dim}], got {tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise InputError("embeddings contain NaN or infinite values")
        masks = []
        for name, mask in (("base_mask", base_mask), ("excluded", excluded)):
            if mask is not None:
                mask = torch.as_tensor(mask, dtype=torch.bool)
                if mask.shape != (len(names),):
                    raise InputError(f"{name} must be [{len(names)}] bool, got {tuple(mask.shape)}")
                mask = mask.to(self.device)
            masks.append(mask)
        recognizer.set_text_embeddings(emb.to(self.device, torch.float32), *masks)
        self._names = list(names)

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    # ---- prompt side ------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
    ) -> Prediction:
        """One prompt on the current image: ``point_coords`` ``[K, 2]``, ``point_labels`` ``[K]``,
        ``box`` ``[4]``, ``mask_input`` ``[1, 256, 256]`` (a previous ``low_res_logits`` entry).

        ``multimask_output`` None: three masks and keep the best when the prompt is a lone click
        (SAM's advice for ambiguous prompts), else one mask. Returns N = 1.
        """
        pc = None if point_coords is None else _array(point_coords, "point_coords", (None, 2))[None]
        pl = None if point_labels is None else _array(point_labels, "point_labels", (None,), True)[None]
        bx = None if box is None else _array(box, "box", (4,))[None]
        mi = None if mask_input is None else _array(mask_input, "mask_input", (1, LOW_RES, LOW_RES))[None]
        return self.predict_on(self.get_image_features(), pc, pl, bx, mi, multimask_output, return_logits)

    def predict_batch(
        self,
        boxes: np.ndarray | None = None,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
    ) -> Prediction:
        """N prompts on the current image in one decoder call (see :meth:`predict_on`)."""
        return self.predict_on(self.get_image_features(), point_coords, point_labels, boxes, mask_input,
                               multimask_output, return_logits)

    def predict_on(
        self,
        features: ImageFeatures,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        recognize: bool = True,
    ) -> Prediction:
        """N prompts on any frame's features, one decoder call, predictor state untouched.

        ``point_coords`` ``[N, K, 2]`` + ``point_labels`` ``[N, K]`` (1 object, 0 background, -1
        padding), ``boxes`` ``[N, 4]``, ``mask_input`` ``[N, 1, 256, 256]``; original-image pixels.
        ``recognize=False`` skips naming (callers that name only the masks they keep).
        """
        features = self._checked_features(features)
        size = features.original_size
        coords = labels = box_t = mask_t = None
        counts: list[int] = []
        if point_coords is not None:
            if point_labels is None:
                raise InputError("point_labels are required with point_coords (1 object, 0 background)")
            pts = _array(point_coords, "point_coords", (None, None, 2))
            lab = _array(point_labels, "point_labels", (None, None), integer=True)
            check_points(pts, lab, size)
            coords = self._tensor(map_points(pts, size, features.input_size))
            labels = torch.as_tensor(lab, device=self.device)
            counts.append(len(pts))
        if boxes is not None:
            bx = check_boxes(_array(boxes, "boxes", (None, 4)), size)
            box_t = self._tensor(map_boxes(bx, size, features.input_size))
            counts.append(len(bx))
        if mask_input is not None:
            mask_t = self._tensor(_array(mask_input, "mask_input", (None, 1, LOW_RES, LOW_RES)))
            counts.append(len(mask_t))
        if not counts:
            raise InputError("give at least one of point_coords, boxes or mask_input")
        if len(set(counts)) != 1 or counts[0] == 0:
            raise InputError(f"prompt batch sizes disagree or are empty: {counts}")
        lone_click = coords is not None and coords.shape[1] == 1 and box_t is None and mask_t is None
        several = self.model.num_mask_tokens > 1
        multimask = several and (lone_click if multimask_output is None else multimask_output)
        keep_best = several and multimask_output is None and lone_click
        return self._decode(features, coords, labels, box_t, mask_t, multimask, keep_best, return_logits,
                            recognize)

    def predict_prompts(self, features: ImageFeatures, prompts: Sequence[Prompt],
                        errors: list[str] | None = None, namer: Namer | None = None) -> list[Instance]:
        """POINT and BOX prompts -> one :class:`Instance` each, in prompt order.

        All boxes go through one decoder call, points in one call per point count. A prompt that
        cannot be answered is skipped and the reason appended to ``errors`` (e.g.
        ``FrameResult.errors``); TEXT and EVERYTHING belong to the query and everything modules.
        ``namer`` (e.g. :func:`ovsam_ros.recognition.name_instances` bound to a vocabulary) turns the
        probabilities ``[N, C + 1]`` (last column background) into top-k names; without it an instance
        gets the argmax label and its probability only.
        """
        features = self._checked_features(features)
        size = features.original_size
        boxes: list[tuple[int, np.ndarray]] = []
        groups: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            try:
                if prompt.kind == PromptKind.BOX:
                    if prompt.box is None:
                        raise PromptError("BOX prompt without a box")
                    boxes.append((i, check_boxes(_array(prompt.box, "box", (4,))[None], size)[0]))
                elif prompt.kind == PromptKind.POINT:
                    if prompt.points is None or prompt.labels is None or len(prompt.points) == 0:
                        raise PromptError("POINT prompt without points and labels")
                    pts = _array(prompt.points, "points", (None, 2))
                    lab = _array(prompt.labels, "labels", (len(pts),), integer=True)
                    check_points(pts[None], lab[None], size)
                    groups[len(pts)].append((i, pts, lab))
                else:
                    raise PromptError(f"{prompt.kind.name} prompts are answered by their own module")
            except ValueError as exc:
                if errors is not None:
                    errors.append(f"prompt {prompt.id or i} ({prompt.kind.name}): {exc}")
        answered: list[tuple[list[int], Prediction]] = []
        if boxes:
            pred = self.predict_on(features, boxes=np.stack([b for _, b in boxes]), multimask_output=False)
            answered.append(([i for i, _ in boxes], pred))
        for members in groups.values():
            pred = self.predict_on(features, np.stack([p for _, p, _ in members]),
                                   np.stack([lab for _, _, lab in members]))
            answered.append(([i for i, _, _ in members], pred))
        instances: dict[int, Instance] = {}
        for indices, pred in answered:
            namings = None
            if namer is not None and pred.probs is not None and pred.background is not None:
                namings = namer(torch.cat([pred.probs, pred.background[:, None]], dim=1))
            host = pred.cpu()
            for row, i in enumerate(indices):
                instances[i] = self._instance(host, row, prompts[i])
                if namings is not None:
                    naming = namings[row]
                    instances[i].label, instances[i].class_index = naming.label, naming.class_index
                    instances[i].score, instances[i].top_k = naming.score, list(naming.top_k)
        return [instances[i] for i in sorted(instances)]

    # ---- internals --------------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(arr, dtype=torch.float32).to(self.device)

    def _checked_features(self, features: ImageFeatures) -> ImageFeatures:
        if not isinstance(features, ImageFeatures):
            raise InputError(f"expected ImageFeatures, got {type(features).__name__}")
        if min(features.original_size) <= 0 or min(features.input_size) <= 0:
            raise InputError(f"features carry no image size (original {features.original_size}, "
                             f"input {features.input_size})")
        if features.embedding.device != self.device:
            features = features.to(self.device)
        return features

    def upscaler(self, features: ImageFeatures) -> MaskUpscaler:
        """The low-res -> original-resolution mapping of ``features``' sizes (kept per size pair)."""
        key = (tuple(features.input_size), tuple(features.original_size))
        if key not in self._upscalers:
            if len(self._upscalers) >= 8:
                self._upscalers.pop(next(iter(self._upscalers)))
            self._upscalers[key] = MaskUpscaler(LOW_RES, self.model.image_size, features.input_size,
                                                features.original_size, self.device)
        return self._upscalers[key]

    def decode_low_res(
        self, features: ImageFeatures, coords: torch.Tensor | None, labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None, multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The decoder alone on prompts already in the padded input frame: float32 low-res logits
        ``[N, M, 256, 256]``, predicted IoU ``[N, M]`` (or None) and the label embedding (or None)."""
        n = next(len(t) for t in (coords, boxes, masks) if t is not None)
        step = CPU_DECODE_CHUNK if self.device.type == "cpu" else n
        outs = []
        with torch.inference_mode():
            for i in range(0, n, step):
                part = [None if t is None else t[i:i + step] for t in (coords, labels, boxes, masks)]
                with self._autocast():
                    outs.append(self.model.decode(features, *part, multimask_output=multimask))
            low = torch.cat([o.low_res_logits.float() for o in outs])
            iou = None if outs[0].iou_pred is None else torch.cat([o.iou_pred.float() for o in outs])
            label = None if outs[0].label_embedding is None else torch.cat([o.label_embedding for o in outs])
            return low, iou, label

    def decode_clicks(self, features: ImageFeatures,
                      points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One positive click per prompt at ``points`` ``[N, 2]`` (original pixels), every mask
        token, decoder only: low-res logits ``[N, M, 256, 256]`` and predicted IoU ``[N, M]``."""
        features = self._checked_features(features)
        coords = self._tensor(map_points(points, features.original_size, features.input_size))[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.long, device=self.device)
        low, iou, _ = self.decode_low_res(features, coords, labels, multimask=self.model.num_mask_tokens > 1)
        return low, iou

    def _decode(self, features: ImageFeatures, coords: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, masks: torch.Tensor | None, multimask: bool, keep_best: bool,
                return_logits: bool, recognize: bool = True) -> Prediction:
        low, iou, label_embedding = self.decode_low_res(features, coords, labels, boxes, masks, multimask)
        with torch.inference_mode():
            if keep_best:
                quality = iou if iou is not None else calculate_stability_score(low, 0.0, STABILITY_OFFSET)
                best = quality.argmax(dim=1, keepdim=True)
                low = low.gather(1, best[:, :, None, None].expand(-1, -1, *low.shape[-2:]))
                iou = None if iou is None else iou.gather(1, best)
            n, m = low.shape[:2]
            crops: MaskCrops = self.upscaler(features).masks(low.flatten(0, 1), STABILITY_OFFSET)
            stability = crops.stability.view(n, m)
            score = iou if iou is not None else stability
            logits = None
            if return_logits:
                logits = upscale_logits(low, self.model.image_size, features.input_size,
                                        features.original_size)
            pred = Prediction(masks=crops.dense().view(n, m, *features.original_size), low_res_logits=low,
                              iou_pred=iou, stability_score=stability, mask_score=score,
                              mask_box=crops.boxes.view(n, m, 4), area=crops.area.view(n, m), logits=logits)
            if recognize and self.can_name:
                chosen = low[torch.arange(len(low), device=low.device), score.argmax(dim=1)]
                pred.log_scores, pred.embedding = self.recognize_regions(features, chosen, boxes,
                                                                         label_embedding)
                probs = pred.log_scores.softmax(dim=-1)
                pred.score, pred.class_index = probs[:, :-1].max(dim=1)
                pred.probs, pred.background = probs[:, :-1], probs[:, -1]
        return pred

    @property
    def can_name(self) -> bool:
        """True when the model has a recognizer with a vocabulary set."""
        recognizer = self.model.recognizer
        return recognizer is not None and recognizer.num_classes > 0

    def recognize_regions(self, features: ImageFeatures, low_res_logits: torch.Tensor,
                          boxes: torch.Tensor | None = None,
                          label_embedding: torch.Tensor | None = None) -> Recognition:
        """The recognizer's float32 class log-scores ``[K, C + 1]`` (last column background; for
        OVSAM's ensemble the released fused log-scores, excluded classes at -1000) and region
        embeddings ``[K, D]`` of masks given by their ``[K, 256, 256]`` low-res logits. ``boxes``
        ``[K, 4]`` in the padded input frame, or None to use each predicted mask's box (clicks,
        everything and text candidates: a ground-truth box is never available on a robot).
        ``label_embedding`` comes from a decoder with a label token."""
        if not self.can_name:
            raise InputError("no recognizer with a vocabulary: call set_vocabulary first")
        recognizer = self.model.recognizer
        if len(low_res_logits) == 0:
            empty = low_res_logits.new_zeros
            return Recognition(empty(0, recognizer.num_classes + 1), empty(0, recognizer.embed_dim))
        features = self._checked_features(features)
        with torch.inference_mode(), self._autocast():
            log_scores, embedding = recognizer.recognize(features, low_res_logits.to(self.device), boxes,
                                                         label_embedding)
            return Recognition(log_scores.float(), embedding.float())

    def _instance(self, host: Prediction, row: int, prompt: Prompt) -> Instance:
        best = int(host.mask_score[row].argmax())
        inst = Instance(
            mask=host.masks[row, best].numpy(),
            bbox=tuple(float(v) for v in host.mask_box[row, best]),
            mask_score=float(host.mask_score[row, best]),
            prompt_kind=prompt.kind,
            prompt_id=prompt.id,
            id=prompt.id,
            stability_score=float(host.stability_score[row, best]),
        )
        if host.class_index is not None and host.score is not None:
            inst.class_index = int(host.class_index[row])
            inst.score = float(host.score[row])
            inst.label = self._names[inst.class_index] if inst.class_index < len(self._names) else ""
        if host.embedding is not None:
            inst.embedding = host.embedding[row].numpy()
        return inst
