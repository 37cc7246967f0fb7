"""Preset name -> a ready :class:`Segmenter` with its weights (one place that knows every combination).

=============  ==========================================================  =====================
preset         what                                                        names masks
=============  ==========================================================  =====================
ovsam-lvis     Open-Vocabulary SAM, CLIP2SAM trained on LVIS (default)     yes
ovsam-coco     Open-Vocabulary SAM, CLIP2SAM trained on COCO               yes
mobilesam      MobileSAM (TinyViT-5M + SAM decoder), 10 M params           with ``clip_model``
sam-clip       SAM ViT-B/L/H + an open_clip tower (Feature-Crop baseline)  yes
=============  ==========================================================  =====================

Weights come from :mod:`ovsam_ros.weights` (or ``files``, role -> path). ``random_init`` builds
random weights on purpose (tests, benchmarks) and is never a fallback for a missing file.
The heavy builders are imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ovsam_ros import weights
from ovsam_ros.model.base import Recognizer, Segmenter

DEFAULT_PRESET = "ovsam-lvis"
DEFAULT_CLIP_MODEL = "RN50x16"


class PresetError(ValueError):
    """An unknown preset or a combination of options a preset does not take."""


@dataclass(frozen=True)
class BuildOptions:
    files: dict[str, Path]
    random_init: bool
    recognition: str
    clip_model: str | None
    sam_variant: str


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    builder: Callable[[BuildOptions], Segmenter]


def _ovsam(variant: str) -> Callable[[BuildOptions], Segmenter]:
    def build(opts: BuildOptions) -> Segmenter:
        from ovsam_ros.model.ovsam import build_ovsam

        if opts.clip_model not in (None, DEFAULT_CLIP_MODEL):
            raise PresetError(f"OVSAM is trained on CLIP {DEFAULT_CLIP_MODEL}; clip_model="
                              f"{opts.clip_model!r} does not fit it (the sam-clip preset takes any CLIP)")
        files = None if opts.random_init else opts.files
        return build_ovsam(variant, files, opts.random_init, opts.recognition)

    return build


def _feature_crop(opts: BuildOptions, clip_model: str) -> tuple[Recognizer, torch.nn.Module]:
    """The Feature-Crop recognizer and the text tower of the same CLIP model."""
    from ovsam_ros.model.feature_crop import build_feature_crop

    if opts.random_init:
        return build_feature_crop(clip_model, random_init=True)
    path = opts.files.get("clip")
    if path is None:
        raise PresetError(f"no weights for CLIP model {clip_model!r}: pass files={{'clip': path}} (an "
                          f"open_clip checkpoint, or OpenAI's own file named {clip_model}.pt)")
    path = Path(path)
    return build_feature_crop(clip_model, path, openai_layout=path.name == f"{clip_model}.pt")


def _mobilesam(opts: BuildOptions) -> Segmenter:
    from ovsam_ros.model.sam import build_mobile_sam

    recognizer, text = _feature_crop(opts, opts.clip_model) if opts.clip_model else (None, None)
    model = build_mobile_sam(None if opts.random_init else _sam_file(opts), opts.random_init, recognizer)
    model.text_tower = text
    return model


def _sam_clip(opts: BuildOptions) -> Segmenter:
    from ovsam_ros.model.sam import build_sam_vit

    recognizer, text = _feature_crop(opts, opts.clip_model or DEFAULT_CLIP_MODEL)
    checkpoint = None if opts.random_init else _sam_file(opts)
    model = build_sam_vit(opts.sam_variant, checkpoint, opts.random_init, recognizer)
    model.text_tower = text
    return model


def _sam_file(opts: BuildOptions) -> Path:
    if "sam" not in opts.files:
        raise PresetError("no SAM checkpoint: files needs a 'sam' entry")
    return Path(opts.files["sam"])


PRESETS: dict[str, Preset] = {
    "ovsam-lvis": Preset("ovsam-lvis", "Open-Vocabulary SAM, LVIS-trained head (1203 classes seen)",
                         _ovsam("lvis")),
    "ovsam-coco": Preset("ovsam-coco", "Open-Vocabulary SAM, COCO-trained head", _ovsam("coco")),
    "mobilesam": Preset("mobilesam", "MobileSAM: fast segmentation; naming only with a CLIP model",
                        _mobilesam),
    "sam-clip": Preset("sam-clip", "SAM ViT-B/L/H + open_clip Feature-Crop baseline", _sam_clip),
}


def build_model(
    preset: str = DEFAULT_PRESET,
    weights_dir: Path | None = None,
    files: dict | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    recognition: str = "ensemble",
    clip_model: str | None = None,
    sam_variant: str = "vit_h",
    offline: bool | None = None,
    clip_weights: Path | None = None,
) -> Segmenter:
    """Build ``preset`` in eval mode on ``device``.

    ``files`` (role -> path) replaces the weights registry; otherwise missing files are fetched into
    ``weights_dir`` (unless offline), and a file that cannot be had raises
    :class:`~ovsam_ros.weights.WeightsError` saying how to get it. ``dtype`` fp16/bf16 casts the weights
    (halving their memory); run such a model through a :class:`~ovsam_ros.predictor.Predictor` with
    the same dtype, which adds autocast. ``clip_weights`` names the CLIP file of a Feature-Crop preset
    (mobilesam with ``clip_model``, sam-clip) instead of the registry's.
    """
    if preset not in PRESETS:
        raise PresetError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise PresetError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if random_init and files:
        raise PresetError("give weight files or random_init=True, not both")
    if clip_weights is not None and preset.startswith("ovsam-"):
        raise PresetError(f"{preset} reads its CLIP ({DEFAULT_CLIP_MODEL}) from the weights folder; "
                          "clip_weights is for mobilesam and sam-clip")
    if random_init or files:
        resolved = {k: Path(v) for k, v in (files or {}).items()}
    else:
        resolved = weights.resolve(preset, weights_dir, offline=offline, sam_variant=sam_variant,
                                   clip_model="" if clip_weights is not None else clip_model)  # "": no file
    if clip_weights is not None and not random_init:
        resolved["clip"] = Path(clip_weights)
    opts = BuildOptions(resolved, random_init, recognition, clip_model, sam_variant)
    model = PRESETS[preset].builder(opts)
    return model.to(device=device, dtype=dtype).eval()
