"""The contract between the network, the predictor and the streaming engine.

Every preset (OVSAM, MobileSAM, SAM + CLIP) is a :class:`Segmenter`: an image encoder that runs once
per frame, and a prompt decoder plus an optional :class:`Recognizer` that run per prompt from the
cached :class:`ImageFeatures`. Tensors here are on the model's device; the predictor owns resizing,
padding and normalisation, so everything below works in the padded ``image_size`` square frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import nn


@dataclass
class ImageFeatures:
    """Everything decoding and recognition need for one frame, so a prompt never re-runs the encoder.

    ``embedding`` is SAM's ``[1, 256, 64, 64]`` image embedding. ``clip_levels`` holds the per-frame
    CLIP features the recognizer needs (OVSAM: FPN levels P2..P5 and C5; SAM + CLIP: the CLIP feature
    map); empty when the preset has no recognition. ``input_size`` is the (h, w) of the resized image
    inside the padded square and ``original_size`` the (h, w) of the image given to ``set_image``.
    """

    embedding: torch.Tensor
    clip_levels: tuple[torch.Tensor, ...] = ()
    input_size: tuple[int, int] = (0, 0)
    original_size: tuple[int, int] = (0, 0)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ImageFeatures:
        return replace(
            self,
            embedding=self.embedding.to(device, non_blocking=True),
            clip_levels=tuple(t.to(device, non_blocking=True) for t in self.clip_levels),
            extras={k: v.to(device, non_blocking=True) for k, v in self.extras.items()},
        )

    def nbytes(self) -> int:
        tensors = [self.embedding, *self.clip_levels, *self.extras.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class DecoderOutput:
    """``low_res_logits`` ``[N, M, 256, 256]``; ``iou_pred`` ``[N, M]`` or None without an IoU head;
    ``label_embedding`` ``[N, D]`` from a decoder with a label token (OVSAM), else None: pass it on to
    the recognizer."""

    low_res_logits: torch.Tensor
    iou_pred: torch.Tensor | None
    label_embedding: torch.Tensor | None = None


class Recognition(NamedTuple):
    """What a recognizer says of N masks: class log-scores ``[N, C + 1]`` (last column = background)
    whose softmax is the class probabilities, and each mask's L2-normalised region embedding
    ``[N, D]``, the CLIP-space feature the scores came from (zeros for a mask that covers nothing).
    Tracking uses the embedding as appearance at no extra cost."""

    log_scores: torch.Tensor
    embedding: torch.Tensor


class Recognizer(nn.Module):
    """Names masks: :meth:`recognize` returns a :class:`Recognition`; calling the module returns its
    log-scores alone.

    ``set_text_embeddings`` takes L2-normalised ``[C, P, D]`` text embeddings (P synonyms per class),
    an optional bool ``[C]`` mask of the checkpoint's base (training) classes, and an optional bool
    ``[C]`` mask of classes a split excludes (they score -1000, as in the released evaluation).
    """

    embed_dim: int

    def set_text_embeddings(self, embeddings: torch.Tensor, base_mask: torch.Tensor | None = None,
                            excluded: torch.Tensor | None = None) -> None:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def recognize(
        self,
        features: ImageFeatures,
        low_res_logits: torch.Tensor,
        prompt_boxes: torch.Tensor | None = None,
        label_embedding: torch.Tensor | None = None,
    ) -> Recognition:
        """``low_res_logits`` ``[N, 256, 256]`` (the chosen mask per prompt); ``prompt_boxes``
        ``[N, 4]`` in the padded input frame, or None where the prompt had no box (then the box of
        the predicted mask is used); ``label_embedding`` is ``DecoderOutput.label_embedding``
        (recognizers without a use for it ignore it)."""
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The log-scores ``[N, C + 1]`` of :meth:`recognize`."""
        return self.recognize(*args, **kwargs).log_scores


class Segmenter(nn.Module):
    """A promptable segmentation network: encode once per frame, decode per prompt."""

    image_size: int = 1024
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    num_mask_tokens: int = 1
    resize_mode: str = "cv2"

    def __init__(self) -> None:
        super().__init__()
        # An instance attribute, not a class default: a class-level None would shadow the submodule
        # that nn.Module keeps in _modules once a subclass assigns a recognizer.
        self.recognizer: Recognizer | None = None
        # The CLIP text tower that embeds vocabulary names for ``recognizer`` (a ClipTextTower);
        # None where the preset cannot name masks. It moves with the model (device, dtype).
        self.text_tower: nn.Module | None = None

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``images`` ``[B, 3, S, S]`` normalised and padded. Returns the SAM embedding and the
        recognition features (see :class:`ImageFeatures`)."""
        raise NotImplementedError

    def decode(
        self,
        features: ImageFeatures,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> DecoderOutput:
        """Prompts in the padded input frame: ``point_coords`` ``[N, K, 2]`` (x, y), ``point_labels``
        ``[N, K]`` (1 foreground, 0 background, -1 padding), ``boxes`` ``[N, 4]``, ``mask_input``
        ``[N, 1, 256, 256]``. ``multimask_output`` only matters where ``num_mask_tokens > 1``."""
        raise NotImplementedError
