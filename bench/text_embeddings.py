"""How long building and switching text-embedding vocabularies takes; prints JSON.

* build: embeds the first ``--classes`` ImageNet-21k classes with the (random-weight) RN50x16 text tower
  and extrapolates to all 21,843 classes (40,745 synonyms x 14 templates).
* switch: a full-size ImageNet-21k cache entry ``[21843, 15, 768]`` is written into a temporary cache
  (random unit vectors: only the size matters for timing), then ``get_or_build`` is timed on it, plus the
  first full read of the mapped tensor (what the first classification pays to page it in).

Usage: ``python bench/text_embeddings.py [--classes 8] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import open_clip
import torch

from ovsam_ros.vocab import Vocabulary, base_mask_for
from ovsam_ros.vocab import vocabulary as vocabulary_module
from ovsam_ros.vocab.templates import VILD_TEMPLATES
from ovsam_ros.vocab.text_embeddings import EmbeddingCache, embed_vocabulary, text_tower_hash


def bench_build(model, tokenizer, device: str, classes: int) -> dict:
    full = Vocabulary.from_name("imagenet21k")
    subset = Vocabulary(f"imagenet21k[:{classes}]", full.classes[:classes])
    synonyms = sum(len(c) for c in subset.classes)
    start = time.perf_counter()
    embed_vocabulary(subset, model, tokenizer, device, progress=False)
    seconds = time.perf_counter() - start
    total = sum(len(c) for c in full.classes)
    return {
        "classes": classes,
        "synonyms": synonyms,
        "prompts": synonyms * len(VILD_TEMPLATES),
        "seconds": round(seconds, 2),
        "prompts_per_second": round(synonyms * len(VILD_TEMPLATES) / seconds, 2),
        "imagenet21k_synonyms": total,
        "imagenet21k_extrapolated_hours": round(seconds / synonyms * total / 3600, 2),
    }


def bench_switch(model, device: str, dtype: str) -> dict:
    vocabulary_module._preset.cache_clear()
    start = time.perf_counter()
    vocab = Vocabulary.from_name("imagenet21k")
    load_names = time.perf_counter() - start
    start = time.perf_counter()
    base_mask_for(vocab, "lvis")
    base_mask = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as root:
        cache = EmbeddingCache(root, dtype=dtype)
        key = cache.key(vocab, text_tower_hash(model), VILD_TEMPLATES)
        npy, meta = cache.paths(key)
        rng = np.random.default_rng(0)
        array = rng.standard_normal((len(vocab), vocab.max_synonyms, 768), dtype=np.float32)
        array /= np.linalg.norm(array, axis=-1, keepdims=True)
        np.save(npy, array.astype(dtype))
        meta.write_text("{}")
        del array
        start = time.perf_counter()
        emb = cache.get_or_build(vocab, model, None, device, progress=False)  # a hit never tokenizes
        switch = time.perf_counter() - start
        start = time.perf_counter()
        emb.sum().item()
        first_read = time.perf_counter() - start
        size = npy.stat().st_size
    return {
        "dtype": dtype,
        "shape": list(emb.shape),
        "file_mb": round(size / 2**20, 1),
        "load_names_s": round(load_names, 3),
        "base_mask_s": round(base_mask, 3),
        "switch_s": round(switch, 4),
        "first_full_read_s": round(first_read, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = open_clip.create_model("RN50x16", pretrained=None).eval()
    model.visual = torch.nn.Identity()
    model.to(args.device)
    tokenizer = open_clip.get_tokenizer("RN50x16")
    report = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "switch": [bench_switch(model, args.device, d) for d in ("float32", "float16")],
        "build": bench_build(model, tokenizer, args.device, args.classes) if args.classes else None,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
