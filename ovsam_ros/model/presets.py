"""Preset name -> a ready :class:`Segmenter` with its weights (one place that knows every combination).

The presets themselves (names, files, naming rules) are listed once, in
:mod:`ovsam_ros.preset_registry`; this module builds them. Weights come from :mod:`ovsam_ros.weights`
(or ``files``, role -> path). ``random_init`` builds random weights on purpose (tests, benchmarks)
and is never a fallback for a missing file. The heavy builders are imported lazily so importing this
module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ovsam_ros import weights
from ovsam_ros.model.base import Recognizer, Segmenter
from ovsam_ros.preset_registry import (
    DEFAULT_PRESET,
    OVSAM_CLIP_MODEL,
    PRESETS,
    PresetError,
    PresetInfo,
    clip_model_of,
    preset_info,
    recognition_mode,
)

__all__ = ["DEFAULT_PRESET", "PRESETS", "PresetError", "build_model"]


@dataclass(frozen=True)
class BuildOptions:
    """``recognition``: the mode the registry resolved (None: segment only); ``clip_model``: the CLIP
    the preset runs (None: none)."""

    info: PresetInfo
    files: dict[str, Path]
    random_init: bool
    recognition: str | None
    clip_model: str | None
    sam_variant: str


def _ovsam(opts: BuildOptions) -> Segmenter:
    from ovsam_ros.model.ovsam import build_ovsam

    files = None if opts.random_init else opts.files
    return build_ovsam(opts.info.classes, files, opts.random_init, opts.recognition)


def _feature_crop(opts: BuildOptions) -> tuple[Recognizer, torch.nn.Module]:
    """The Feature-Crop recognizer and the text tower of the same CLIP model."""
    from ovsam_ros.model.feature_crop import build_feature_crop, is_openai_clip_file

    clip_model = opts.clip_model
    if opts.random_init:
        return build_feature_crop(clip_model, random_init=True)
    path = opts.files.get("clip")
    if path is None:
        raise PresetError(f"no weights for CLIP model {clip_model!r}: set model.clip_weights (--clip-weights)"
                          f" to an open_clip checkpoint of it or to OpenAI's {clip_model}.pt; only "
                          f"{', '.join(weights.CLIP_FILES)} has a file in the weights registry")
    path = Path(path)
    return build_feature_crop(clip_model, path, openai_layout=is_openai_clip_file(path, clip_model))


def _mobilesam(opts: BuildOptions) -> Segmenter:
    from ovsam_ros.model.sam import build_mobile_sam

    recognizer, text = _feature_crop(opts) if opts.clip_model else (None, None)
    model = build_mobile_sam(None if opts.random_init else _sam_file(opts), opts.random_init, recognizer)
    model.text_tower = text
    return model


def _sam_clip(opts: BuildOptions) -> Segmenter:
    from ovsam_ros.model.sam import build_sam_vit

    recognizer, text = _feature_crop(opts)
    checkpoint = None if opts.random_init else _sam_file(opts)
    model = build_sam_vit(opts.sam_variant, checkpoint, opts.random_init, recognizer)
    model.text_tower = text
    return model


def _sam_file(opts: BuildOptions) -> Path:
    if "sam" not in opts.files:
        raise PresetError("no SAM checkpoint: files needs a 'sam' entry")
    return Path(opts.files["sam"])


_BUILDERS: dict[str, Callable[[BuildOptions], Segmenter]] = {
    "ovsam": _ovsam, "mobilesam": _mobilesam, "sam": _sam_clip}
"""Builder per :attr:`PresetInfo.family`."""


def build_model(
    preset: str = DEFAULT_PRESET,
    weights_dir: Path | None = None,
    files: dict | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    recognition: str = "auto",
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
    the same dtype, which adds autocast. ``clip_model`` (any open_clip architecture) and
    ``clip_weights`` (its file: an open_clip checkpoint or OpenAI's layout) give mobilesam and sam-clip
    their CLIP; ``recognition`` is checked against what the preset can do
    (:func:`~ovsam_ros.preset_registry.recognition_mode`).
    """
    info = preset_info(preset)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise PresetError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if random_init and (files or clip_weights is not None):
        raise PresetError("give weight files or random_init=True, not both")
    mode = recognition_mode(preset, recognition, clip_model)
    clip = clip_model_of(preset, clip_model)
    if clip_weights is not None and info.clip == "fixed":
        raise PresetError(f"{preset} reads its CLIP ({OVSAM_CLIP_MODEL}) from the weights folder; "
                          "clip_weights is for mobilesam and sam-clip")
    if clip_weights is not None and clip is None:
        raise PresetError(f"clip_weights {clip_weights} given without a clip_model: name its open_clip "
                          "architecture (model.clip_model, --clip-model)")
    if random_init or files:
        resolved = {k: Path(v) for k, v in (files or {}).items()}
    else:
        resolved = weights.resolve(preset, weights_dir, offline=offline, sam_variant=sam_variant,
                                   clip_model="" if clip_weights is not None else clip)  # "": no file
    if clip_weights is not None:
        resolved["clip"] = Path(clip_weights)
    opts = BuildOptions(info, resolved, random_init, mode, clip, sam_variant)
    model = _BUILDERS[info.family](opts)
    return model.to(device=device, dtype=dtype).eval()
