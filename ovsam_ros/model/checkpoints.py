"""Reading checkpoint files and loading them into modules with every key accounted for.

The official files are pickled ``.pth`` state dicts, sometimes under a top-level ``state_dict`` key,
read by key prefix (``neck_student.``, ``mask_decoder.``, ``fpn_neck.``, ``prompt_encoder.``).
Files we write ourselves are safetensors. A missing key is an error that names it; keys the target
does not have are reported, never silently dropped.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the module."""


def read_state_dict(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or pickled ``.pt``/``.pth`` file into a flat CPU state dict.

    ``mmap`` maps a zip-format pickle instead of reading it whole, for taking a few tensors out of a
    big file (OVSAM reads only the prompt encoder of the 2.5 GB SAM ViT-H file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        obj = torch.load(str(path), map_location="cpu", weights_only=True,
                         mmap=mmap and zipfile.is_zipfile(path))
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def take_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under ``prefix + '.'`` with the prefix stripped (the official loader's rule)."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)}


def _show(keys: list[str], limit: int = 10) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    allow_unexpected: bool = False,
    ignore_missing: tuple[str, ...] = (),
) -> list[str]:
    """Load ``state_dict`` into ``module``; raise on any missing key, naming it and ``what``.

    Returns the unexpected keys (an error unless ``allow_unexpected``). ``ignore_missing`` lists
    module keys that are deliberately not in the file (e.g. buffers computed at run time).
    """
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(state_dict) - set(ignore_missing))
    unexpected = sorted(set(state_dict) - expected)
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} missing key(s): {_show(missing)}")
    if unexpected:
        if not allow_unexpected:
            raise CheckpointError(f"{what}: {len(unexpected)} unexpected key(s): {_show(unexpected)}")
        log.warning("%s: ignoring %d unexpected key(s): %s", what, len(unexpected), _show(unexpected))
    own = module.state_dict()
    for key in expected & set(state_dict):
        if tuple(own[key].shape) != tuple(state_dict[key].shape):
            raise CheckpointError(
                f"{what}: {key} has shape {tuple(state_dict[key].shape)}, expected {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
    return unexpected


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict as safetensors (contiguous, shared storage broken)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in state_dict.items()}, str(path))
    return path
