"""Open-Vocabulary SAM assembled: CLIP RN50x16 -> SAM2CLIP -> SAM prompt encoder + OVSAM decoder,
and CLIP2SAM + frozen-CLIP recognition fused as in the released evaluation.

Per frame, ``encode`` runs the CLIP tower once, feeds C2..C5 to the SAM2CLIP adapter (the SAM
embedding) and to the recognizer's FPN, and caches P2..P5 and C5. The FPN is per-image work
(about 130 GFLOPs at 1024 px): done once per frame, never per prompt, and P2..P5 + C5 take half the
memory of C2..C5. The released code forces every point label to 1; here negative clicks (label 0)
are passed to SAM's prompt encoder as SAM defines them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder
from torch import nn

from ovsam_ros.model.base import DecoderOutput, ImageFeatures, Recognition, Recognizer, Segmenter
from ovsam_ros.model.checkpoints import CheckpointError, load_into, read_state_dict, take_prefix
from ovsam_ros.model.classifier import TextClassifier
from ovsam_ros.model.clip2sam import FPN, RoIHead, RoIInputError, mask_boxes
from ovsam_ros.model.clip_backbone import ClipImageTower, ClipInputError, build_clip_towers
from ovsam_ros.model.clip_branch import ClipBranch
from ovsam_ros.model.fusion import exclude_classes, fuse_log_scores, mask_is_valid
from ovsam_ros.model.ovsam_decoder import DecoderInputError, OVSAMMaskDecoder
from ovsam_ros.model.sam2clip import Sam2Clip, load_sam2clip

log = logging.getLogger(__name__)

VARIANT_ROI_SIZE = {"lvis": 7, "coco": 12}  # the head's RoIAlign output in the released configs
RECOGNITION_MODES = ("head", "clip", "ensemble")
OVSAM_FILES = ("sam2clip", "clip2sam", "clip", "sam")
_IMAGE_SIZE = 1024
_GRID = _IMAGE_SIZE // 16


class OVSAMRecognizer(Recognizer):
    """Names OVSAM masks: the CLIP2SAM head, the frozen-CLIP branch, or their released fusion.

    ``mode``: ``"head"`` (trained head alone: base classes), ``"clip"`` (frozen CLIP alone) or
    ``"ensemble"`` (default; the released open-vocabulary setting).
    """

    def __init__(self, attnpool: nn.Module, roi_size: int, mode: str = "ensemble", embed_dim: int = 768,
                 in_channels: tuple[int, ...] = (384, 768, 1536, 3072)) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.fpn_neck = FPN(in_channels)
        self.roi_head = RoIHead(roi_size, embed_dim=embed_dim)
        self.clip_branch = ClipBranch(attnpool)
        self.classifier = TextClassifier(embed_dim)
        self.register_buffer("base_mask", None, persistent=False)
        self.register_buffer("excluded", None, persistent=False)
        self.mode = ""
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        if mode not in RECOGNITION_MODES:
            raise ValueError(f"unknown recognition mode {mode!r}; choose from {RECOGNITION_MODES}")
        self.mode = mode

    def set_text_embeddings(self, embeddings: torch.Tensor, base_mask: torch.Tensor | None = None,
                            excluded: torch.Tensor | None = None) -> None:
        """``[C, P, D]`` L2-normalised embeddings; ``base_mask`` bool ``[C]`` marks the classes the head
        was trained on (None: none are, so the ensemble leans on CLIP for every class); ``excluded``
        bool ``[C]`` the classes a split leaves out (never predicted, see :mod:`.fusion`)."""
        for name, mask in (("base_mask", base_mask), ("excluded", excluded)):
            if mask is not None and (mask.dtype != torch.bool or mask.shape != embeddings.shape[:1]):
                raise ValueError(f"{name} must be bool [{embeddings.shape[0]}], got {mask.dtype} "
                                 f"{tuple(mask.shape)}")
        self.classifier.set_embeddings(embeddings)
        device = self.classifier.weight.device
        self.base_mask = None if base_mask is None else base_mask.to(device)
        self.excluded = None if excluded is None else excluded.to(device)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def prepare(self, levels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Per-frame recognition features from C2..C5: ``(P2, P3, P4, P5, C5)``."""
        return (*self.fpn_neck(levels), levels[-1])

    def recognize(
        self,
        features: ImageFeatures,
        low_res_logits: torch.Tensor,
        prompt_boxes: torch.Tensor | None = None,
        label_embedding: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
    ) -> Recognition:
        """Class log-scores ``[N, C + 1]`` (background last) as the released ``open_voc_inference``
        returns them: the fused log-scores in ensemble mode, the branch's logits in head or clip mode;
        their softmax is the class probabilities. A split's excluded classes score -1000 in every mode
        (the release applies its split only to the fusion; a split here means the same whatever the
        mode). ``classes`` (from ``classifier.class_indices``)
        restricts the vocabulary: ``[N, len(classes) + 1]``. The embedding is the frozen-CLIP
        branch's region feature (the head's in head mode): frozen CLIP describes any object."""
        if len(features.clip_levels) != 5:
            raise RoIInputError(f"OVSAM recognition needs (P2, P3, P4, P5, C5) from OVSAMSegmenter.encode, "
                                f"got {len(features.clip_levels)} tensors")
        if low_res_logits.dim() != 3:
            raise RoIInputError(f"low-res logits must be [N, 256, 256], got {tuple(low_res_logits.shape)}")
        n = low_res_logits.shape[0]
        if prompt_boxes is not None and prompt_boxes.shape != (n, 4):
            raise RoIInputError(f"prompt boxes must be [{n}, 4], got {tuple(prompt_boxes.shape)}")
        *fpn_levels, c5 = features.clip_levels
        mask_box = mask_boxes(low_res_logits, stride=_IMAGE_SIZE // low_res_logits.shape[-1])
        head_logits = clip_logits = None
        if self.mode != "clip":
            region = self.roi_head(tuple(fpn_levels), mask_box, label_embedding)
            head_logits = self.classifier(region, classes)
        if self.mode != "head":
            clip_box = mask_box if prompt_boxes is None else prompt_boxes
            region = self.clip_branch(c5, clip_box)
            clip_logits = self.classifier(region, classes)
        embedding = F.normalize(region.float(), dim=-1)
        base, excluded = self.base_mask, self.excluded
        if classes is not None:
            base = None if base is None else base[classes]
            excluded = None if excluded is None else excluded[classes]
        if clip_logits is None:
            return Recognition(exclude_classes(head_logits, excluded), embedding)
        if head_logits is None:
            return Recognition(exclude_classes(clip_logits, excluded), embedding)
        valid = mask_is_valid(low_res_logits, tuple(c5.shape[-2:]))
        return Recognition(fuse_log_scores(head_logits, clip_logits, valid, base, excluded), embedding)


class OVSAMSegmenter(Segmenter):
    """The released OVSAM network behind the :class:`Segmenter` contract (one mask per prompt)."""

    resize_mode = "cv2"
    num_mask_tokens = 1

    def __init__(self, clip_tower: ClipImageTower, sam2clip: Sam2Clip, roi_size: int,
                 recognition: str = "ensemble") -> None:
        super().__init__()
        self.clip_tower = clip_tower
        self.sam2clip = sam2clip
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(_GRID, _GRID),
                                            input_image_size=(_IMAGE_SIZE, _IMAGE_SIZE), mask_in_chans=16)
        self.mask_decoder = OVSAMMaskDecoder(label_dim=clip_tower.embed_dim)
        self.recognizer: OVSAMRecognizer = OVSAMRecognizer(
            clip_tower.attnpool, roi_size, recognition, clip_tower.embed_dim, clip_tower.channels
        )

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ClipInputError(f"OVSAM encodes padded {self.image_size}x{self.image_size} images, "
                                 f"got {tuple(images.shape[-2:])}")
        levels = self.clip_tower(images)
        return self.sam2clip(levels), self.recognizer.prepare(levels)

    def decode(
        self,
        features: ImageFeatures,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> DecoderOutput:
        """One mask per prompt (``multimask_output`` is ignored: OVSAM has one mask token)."""
        _check_prompts(point_coords, point_labels, boxes, mask_input)
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        image_pe = self.prompt_encoder.get_dense_pe()
        low_res, label = self.mask_decoder(features.embedding, image_pe, sparse, dense)
        return DecoderOutput(low_res_logits=low_res, iou_pred=None, label_embedding=label)


def _check_prompts(point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                   boxes: torch.Tensor | None, mask_input: torch.Tensor | None) -> None:
    """Every given prompt tensor has its documented shape and they agree on the number of prompts."""
    counts = []
    if point_coords is not None:
        if point_labels is None or point_coords.dim() != 3 or point_coords.shape[-1] != 2 \
                or point_labels.shape != point_coords.shape[:2]:
            raise DecoderInputError("points need point_coords [N, K, 2] and point_labels [N, K]")
        counts.append(point_coords.shape[0])
    elif point_labels is not None:
        raise DecoderInputError("point_labels given without point_coords")
    if boxes is not None:
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise DecoderInputError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
        counts.append(boxes.shape[0])
    if mask_input is not None:
        if mask_input.dim() != 4 or mask_input.shape[1:] != (1, 4 * _GRID, 4 * _GRID):
            raise DecoderInputError(f"mask_input must be [N, 1, 256, 256], got {tuple(mask_input.shape)}")
        counts.append(mask_input.shape[0])
    if not counts:
        raise DecoderInputError("no prompt given: pass points, boxes or a mask")
    if len(set(counts)) != 1 or counts[0] == 0:
        raise DecoderInputError(f"prompt tensors disagree on (or have no) prompts: {counts}")


def build_ovsam(
    variant: str = "lvis",
    files: dict[str, Path] | None = None,
    random_init: bool = False,
    recognition: str = "ensemble",
) -> OVSAMSegmenter:
    """The released OVSAM from its files, or random weights on purpose (``random_init``).

    ``files``: ``"sam2clip"`` (sam2clip_vith_rn50x16.pth), ``"clip2sam"`` (clip2sam_{variant}_rn50x16.pth:
    ``fpn_neck.*`` and ``mask_decoder.*``), ``"clip"`` (OpenAI RN50x16.pt), ``"sam"`` (SAM ViT-H's
    ``prompt_encoder.*``: the registry's small extracted file, or the full checkpoint). Every tensor
    each part needs must be in its file.
    """
    if variant not in VARIANT_ROI_SIZE:
        raise ValueError(f"unknown OVSAM variant {variant!r}; choose from {sorted(VARIANT_ROI_SIZE)}")
    if recognition not in RECOGNITION_MODES:
        raise ValueError(f"unknown recognition mode {recognition!r}; choose from {RECOGNITION_MODES}")
    if random_init:
        if files:
            raise ValueError("give OVSAM weight files or random_init=True, not both")
        tower, text = build_clip_towers(random_init=True)
        model = OVSAMSegmenter(tower, Sam2Clip(), VARIANT_ROI_SIZE[variant], recognition)
        model.text_tower = text
        return model.eval()
    paths = _check_files(files, variant)
    tower, text = build_clip_towers(paths["clip"])
    model = OVSAMSegmenter(tower, load_sam2clip(paths["sam2clip"]), VARIANT_ROI_SIZE[variant], recognition)
    model.text_tower = text
    load_clip2sam(model, paths["clip2sam"])
    load_prompt_encoder(model.prompt_encoder, paths["sam"])
    return model.eval()


def load_prompt_encoder(encoder: PromptEncoder, path: Path) -> None:
    """``prompt_encoder.*`` of SAM ViT-H: the small extracted safetensors file the weights registry
    keeps, or the full ``sam_vit_h_4b8939.pth`` (memory-mapped, so only those tensors are read)."""
    sam = take_prefix(read_state_dict(path, mmap=True), "prompt_encoder")
    load_into(encoder, sam, f"SAM prompt encoder ({path}, prefix 'prompt_encoder')")


def _check_files(files: dict[str, Path] | None, variant: str) -> dict[str, Path]:
    if not files:
        raise CheckpointError(f"OVSAM-{variant}: no weight files given (need {', '.join(OVSAM_FILES)}; "
                              "pass random_init=True to build with random weights on purpose)")
    absent = [name for name in OVSAM_FILES if name not in files]
    if absent:
        raise CheckpointError(f"OVSAM-{variant}: the {', '.join(map(repr, absent))} weight file(s) "
                              "are missing from files")
    paths = {name: Path(files[name]) for name in OVSAM_FILES}
    for name in OVSAM_FILES:
        if not paths[name].is_file():
            raise CheckpointError(f"OVSAM-{variant}: {name} weight file not found: {paths[name]}")
    return paths


def load_clip2sam(model: OVSAMSegmenter, path: Path) -> None:
    """``fpn_neck.*`` -> the FPN; ``mask_decoder.*`` -> the decoder, except ``roi_conv.*`` -> the RoI head."""
    state = read_state_dict(path)
    other = sorted(k for k in state if not k.startswith(("fpn_neck.", "mask_decoder.")))
    if other:  # the released loader reads by prefix and ignores the rest; say so
        log.warning("%s: ignoring %d key(s) outside fpn_neck./mask_decoder.: %s", path, len(other), other[:5])
    load_into(model.recognizer.fpn_neck, take_prefix(state, "fpn_neck"),
              f"CLIP2SAM FPN ({path}, prefix 'fpn_neck')")
    head = take_prefix(state, "mask_decoder")
    decoder = {k: v for k, v in head.items() if not k.startswith("roi_conv.")}
    load_into(model.mask_decoder, decoder, f"OVSAM mask decoder ({path}, prefix 'mask_decoder')")
    roi = {k: v for k, v in head.items() if k.startswith("roi_conv.")}
    load_into(model.recognizer.roi_head, roi, f"CLIP2SAM RoI conv ({path}, prefix 'mask_decoder.roi_conv')")
