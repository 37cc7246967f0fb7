"""Text embeddings ``[C, P, D]`` of a vocabulary, computed as the released OVSAM computed them, and cached.

Per synonym: the CLIP text embedding of each prompt template, L2-normalised, averaged over the templates
and normalised again. Classes with fewer than P synonyms are padded by repeating their first synonym, so
"max over synonyms" in the classifier is unchanged by the padding.

Embedding 21,843 ImageNet-21k classes means ~570k text-tower passes: minutes on a GPU, many hours on a
CPU. So results are cached on disk under ``cache_dir() / "text_embeddings"``, keyed by the text tower's
weights, the vocabulary's content and the templates, and read back memory-mapped: switching to a cached
vocabulary costs a file open, not a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn
from tqdm import tqdm

from ovsam_ros.assets import cache_dir
from ovsam_ros.vocab.templates import VILD_TEMPLATES, check_templates, templates_hash
from ovsam_ros.vocab.vocabulary import Vocabulary

log = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], torch.Tensor]
CACHE_FORMAT = 1
HASH_SAMPLES = 4096


class TextEmbeddingError(ValueError):
    """Text embeddings that cannot be computed from the given inputs; the message says why."""


class TextModel(Protocol):
    """What embedding needs of a text tower: open_clip's ``encode_text`` (token ids -> ``[B, D]``)."""

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


