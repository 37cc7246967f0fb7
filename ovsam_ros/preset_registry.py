"""The presets: their names, what each one is, which weight files it reads and how it names masks.

The one list of presets. The builders (:mod:`ovsam_ros.model.presets`), the weights registry
(:mod:`ovsam_ros.weights`), the CLI's ``--model`` choices and the ``model.preset`` parameter all read
it. It imports nothing heavy (no torch), so the config can validate against it.

How each preset names masks, and so which ``model.recognition`` it takes:

* ``ovsam-*``: the trained CLIP2SAM head and the frozen-CLIP branch of OVSAM's own CLIP (RN50x16,
  the model it was trained on; no other ``clip_model``). ``head``, ``clip`` and ``ensemble`` all apply;
  ``auto`` is ``ensemble``.
* ``sam-clip``, and ``mobilesam`` with a ``clip_model``: a frozen open_clip model pools its dense
  feature map under each mask (the paper's Feature-Crop baseline). Only ``clip`` applies (``auto`` is
  ``clip``): there is no trained head, so ``head`` and ``ensemble`` are refused, not quietly mapped.
* ``mobilesam`` without a ``clip_model`` only segments: there is no recognizer whose mode could be
  chosen, so the mode is not checked (every command passes one) and nothing is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OVSAM_CLIP_MODEL = "RN50x16"
"""The CLIP model OVSAM's adapters and head were trained on, and sam-clip's default CLIP."""

RECOGNITION_MODES = ("auto", "ensemble", "head", "clip")


class PresetError(ValueError):
    """An unknown preset, or options it does not take; the message says why."""


@dataclass(frozen=True)
class PresetInfo:
    """``family`` picks the builder (``ovsam``, ``mobilesam``, ``sam``); ``files`` maps roles to keys of
    :data:`ovsam_ros.weights.FILES` (``{sam_variant}`` is filled in), the CLIP file aside;
    ``clip``: ``fixed`` (always OVSAM's CLIP), ``default`` (OVSAM's CLIP unless ``clip_model`` says
    otherwise) or ``optional`` (names masks only with a ``clip_model``); ``classes``: the classes the
    checkpoint was trained on (its base classes), if any."""

    name: str
    description: str
    family: str
    clip: str
    files: dict[str, str] = field(default_factory=dict)
    classes: str | None = None


PRESETS: dict[str, PresetInfo] = {p.name: p for p in (
    PresetInfo("ovsam-lvis", "Open-Vocabulary SAM, CLIP2SAM trained on LVIS (default)", "ovsam", "fixed",
               {"sam2clip": "sam2clip", "clip2sam": "clip2sam_lvis", "sam": "sam_vit_h_prompt_encoder"},
               "lvis"),
    PresetInfo("ovsam-coco", "Open-Vocabulary SAM, CLIP2SAM trained on COCO", "ovsam", "fixed",
               {"sam2clip": "sam2clip", "clip2sam": "clip2sam_coco", "sam": "sam_vit_h_prompt_encoder"},
               "coco"),
    PresetInfo("mobilesam", "MobileSAM (TinyViT-5M + SAM decoder); names masks with a clip_model",
               "mobilesam", "optional", {"sam": "mobile_sam"}),
    PresetInfo("sam-clip", "SAM ViT-B/L/H + any open_clip model (Feature-Crop baseline)", "sam", "default",
               {"sam": "sam_{sam_variant}"}),
)}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
DEFAULT_PRESET = PRESET_NAMES[0]


def preset_info(preset: str) -> PresetInfo:
    if preset not in PRESETS:
        raise PresetError(f"unknown preset {preset!r}; choose from {', '.join(PRESET_NAMES)}")
    return PRESETS[preset]


def clip_model_of(preset: str, clip_model: str | None) -> str | None:
    """The CLIP model ``preset`` runs with ``clip_model`` asked for (None or "": the preset's default);
    None: no CLIP (mobilesam without one). Refuses a CLIP OVSAM was not trained on."""
    info = preset_info(preset)
    if info.clip == "fixed":
        if clip_model not in (None, "", OVSAM_CLIP_MODEL):
            raise PresetError(f"{preset} is trained on CLIP {OVSAM_CLIP_MODEL}; clip_model={clip_model!r} "
                                    "does not fit it (mobilesam and sam-clip take any open_clip model)")
        return OVSAM_CLIP_MODEL
    if clip_model:
        return clip_model
    return OVSAM_CLIP_MODEL if info.clip == "default" else None


def recognition_mode(preset: str, recognition: str, clip_model: str | None) -> str | None:
    """The naming ``preset`` runs for ``model.recognition`` (rules in the module docstring): ``head``,
    ``clip``, ``ensemble``, or None (the model only segments). Raises :class:`PresetError` with
    the reason for a mode that does not apply."""
    if recognition not in RECOGNITION_MODES:
        raise PresetError(f"recognition must be one of {', '.join(RECOGNITION_MODES)}; got {recognition!r}")
    info = preset_info(preset)
    clip = clip_model_of(preset, clip_model)
    if info.family == "ovsam":
        return "ensemble" if recognition == "auto" else recognition
    if clip is None:
        return None
    if recognition in ("head", "ensemble"):
        raise PresetError(f"{preset} names masks with a frozen CLIP only (Feature-Crop over {clip}); it "
                                f"has no trained CLIP2SAM head, so recognition={recognition!r} cannot apply "
                                "(use 'clip' or 'auto'; the ovsam-* presets have the head)")
    return "clip"
