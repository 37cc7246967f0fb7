"""The frozen CLIP towers OVSAM builds on: ResNet stage taps C2..C5 with the attention pool; the text tower.

Everything is built by open_clip itself; this module only decides which parts are kept and how the
OpenAI file is read. OVSAM reads the OpenAI ``RN50x16.pt`` through open_clip's OpenAI path, which
casts conv/linear/attention weights to fp16 before loading and then back to fp32, so those weights
are fp16-rounded; :func:`load_openai_clip` goes through that same path to stay faithful.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, build_model_from_openai_state_dict
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from torch import nn

from ovsam_ros.preset_registry import OVSAM_CLIP_MODEL as DEFAULT_CLIP_MODEL

from .checkpoints import CheckpointError, read_state_dict


class ClipInputError(ValueError):
    """An image batch the CLIP tower cannot take."""


def _freeze(module: nn.Module) -> None:
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)


def read_openai_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP file: a TorchScript archive (as OpenAI ships it) or a plain
    state dict, tried in that order like open_clip's ``load_openai_model``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CLIP checkpoint file not found: {path}")
    # OpenAI ships RN50x16.pt as a TorchScript archive, which ``torch.load(weights_only=True)`` refuses
    # ("Cannot use weights_only=True with TorchScript archives"), so it goes through torch.jit.load.
    # The registry's copy is sha256-checked against OpenAI's published hash (it is in the download
    # URL) before this runs; a plain state dict falls through to the weights_only reader.
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript, but OpenAI ships its files that way
            warnings.simplefilter("ignore", FutureWarning)
            archive = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError):
        return read_state_dict(path)
    return {k: v for k, v in archive.state_dict().items()}


def load_openai_clip(path: str | Path) -> CLIP:
    """A frozen fp32 open_clip CLIP model from an OpenAI CLIP file, every key accounted for.

    open_clip infers the architecture from the tensor shapes, rounds the weights it keeps in fp16 to
    fp16, loads strictly (text-tower keys are required even where only the image tower is used)
    and we then cast to fp32, exactly as ``load_openai_model(..., precision='fp32')`` does.
    """
    state = read_openai_state_dict(path)
    try:
        model = build_model_from_openai_state_dict(state, cast_dtype=None)
    except KeyError as exc:
        raise CheckpointError(f"{path}: not an OpenAI CLIP state dict, missing key {exc}") from exc
    except RuntimeError as exc:  # strict load_state_dict: names missing/unexpected keys and bad shapes
        raise CheckpointError(f"{path}: OpenAI CLIP state dict does not fit: {exc}") from exc
    model.float()
    _freeze(model)
    return model


def _random_clip(model_name: str) -> CLIP:
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}")
    model = open_clip.create_model(model_name, pretrained=None)
    _freeze(model)
    return model


def _pick_clip(checkpoint: str | Path | None, model_name: str, random_init: bool) -> CLIP:
    if random_init:
        if checkpoint is not None:
            raise ValueError("give either a CLIP checkpoint or random_init=True, not both")
        return _random_clip(model_name)
    if checkpoint is None:
        raise ValueError("a CLIP checkpoint path is required (or random_init=True for random weights)")
    return load_openai_clip(checkpoint)


class ClipImageTower(nn.Module):
    """The frozen CLIP ResNet image tower, returning its four stage outputs (strides 4/8/16/32).

    ``attnpool`` is CLIP's attention pool over the C5 grid (12x12 for RN50x16), kept for the frozen
    CLIP classification branch that pools RoIAligned C5 crops.
    """

    def __init__(self, visual: ModifiedResNet) -> None:
        super().__init__()
        if not isinstance(visual, ModifiedResNet):
            raise ValueError(f"OVSAM needs a CLIP ResNet image tower, got {type(visual).__name__}")
        self.visual = visual
        self.attnpool: AttentionPool2d = visual.attnpool
        width = visual.layer1[0].conv1.out_channels
        self.channels: tuple[int, int, int, int] = (width * 4, width * 8, width * 16, width * 32)
        self.embed_dim: int = visual.output_dim
        self.pool_size: int = visual.image_size // 32
        _freeze(self)

    def train(self, mode: bool = True) -> ClipImageTower:
        """Stays in eval mode: the tower is frozen, BatchNorm must keep its running statistics."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``images`` ``[B, 3, H, W]`` with H and W multiples of 32 -> (C2, C3, C4, C5)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ClipInputError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % 32 or images.shape[-1] % 32:
            size = tuple(images.shape[-2:])
            raise ClipInputError(f"image height and width must be multiples of 32, got {size}")
        visual = self.visual
        c2 = visual.layer1(visual.stem(images.to(visual.conv1.weight.dtype)))
        c3 = visual.layer2(c2)
        c4 = visual.layer3(c3)
        c5 = visual.layer4(c4)
        return c2, c3, c4, c5


class ClipTextTower(nn.Module):
    """The frozen CLIP text tower with its tokenizer, for embedding class names."""

    def __init__(self, model: CLIP, model_name: str = DEFAULT_CLIP_MODEL) -> None:
        super().__init__()
        model.visual = nn.Identity()  # the image tower lives in ClipImageTower; drop it here
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.embed_dim: int = model.text_projection.shape[1]
        _freeze(self)

    def train(self, mode: bool = True) -> ClipTextTower:
        return super().train(False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not texts:
            raise ValueError("tokenize takes a non-empty list of strings")
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[T, D]``, one per string."""
        tokens = self.tokenize(texts).to(self.model.token_embedding.weight.device)
        return self.model.encode_text(tokens, normalize=True)


def build_clip_image_tower(
    checkpoint: str | Path | None = None, *, model_name: str = DEFAULT_CLIP_MODEL, random_init: bool = False
) -> ClipImageTower:
    """The image tower from an OpenAI CLIP file, or with random weights when ``random_init``.

    Random init builds only the ResNet (from open_clip's config for ``model_name``), not the text tower.
    """
    if random_init and checkpoint is None:
        cfg = open_clip.get_model_config(model_name)
        if cfg is None or cfg["vision_cfg"].get("patch_size") is not None:
            raise ValueError(f"{model_name!r} is not an open_clip CLIP ResNet model")
        vision = cfg["vision_cfg"]
        visual = ModifiedResNet(
            layers=vision["layers"],
            output_dim=cfg["embed_dim"],
            heads=vision["width"] * 32 // 64,  # open_clip's rule for ResNet attention-pool heads
            image_size=vision["image_size"],
            width=vision["width"],
        )
        return ClipImageTower(visual)
    return ClipImageTower(_pick_clip(checkpoint, model_name, random_init).visual)


def build_clip_towers(
    checkpoint: str | Path | None = None, *, model_name: str = DEFAULT_CLIP_MODEL, random_init: bool = False
) -> tuple[ClipImageTower, ClipTextTower]:
    """Both towers from one OpenAI CLIP file (read once), or random ones when ``random_init``."""
    model = _pick_clip(checkpoint, model_name, random_init)
    visual = model.visual
    return ClipImageTower(visual), ClipTextTower(model, model_name)


def build_clip_text_tower(
    checkpoint: str | Path | None = None, *, model_name: str = DEFAULT_CLIP_MODEL, random_init: bool = False
) -> ClipTextTower:
    """The text tower alone (the image tower is built and dropped)."""
    return ClipTextTower(_pick_clip(checkpoint, model_name, random_init), model_name)