def _encode(model: TextModel, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, cut short where that is exact.

    open_clip's ``CLIP.encode_text`` always runs all 77 token positions. Its text transformer is causal
    and the pooled output is taken at the end-of-text token, which never attends to later positions, so
    running only up to the longest prompt of the batch (~15 tokens for the templates) gives the same
    embedding about 5x faster. open_clip has no switch for this, so for ``open_clip.CLIP`` models we
    deliberately run its own modules on the shortened sequence; any other model uses ``encode_text``.
    """
    causal_argmax = isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax"
    if not causal_argmax or model.attn_mask is None:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, "argmax")
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _padding_index(vocab: Vocabulary) -> torch.Tensor:
    """``[C, P]`` rows into the flat synonym list; missing synonyms point at the class's first one."""
    counts = torch.tensor([len(c) for c in vocab.classes])
    offsets = torch.cumsum(counts, 0) - counts
    slots = torch.arange(vocab.max_synonyms)[None, :]
    return offsets[:, None] + torch.where(slots < counts[:, None], slots, torch.zeros_like(slots))


def _check_device(model: TextModel, device: torch.device) -> None:
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if param is not None and param.device.type != device.type:
        raise TextEmbeddingError(f"the text model is on {param.device}, but asked for on {device}")


@torch.inference_mode()
def embed_vocabulary(
    vocab: Vocabulary,
    text_model: TextModel,
    tokenizer: Tokenizer,
    device: torch.device | str,
    batch_size: int = 256,
    progress: bool | Callable[[int, int], None] = True,
    templates: Sequence[str] = VILD_TEMPLATES,
) -> torch.Tensor:
    """L2-normalised ``[C, P, D]`` float32 embeddings on ``device`` (the text model must already be there).

    ``batch_size`` counts prompts (synonym x template strings) per text-tower pass. ``progress``: a
    progress bar, or a callable given (names done, names in all) after each pass (the node's log and
    diagnostics).
    """
    templates = check_templates(templates)
    if batch_size < 1:
        raise TextEmbeddingError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    _check_device(text_model, device)
    synonyms = [s for synonyms in vocab.classes for s in synonyms]
    per_pass = max(1, batch_size // len(templates))
    parts = []
    report = progress if callable(progress) else None
    with tqdm(total=len(synonyms), desc=f"embedding {vocab.name}", unit="name",
              disable=progress is not True) as bar:
        for start in range(0, len(synonyms), per_pass):
            chunk = synonyms[start:start + per_pass]
            tokens = tokenizer([t.format(s) for s in chunk for t in templates]).to(device)
            emb = F.normalize(_encode(text_model, tokens).float(), dim=-1)
            parts.append(F.normalize(emb.view(len(chunk), len(templates), -1).mean(dim=1), dim=-1))
            bar.update(len(chunk))
            if report is not None:
                report(start + len(chunk), len(synonyms))
    return torch.cat(parts)[_padding_index(vocab).to(device)]


def text_tower_hash(model: TextModel) -> str:
    """Identity of a text tower's weights, cheap enough to compute on every cache lookup.

    Hashes every non-``visual.`` tensor's name, shape and dtype, plus ~4096 evenly strided values of
    each (as float32). Two different checkpoints or random initialisations differ in every sample; an
    edit touching only a few weights between the samples would go unnoticed, which no released or
    fine-tuned tower does. Hashing all ~120 M values would take about a second per lookup.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.startswith("visual."):
            continue
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // HASH_SAMPLES)]
        digest.update(sample.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class EmbeddingCache:
    """Text embeddings on disk: one ``<key>.npy`` (``[C, P, D]``) plus ``<key>.json`` (what it holds).

    Files are read with ``np.load(mmap_mode="c")``: memory-mapped like ``"r"``, but copy-on-write, so
    torch can wrap the array without copying while nothing can ever write back into the cache.
    """

    def __init__(self, root: str | Path | None = None, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16"):
            raise TextEmbeddingError(f"cache dtype must be 'float32' or 'float16', got {dtype!r}")
        self.root = Path(root) if root is not None else cache_dir() / "text_embeddings"
        self.dtype = dtype

    def key(self, vocab: Vocabulary, text_hash: str, templates: Sequence[str]) -> str:
        parts = [str(CACHE_FORMAT), self.dtype, text_hash, vocab.content_hash, templates_hash(templates)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def load(self, key: str, vocab: Vocabulary, device: torch.device | str,
             any_synonyms: bool = False) -> torch.Tensor | None:
        """The cached embeddings for ``key`` on ``device``, or None when absent or unusable.
        ``any_synonyms``: the second dimension need not be the vocabulary's synonym count (an imported
        file, :mod:`ovsam_ros.vocab.embedding_files`, has its own)."""
        npy, meta = self.paths(key)
        if not (npy.exists() and meta.exists()):
            return None
        try:
            array = np.load(npy, mmap_mode="c")
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable text-embedding cache file %s: %s", npy, exc)
            return None
        expected = (len(vocab), array.shape[1] if any_synonyms and array.ndim == 3 else vocab.max_synonyms)
        if array.ndim != 3 or array.shape[:2] != expected or array.dtype != self.dtype:
            log.warning("ignoring text-embedding cache file %s: shape %s %s does not fit %s",
                        npy, array.shape, array.dtype, vocab.label)
            return None
        return torch.from_numpy(array).to(device=device, dtype=torch.float32)

    def get_or_build(
        self,
        vocab: Vocabulary,
        text_model: TextModel,
        tokenizer: Tokenizer,
        device: torch.device | str,
        templates: Sequence[str] = VILD_TEMPLATES,
        batch_size: int = 256,
        progress: bool | Callable[[int, int], None] = True,
    ) -> torch.Tensor:
        """``[C, P, D]`` float32 embeddings on ``device``: read from the cache, or built once and stored.

        A fresh build is stored first and returned as read back, so a hit and a miss give identical values.
        """
        templates = check_templates(templates)
        text_hash = text_tower_hash(text_model)
        key = self.key(vocab, text_hash, templates)
        cached = self.load(key, vocab, device)
        if cached is not None:
            return cached
        started = time.perf_counter()
        embeddings = embed_vocabulary(vocab, text_model, tokenizer, device, batch_size, progress, templates)
        seconds = time.perf_counter() - started
        array = embeddings.cpu().numpy().astype(self.dtype)
        npy, meta = self.paths(key)
        write_atomic(npy, lambda p: np.save(p, array))
        info = {
            "format": CACHE_FORMAT,
            "vocabulary": vocab.name,
            "vocabulary_hash": vocab.content_hash,
            "classes": len(vocab),
            "shape": list(array.shape),
            "dtype": self.dtype,
            "text_tower_hash": text_hash,
            "templates_hash": templates_hash(templates),
            "templates": list(templates),
            "build_seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_atomic(meta, lambda p: p.write_text(json.dumps(info, indent=1)))
        log.info("embedded %s (%d classes) in %.1f s -> %s", vocab.label, len(vocab), seconds, npy)
        loaded = self.load(key, vocab, device)
        if loaded is None:
            raise TextEmbeddingError(f"text-embedding cache file {npy} could not be read back")
        return loaded
