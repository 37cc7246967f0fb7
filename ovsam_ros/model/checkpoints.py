"""Reading checkpoint files and loading them into modules with every key accounted for.

The official files are pickled ``.pth`` state dicts, sometimes under a top-level ``state_dict`` key,
read by key prefix (``neck_student.``, ``mask_decoder.``, ``fpn_neck.``, ``prompt_encoder.``).
Files we write ourselves are safetensors. A missing key is an error that names it; keys the target
does not have are reported, never silently dropped. Pickles are read with ``weights_only=True``
(or, for :func:`read_zip_prefix`, an unpickler that admits even less).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _tensor_ref(storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                *_: object) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _parameter_ref(data: _TensorRef, *_: object) -> _TensorRef:
    return data


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                   "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
                   "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool}
_INDEX_GLOBALS = {("collections", "OrderedDict"): OrderedDict,
                  ("torch._utils", "_rebuild_tensor_v2"): _tensor_ref,
                  ("torch._utils", "_rebuild_parameter"): _parameter_ref}


class _IndexUnpickler(pickle.Unpickler):
    """Reads a torch zip archive's ``data.pkl`` into tensor *references* (record, offset, shape).

    ``torch.load`` materialises every storage record as it unpickles, so taking a few tensors out of
    a remote 2.5 GB file by range requests needs the index first. Admits only a plain (Ordered)dict
    of tensors and storages: any other global is refused, so nothing is imported or run."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _INDEX_GLOBALS:
            return _INDEX_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]  # the storage class stands for its dtype
        raise pickle.UnpicklingError(f"refusing global {module}.{name} (only tensors are read)")

    def persistent_load(self, pid: tuple) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        if not isinstance(pid[1], torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {pid[1]!r:.80}")
        return _StorageRef(str(pid[2]), pid[1])


def read_zip_prefix(archive: zipfile.ZipFile, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix + '.'`` (keys kept whole) of a torch zip-format checkpoint, reading
    only ``data.pkl`` and those tensors' storage records from ``archive``.

    ``archive`` may be a local file or a remote one read by HTTP range requests; ``zipfile`` checks
    each record's CRC-32. The values equal ``torch.load``'s bit for bit (same bytes, same strides)."""
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(f"not a torch zip checkpoint (data.pkl records: {pickles})")
    root = pickles[0].split("/")[0]
    if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder") != b"little":
        raise CheckpointError("big-endian checkpoints are not supported")
    try:
        with archive.open(pickles[0]) as f:
            obj = _IndexUnpickler(f).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError) as exc:
        raise CheckpointError(f"cannot index {pickles[0]}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint does not hold a state dict (found {type(obj).__name__})")
    refs = {k: v for k, v in obj.items() if isinstance(v, _TensorRef) and k.startswith(prefix + ".")}
    if not refs:
        raise CheckpointError(f"no tensors under prefix {prefix!r} in the checkpoint")
    storages: dict[str, torch.Tensor] = {}
    out = {}
    for key, ref in refs.items():
        record = ref.storage.key
        if record not in storages:
            raw = bytearray(archive.read(f"{root}/data/{record}"))
            storages[record] = torch.frombuffer(raw, dtype=ref.storage.dtype) if raw else \
                torch.empty(0, dtype=ref.storage.dtype)
        out[key] = storages[record].as_strided(ref.size, ref.stride, ref.offset)
    return out
