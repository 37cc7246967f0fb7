"""Released class-embedding files as vocabularies: a ``[C, P, D]`` tensor of L2-normalised CLIP text
embeddings (P synonyms or prompt sets per class) plus the C class names it belongs to.

The official OVSAM code names regions with such precomputed files (``RN50x16_LVISV1Dataset.pth``,
``RN50x16_CocoOVDataset.pth``, read from ``~/.cache/embd``), not with a text-tower pass; the COCO one
carries synonym lists the shipped COCO vocabulary does not have. Importing one checks it (shape,
finite values, unit rows, class count, embedding width of the text tower it must match) and stores
it in the text-embedding cache beside the built vocabularies, keyed by the file's content and the
vocabulary, so later uses are a memory-mapped read. Every row the file holds is used: the released
classifier takes the max over all P rows, padding included, and so does ours.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from ovsam_ros.vocab.text_embeddings import CACHE_FORMAT, EmbeddingCache, write_atomic
from ovsam_ros.vocab.vocabulary import PRESETS, Vocabulary

# shipped vocabulary -> the released file the ovsam-* presets use for it when it is in the weights folder
RELEASED_FILES = {"lvis": "RN50x16_LVISV1Dataset.pth", "coco": "RN50x16_CocoOVDataset.pth"}
NORM_TOLERANCE = 1e-4


class EmbeddingFileError(ValueError):
    """A class-embedding file that cannot name this vocabulary; the message says why."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_class_embeddings(path: str | Path) -> torch.Tensor:
    """The ``[C, P, D]`` float32 tensor of a ``.pth``/``.pt`` (a pickled tensor, read with
    ``weights_only``) or ``.npy`` file, checked for shape, finite values and unit-norm rows."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EmbeddingFileError(f"class-embedding file not found: {path}")
    try:
        if path.suffix == ".npy":
            obj = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and numpy raise many types for a corrupt file
        raise EmbeddingFileError(f"cannot read class-embedding file {path}: {exc}") from None
    if not isinstance(obj, torch.Tensor):
        raise EmbeddingFileError(f"{path} holds a {type(obj).__name__}, not a [C, P, D] tensor")
    if obj.ndim != 3 or 0 in obj.shape or not obj.is_floating_point():
        raise EmbeddingFileError(f"{path}: expected a [C, P, D] float tensor, got {obj.dtype} "
                                 f"{list(obj.shape)}")
    emb = obj.float()
    if not torch.isfinite(emb).all():
        raise EmbeddingFileError(f"{path} contains NaN or infinite values")
    worst = float((emb.norm(dim=-1) - 1).abs().max())
    if worst > NORM_TOLERANCE:
        raise EmbeddingFileError(f"{path}: rows must be L2-normalised; the worst norm is off by {worst:.3g}")
    return emb


def check_fits(embeddings: torch.Tensor, vocab: Vocabulary, embed_dim: int, source: str) -> None:
    """The file names ``vocab`` (one row block per class) in the text tower's width ``embed_dim``."""
    classes, _, dim = embeddings.shape
    if classes != len(vocab):
        raise EmbeddingFileError(f"{source} has {classes} classes but vocabulary {vocab.label} has "
                                 f"{len(vocab)} names")
    if dim != embed_dim:
        raise EmbeddingFileError(f"{source} holds {dim}-d embeddings but the model's text tower gives "
                                 f"{embed_dim}-d ones")


def import_class_embeddings(path: str | Path, vocab: Vocabulary, embed_dim: int,
                            cache: EmbeddingCache | None = None,
                            device: torch.device | str = "cpu") -> tuple[torch.Tensor, Path]:
    """``[C, P, D]`` embeddings of ``vocab`` from a released file, checked and cached; returns them
    (memory-mapped from the cache) and the cache file. A file already imported is only hashed."""
    path = Path(path).expanduser()
    cache = EmbeddingCache() if cache is None else cache
    if not path.is_file():
        raise EmbeddingFileError(f"class-embedding file not found: {path}")
    source_hash = file_sha256(path)
    parts = [str(CACHE_FORMAT), "imported", cache.dtype, source_hash, vocab.content_hash]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
    npy, meta = cache.paths(key)
    cached = cache.load(key, vocab, device, any_synonyms=True)
    if cached is not None:
        check_fits(cached, vocab, embed_dim, str(path))
        return cached, npy
    embeddings = read_class_embeddings(path)
    check_fits(embeddings, vocab, embed_dim, str(path))
    array = embeddings.numpy().astype(cache.dtype)
    write_atomic(npy, lambda p: np.save(p, array))
    info = {"format": CACHE_FORMAT, "vocabulary": vocab.name, "vocabulary_hash": vocab.content_hash,
            "classes": len(vocab), "shape": list(array.shape), "dtype": cache.dtype,
            "imported_from": str(path), "source_sha256": source_hash,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(meta, lambda p: p.write_text(json.dumps(info, indent=1)))
    loaded = cache.load(key, vocab, device, any_synonyms=True)
    if loaded is None:
        raise EmbeddingFileError(f"text-embedding cache file {npy} could not be read back")
    return loaded, npy


def released_file_for(vocab: Vocabulary, weights_dir: Path) -> Path | None:
    """The released class-embedding file of a shipped, unmodified ``lvis`` or ``coco`` vocabulary when
    it lies in ``weights_dir``; else None."""
    filename = RELEASED_FILES.get(vocab.name)
    if filename is None or vocab.name not in PRESETS:
        return None
    if vocab.content_hash != Vocabulary.from_name(vocab.name).content_hash:
        return None
    path = weights_dir / filename
    return path if path.is_file() else None
