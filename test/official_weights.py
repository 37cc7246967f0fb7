"""Random weights written in the official OVSAM checkpoint layouts, for loader and parity tests.

No real OVSAM/CLIP weights exist here, so tests prove the loaders with files that have exactly the
official keys, shapes and file dtypes (test/data/ovsam-checkpoint-layout.json). Values are random
but scaled so a forward pass stays finite (BatchNorm variances positive, norms near identity).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch

LAYOUT_PATH = Path(__file__).parent / "data" / "ovsam-checkpoint-layout.json"

# Short name -> (layout entry, file name on disk). The file names are the official ones.
FILES: dict[str, tuple[str, str]] = {
    "sam2clip": ("sam2clip_vith_rn50x16.pth", "sam2clip_vith_rn50x16.pth"),
    "clip2sam": ("clip2sam_lvis_rn50x16.pth", "clip2sam_lvis_rn50x16.pth"),
    "sam": ("sam_vit_h_4b8939.pth", "sam_vit_h_4b8939.pth"),
    "clip": ("RN50x16.pt (OpenAI CLIP)", "RN50x16.pt"),
}

# The real SAM ViT-H file holds more than the prompt encoder; a stand-in key proves other prefixes
# are ignored by prefix loading.
SAM_EXTRA_KEY = "image_encoder.neck.0.weight"

_FAN_IN_KINDS = ("Conv2d", "Linear", "NonDynamicallyQuantizableLinear", "MultiheadAttention")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


def layout_entries(which: str) -> list[dict]:
    """The layout's key entries (key, shape, dtype, module_type, ...) of one file, in file order."""
    if which not in FILES:
        raise ValueError(f"unknown official file {which!r}; choose from {sorted(FILES)}")
    layout = json.loads(LAYOUT_PATH.read_text())
    return [entry for group in layout[FILES[which][0]]["groups"] for entry in group["keys"]]


def _random_tensor(entry: dict, gen: torch.Generator) -> torch.Tensor:
    """One tensor with a scale that suits what the owning module does with it."""
    shape = tuple(entry["shape"])
    name = entry["key"].rsplit(".", 1)[-1]
    kind = entry["module_type"]

    def normal(std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    if name == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    if name == "running_var":
        return torch.rand(shape, generator=gen) + 0.5
    if kind in ("BatchNorm2d", "LayerNorm", "LayerNorm2d") and name == "weight":
        return normal(0.1, 1.0)
    if name == "logit_scale":
        return torch.full(shape, math.log(1 / 0.07))
    if name in ("running_mean", "bias", "in_proj_bias"):
        return normal(0.1 if kind in ("BatchNorm2d", "LayerNorm", "LayerNorm2d") else 0.02)
    if kind == "ConvTranspose2d":  # weight [in, out, k, k]: each output sums in * k*k / stride^2 terms
        return normal(shape[0] ** -0.5)
    if len(shape) >= 2 and kind in _FAN_IN_KINDS:
        return normal(math.prod(shape[1:]) ** -0.5)
    if name == "text_projection":
        return normal(shape[0] ** -0.5)
    if name == "positional_encoding_gaussian_matrix":
        return normal(1.0)
    if kind == "Embedding":
        return normal(0.02 if shape[0] > 1000 else 0.5)
    if name in ("rel_pos_h", "rel_pos_w", "pos_embed", "positional_embedding"):
        return normal(0.02)
    raise ValueError(f"no init rule for {entry['key']} ({kind})")


def random_official_state_dict(which: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every key of one official file, in the dtype the file stores them.

    The OpenAI CLIP file keeps conv/linear/attention weights in fp16 (``openai_file_dtype``)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in layout_entries(which):
        tensor = _random_tensor(entry, gen)
        dtype = _DTYPES[entry.get("openai_file_dtype") or entry["dtype"]]
        state[entry["key"]] = tensor.to(dtype)
    if which == "sam":
        state[SAM_EXTRA_KEY] = torch.randn((256, 1280, 1, 1), generator=gen) * 0.03
    return state


def write_official_files(
    tmp_dir: str | Path,
    which: Iterable[str] = ("sam2clip", "clip2sam", "clip", "sam"),
    seed: int = 0,
    wrap_state_dict: bool = False,
    omit: Iterable[str] = (),
) -> dict[str, Path]:
    """Write each requested file as a pickled state dict under its official name in ``tmp_dir``.

    ``wrap_state_dict`` nests the tensors under a top-level ``state_dict`` key (as mmengine saves);
    ``omit`` lists full keys to leave out (to test missing-key errors). Returns short name -> path.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    omitted = set(omit)
    paths: dict[str, Path] = {}
    for offset, name in enumerate(which):
        state = random_official_state_dict(name, seed=seed + offset)
        state = {k: v for k, v in state.items() if k not in omitted}
        path = tmp_dir / FILES[name][1]
        torch.save({"state_dict": state, "meta": {}} if wrap_state_dict else state, str(path))
        paths[name] = path
    return paths
