"""The paper's "Feature-Crop" baseline: name a SAM mask by pooling a dense CLIP feature map under it.

Used by the ``sam-clip`` preset (SAM + any open_clip image tower). The dense map is computed once
per frame (:meth:`FeatureCropRecognizer.encode_image`, stored as ``ImageFeatures.clip_levels``);
each prompt then costs one weighted average and one matrix multiply against the vocabulary.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from .base import ImageFeatures, Recognition, Recognizer, Segmenter
from .checkpoints import CheckpointError
from .classifier import TextClassifier
from .clip_backbone import ClipTextTower, load_openai_clip
from .fusion import exclude_classes


class FeatureCropError(ValueError):
    """Inputs the feature-crop recognizer cannot use (wrong shapes, missing features)."""


class FeatureCropRecognizer(Recognizer):
    """Mask-weighted average of a dense CLIP map, cosine with text embeddings, softmax over C + 1.

    How the dense map is made depends on the tower:

    * ResNet (``ModifiedResNet``): CLIP pools C5 with one attention layer whose query is the mean
      token. We apply that layer to each location as a one-token sequence; attention over a single
      token is exactly ``c_proj(v_proj(token + pos[0]))``, an affine map, so averaging the projected
      map under a mask equals projecting the mask's average C5 feature (the MaskCLIP reading of the
      pool). Running the full 12x12 attention pool on a masked crop instead would mix in the context
      the mask excludes and tie the crop to a fixed grid.
    * ViT (``VisionTransformer``): the patch tokens after ``ln_post`` and ``proj``, i.e. the same
      per-token path CLIP's class token takes.

    Images arrive normalised with the segmenter's pixel statistics (SAM's) and padded square; they
    are re-normalised to CLIP's statistics and resized to ``input_size``. The mask grid and the
    feature grid both cover that padded square, so they align.
    """

    def __init__(
        self,
        visual: nn.Module,
        input_size: int | None = None,
        pixel_mean: Sequence[float] = Segmenter.pixel_mean,
        pixel_std: Sequence[float] = Segmenter.pixel_std,
        clip_mean: Sequence[float] = OPENAI_DATASET_MEAN,
        clip_std: Sequence[float] = OPENAI_DATASET_STD,
    ) -> None:
        super().__init__()
        native = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
        if isinstance(visual, ModifiedResNet):
            self.input_size = input_size or native
            if self.input_size % 32:
                raise ValueError(f"a CLIP ResNet needs an input size divisible by 32, got {self.input_size}")
        elif isinstance(visual, VisionTransformer):
            if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
                raise ValueError("only ViT towers with a class-token projection are supported")
            if input_size not in (None, native):
                raise ValueError(f"this ViT takes {native} px only (fixed position embedding), "
                                 f"got {input_size}")
            self.input_size = native
        else:
            raise ValueError(f"unsupported open_clip image tower {type(visual).__name__}")
        self.visual = visual
        self.embed_dim = visual.output_dim
        self.classifier = TextClassifier(self.embed_dim)
        self.register_buffer("excluded", None, persistent=False)
        # SAM-normalised x -> CLIP-normalised: (x * std_sam + mean_sam) / 255 - mean_clip) / std_clip
        scale = torch.tensor(pixel_std) / 255.0 / torch.tensor(clip_std)
        shift = (torch.tensor(pixel_mean) / 255.0 - torch.tensor(clip_mean)) / torch.tensor(clip_std)
        self.register_buffer("renorm_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureCropRecognizer:
        """Stays in eval mode: the CLIP tower is frozen (BatchNorm statistics included)."""
        return super().train(False)

    def set_text_embeddings(self, embeddings: torch.Tensor, base_mask: torch.Tensor | None = None,
                            excluded: torch.Tensor | None = None) -> None:
        """``base_mask`` is ignored: the baseline has no training classes to treat differently.
        ``excluded`` classes score -1000 (a split's left-out classes, as in the released protocol)."""
        if excluded is not None and (excluded.dtype != torch.bool or excluded.shape != embeddings.shape[:1]):
            raise ValueError(f"excluded must be bool [{embeddings.shape[0]}], got {excluded.dtype} "
                             f"{tuple(excluded.shape)}")
        self.classifier.set_embeddings(embeddings)
        self.excluded = None if excluded is None else excluded.to(self.classifier.weight.device)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def _resnet_dense(self, images: torch.Tensor) -> torch.Tensor:
        visual: ModifiedResNet = self.visual
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
        pool = visual.attnpool
        tokens = x.permute(0, 2, 3, 1) + pool.positional_embedding[0]
        return pool.c_proj(pool.v_proj(tokens)).permute(0, 3, 1, 2)

    def _vit_dense(self, images: torch.Tensor) -> torch.Tensor:
        visual: VisionTransformer = self.visual
        visual.output_tokens = True
        _, tokens = visual(images)
        if visual.pool_type == "none":  # every token is a patch token, none is a class token
            tokens = tokens[:, -visual.grid_size[0] * visual.grid_size[1]:]
        dense = tokens @ visual.proj
        return dense.transpose(1, 2).reshape(images.shape[0], -1, *visual.grid_size)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        """``images`` ``[B, 3, S, S]`` normalised with the segmenter's statistics -> (``[B, D, h, w]``,)."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise FeatureCropError(f"expected padded square images [B, 3, S, S], got {tuple(images.shape)}")
        x = images * self.renorm_scale + self.renorm_shift
        if x.shape[-1] != self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if isinstance(self.visual, ModifiedResNet):
            return (self._resnet_dense(x),)
        return (self._vit_dense(x),)

    def pool_masks(self, dense: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask-weighted average features ``[N, D]`` of a ``[1, D, h, w]`` map under bool ``[N, H, W]``
        masks (any H, W covering the same square), and which masks cover anything ``[N]``.

        A cell's weight is the share of it the mask covers (adaptive average pooling of the mask)."""
        weights = F.adaptive_avg_pool2d(masks[:, None].to(dense.dtype), dense.shape[-2:])[:, 0]
        total = weights.flatten(1).sum(1)
        pooled = torch.einsum("nhw,dhw->nd", weights, dense[0]) / total.clamp_min(1e-12)[:, None]
        return pooled, total > 0

    @torch.no_grad()
    def recognize(
        self,
        features: ImageFeatures,
        low_res_logits: torch.Tensor,
        prompt_boxes: torch.Tensor | None = None,
        label_embedding: torch.Tensor | None = None,
    ) -> Recognition:
        """Log-probabilities ``[N, C + 1]`` and the mask-pooled CLIP features as embeddings. Only the
        mask is used (``prompt_boxes`` is ignored: a feature crop needs no box; ``label_embedding``
        too: SAM's decoder has no label token). A mask with no positive pixel names nothing: all mass
        on background."""
        if len(features.clip_levels) != 1 or features.clip_levels[0].dim() != 4:
            raise FeatureCropError("ImageFeatures.clip_levels must hold the one dense map from encode_image")
        dense = features.clip_levels[0]
        if dense.shape[0] != 1 or dense.shape[1] != self.embed_dim:
            raise FeatureCropError(f"dense map must be [1, {self.embed_dim}, h, w], got {tuple(dense.shape)}")
        if low_res_logits.dim() != 3:
            raise FeatureCropError(f"low_res_logits must be [N, H, W], got {tuple(low_res_logits.shape)}")
        pooled, covered = self.pool_masks(dense, low_res_logits > 0)
        scores = exclude_classes(self.classifier(pooled), self.excluded).log_softmax(dim=-1)
        background = torch.full_like(scores, -torch.inf)
        background[:, -1] = 0.0
        embedding = F.normalize(pooled.float(), dim=-1)
        return Recognition(torch.where(covered[:, None], scores, background), embedding)


def is_openai_clip_file(path: str | Path, model_name: str) -> bool:
    """Whether ``path`` is in OpenAI's layout rather than open_clip's: a TorchScript archive (how OpenAI
    ships its files; it holds a ``code/`` folder) or a file named ``<model_name>.pt`` as OpenAI names
    them. Anything else is read as an open_clip checkpoint."""
    path = Path(path)
    if path.name == f"{model_name}.pt":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def _check_architecture(model: nn.Module, model_name: str, path: Path) -> None:
    """An OpenAI file carries its own architecture (read from its shapes): it must be ``model_name``'s,
    whose tokenizer names the classes."""
    cfg = open_clip.get_model_config(model_name)
    resnet = isinstance(cfg["vision_cfg"].get("layers"), (list, tuple))
    found = (model.text_projection.shape[1], isinstance(model.visual, ModifiedResNet))
    if found != (cfg["embed_dim"], resnet):
        kinds = ("ResNet" if found[1] else "ViT", "ResNet" if resnet else "ViT")
        raise CheckpointError(f"{path} holds a {kinds[0]} CLIP of width {found[0]}, not {model_name} "
                              f"({kinds[1]}, width {cfg['embed_dim']})")


def build_feature_crop(
    model_name: str,
    checkpoint: str | Path | None = None,
    *,
    openai_layout: bool = False,
    random_init: bool = False,
    input_size: int | None = None,
) -> tuple[FeatureCropRecognizer, ClipTextTower]:
    """The recognizer over ``model_name``'s image tower and the text tower of the same CLIP model,
    both from one read of the file. ``model_name`` is any open_clip architecture whose image tower
    is a ResNet or a class-token ViT (``open_clip.list_models()``).

    ``checkpoint``: an open_clip checkpoint, loaded strictly by open_clip, or with ``openai_layout``
    an OpenAI CLIP file read like :func:`~ovsam_ros.model.clip_backbone.load_openai_clip`.
    ``random_init`` builds random weights and takes no file.
    """
    if random_init == (checkpoint is not None):
        raise ValueError("give exactly one of a checkpoint path or random_init=True")
    if model_name not in open_clip.list_models():
        raise FeatureCropError(f"unknown open_clip model {model_name!r}; open_clip.list_models() lists them "
                               "(e.g. RN50, ViT-B-32, ViT-S-32)")
    vision = open_clip.get_model_config(model_name)["vision_cfg"]
    if vision.get("timm_model_name") or vision.get("attentional_pool"):
        # Deliberately not supported: their pooling (timm heads, attentional pools) has no per-location
        # form, so a mask-weighted crop of a dense map would not be what the model embeds.
        tower = vision.get("timm_model_name") or "attentional pool"
        raise FeatureCropError(f"{model_name}'s image tower ({tower}) has no dense feature map to crop; "
                               "Feature-Crop takes open_clip's ResNet and class-token ViT towers (RN50..., "
                               "ViT-S/B/L/H...)")
    if random_init:
        model = open_clip.create_model(model_name, pretrained=None)
    elif openai_layout:
        model = load_openai_clip(checkpoint)
        _check_architecture(model, model_name, Path(checkpoint))
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"CLIP checkpoint file not found: {path}")
        try:
            model = open_clip.create_model(model_name, pretrained=str(path))
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path} does not fit open_clip model {model_name!r}: {exc}") from exc
    recognizer = FeatureCropRecognizer(model.visual, input_size=input_size)
    return recognizer, ClipTextTower(model, model_name)
