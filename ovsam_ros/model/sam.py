"""The SAM family as a :class:`Segmenter`: MobileSAM (TinyViT) and SAM ViT-B/L/H.

The prompt encoder and mask decoder are segment_anything's own modules (3 multimask tokens + 1 single
mask token, IoU head); the image encoder is segment_anything's ``ImageEncoderViT`` for SAM and our
:class:`TinyViT` for MobileSAM. All checkpoints share SAM's key layout (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``) and load with strict key accounting. An optional recognizer
with ``encode_image`` (the SAM + CLIP feature-crop baseline) runs beside the image encoder so its
features are cached with the frame.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from ovsam_ros.model.base import DecoderOutput, ImageFeatures, Recognizer, Segmenter
from ovsam_ros.model.checkpoints import CheckpointError, load_into, read_state_dict
from ovsam_ros.model.tiny_vit import TinyViT

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")
_EMBED_DIM = 256
_IMAGE_SIZE = 1024


def sam_prompt_encoder() -> PromptEncoder:
    """SAM's prompt encoder for a 1024 px input and a 64x64 embedding (the same for every variant)."""
    grid = _IMAGE_SIZE // 16
    return PromptEncoder(
        embed_dim=_EMBED_DIM,
        image_embedding_size=(grid, grid),
        input_image_size=(_IMAGE_SIZE, _IMAGE_SIZE),
        mask_in_chans=16,
    )


def sam_mask_decoder() -> MaskDecoder:
    """SAM's mask decoder: two-way transformer, 3 multimask tokens + 1, IoU head."""
    transformer = TwoWayTransformer(depth=2, embedding_dim=_EMBED_DIM, mlp_dim=2048, num_heads=8)
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=transformer,
        transformer_dim=_EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


class SamSegmenter(Segmenter):
    """Image encoder + SAM prompt encoder + SAM mask decoder (+ optional recognizer)."""

    resize_mode = "pil"
    num_mask_tokens = 4

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder | None = None,
        mask_decoder: MaskDecoder | None = None,
        recognizer: Recognizer | None = None,
        name: str = "sam",
    ) -> None:
        super().__init__()
        if recognizer is not None and not callable(getattr(recognizer, "encode_image", None)):
            raise TypeError(f"{type(recognizer).__name__} has no encode_image(); SamSegmenter needs one "
                            "to compute its recognition features beside the SAM image encoder")
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder or sam_prompt_encoder()
        self.mask_decoder = mask_decoder or sam_mask_decoder()
        self.recognizer = recognizer

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        embedding = self.image_encoder(images)
        clip_levels = () if self.recognizer is None else tuple(self.recognizer.encode_image(images))
        return embedding, clip_levels

    def decode(
        self,
        features: ImageFeatures,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> DecoderOutput:
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou_pred = self.mask_decoder(
            image_embeddings=features.embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        return DecoderOutput(low_res_logits=low_res, iou_pred=iou_pred)

    def load_sam_checkpoint(self, path: str | Path) -> None:
        """Load a SAM-layout file (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``),
        every key and shape checked; the recognizer is not part of it."""
        parts = nn.ModuleDict({
            "image_encoder": self.image_encoder,
            "prompt_encoder": self.prompt_encoder,
            "mask_decoder": self.mask_decoder,
        })
        state_dict = read_state_dict(path)
        if not state_dict:
            raise CheckpointError(f"{path} holds no tensors")
        load_into(parts, state_dict, f"{self.name} checkpoint {path}")


def build_mobile_sam(
    checkpoint: str | Path | None, random_init: bool = False, recognizer: Recognizer | None = None
) -> SamSegmenter:
    """MobileSAM (TinyViT-5M + SAM decoder). ``checkpoint`` is required unless ``random_init``."""
    model = SamSegmenter(TinyViT(), recognizer=recognizer, name="MobileSAM")
    return _load_or_random(model, checkpoint, random_init)


def build_sam_vit(
    variant: str,
    checkpoint: str | Path | None,
    random_init: bool = False,
    recognizer: Recognizer | None = None,
) -> SamSegmenter:
    """SAM ViT-B/L/H built by segment_anything's own builders (weights loaded here, strictly)."""
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; expected one of {SAM_VARIANTS}")
    sam = sam_model_registry[variant](checkpoint=None)
    model = SamSegmenter(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, recognizer,
                         name=f"SAM {variant}")
    return _load_or_random(model, checkpoint, random_init)


def _load_or_random(model: SamSegmenter, checkpoint: str | Path | None, random_init: bool) -> SamSegmenter:
    if checkpoint is not None and random_init:
        raise ValueError(f"{model.name}: give a checkpoint or random_init=True, not both")
    if checkpoint is not None:
        model.load_sam_checkpoint(checkpoint)
    elif not random_init:
        raise CheckpointError(f"{model.name}: no checkpoint given (pass random_init=True to build it with "
                              "random weights on purpose)")
    return model.eval()
