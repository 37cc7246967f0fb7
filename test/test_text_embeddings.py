"""Text embeddings: parity with open_clip on random RN50x16 weights, and the on-disk cache.

There are no real CLIP weights here, so the tower is open_clip's RN50x16 with random weights; the text
tower is slow on a CPU (~0.2-0.5 s per prompt), so these tests use a few names and templates each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovsam_ros.vocab import VILD_TEMPLATES, Vocabulary
from ovsam_ros.vocab.text_embeddings import (
    EmbeddingCache,
    TextEmbeddingError,
    embed_vocabulary,
    text_tower_hash,
)

TWO_TEMPLATES = VILD_TEMPLATES[:2]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = open_clip.create_model("RN50x16", pretrained=None).eval()
    model.visual = torch.nn.Identity()  # only the text tower is needed
    return model, open_clip.get_tokenizer("RN50x16")


@pytest.fixture
def text_passes(clip):
    """Counts text-transformer passes (each batch of prompts is one)."""
    calls = []
    handle = clip[0].transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


@torch.inference_mode()
def reference(vocab: Vocabulary, model, tokenizer, templates) -> torch.Tensor:
    """The released recipe, one open_clip ``encode_text`` call per prompt."""
    classes = []
    for synonyms in vocab.classes:
        rows = []
        for synonym in synonyms:
            per_template = torch.cat([model.encode_text(tokenizer([t.format(synonym)])) for t in templates])
            rows.append(F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=-1))
        rows += [rows[0]] * (vocab.max_synonyms - len(rows))
        classes.append(torch.stack(rows))
    return torch.stack(classes)


@pytest.mark.slow
def test_parity_with_open_clip(clip):
    model, tokenizer = clip
    vocab = Vocabulary.from_names(["Dog", "mug, coffee cup"])
    expected = reference(vocab, model, tokenizer, TWO_TEMPLATES)
    got = embed_vocabulary(vocab, model, tokenizer, "cpu", progress=False, templates=TWO_TEMPLATES)
    assert got.shape == (2, 2, 768) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2, 2))
    assert torch.equal(got[0, 1], got[0, 0])  # padding repeats the first synonym
    one_by_one = embed_vocabulary(vocab, model, tokenizer, "cpu", batch_size=1, progress=False,
                                  templates=TWO_TEMPLATES)
    torch.testing.assert_close(one_by_one, got, atol=2e-5, rtol=0)


def test_bad_arguments(clip):
    model, tokenizer = clip
    vocab = Vocabulary.from_names(["dog"])
    with pytest.raises(TextEmbeddingError, match="batch_size"):
        embed_vocabulary(vocab, model, tokenizer, "cpu", batch_size=0, progress=False)
    with pytest.raises(TextEmbeddingError, match="text model is on cpu"):
        embed_vocabulary(vocab, model, tokenizer, "cuda", progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        embed_vocabulary(vocab, model, tokenizer, "cpu", progress=False, templates=["a photo"])
    with pytest.raises(TextEmbeddingError, match="dtype"):
        EmbeddingCache(dtype="int8")


def test_text_tower_hash_tracks_the_weights(clip):
    model, _ = clip
    before = text_tower_hash(model)
    assert text_tower_hash(model) == before and len(before) == 64
    with torch.no_grad():
        model.transformer.resblocks[5].mlp.c_fc.weight.mul_(2)
        changed = text_tower_hash(model)
        model.transformer.resblocks[5].mlp.c_fc.weight.div_(2)
    assert changed != before and text_tower_hash(model) == before


def test_cache_hit_skips_the_text_model(clip, tmp_path, text_passes):
    model, tokenizer = clip
    cache = EmbeddingCache(tmp_path)
    vocab = Vocabulary.from_names(["mug"], name="kitchen")
    built = cache.get_or_build(vocab, model, tokenizer, "cpu", progress=False)  # all 14 templates
    assert built.shape == (1, 1, 768) and len(text_passes) == 1

    text_passes.clear()
    hit = cache.get_or_build(vocab, model, tokenizer, "cpu", progress=False)
    assert not text_passes
    assert torch.equal(hit, built)

    (meta,) = tmp_path.glob("*.json")
    info = json.loads(meta.read_text())
    assert info["vocabulary"] == "kitchen" and info["shape"] == [1, 1, 768]
    assert info["vocabulary_hash"] == vocab.content_hash and info["templates"] == list(VILD_TEMPLATES)
    assert info["text_tower_hash"] == text_tower_hash(model)
    renamed = Vocabulary.from_names(["mug"], name="other name, same content")
    assert torch.equal(cache.get_or_build(renamed, model, tokenizer, "cpu", progress=False), built)
    assert not text_passes


def test_other_vocabulary_or_templates_miss(clip, tmp_path, text_passes):
    model, tokenizer = clip
    cache = EmbeddingCache(tmp_path)
    one = VILD_TEMPLATES[:1]
    mug = cache.get_or_build(Vocabulary.from_names(["mug"]), model, tokenizer, "cpu", one, progress=False)
    cup = cache.get_or_build(Vocabulary.from_names(["cup"]), model, tokenizer, "cpu", one, progress=False)
    other = cache.get_or_build(Vocabulary.from_names(["mug"]), model, tokenizer, "cpu", VILD_TEMPLATES[1:2],
                               progress=False)
    assert len(text_passes) == 3 and len(list(tmp_path.glob("*.npy"))) == 3
    assert not torch.equal(mug, cup) and not torch.equal(mug, other)


def replace_file(path: Path, write) -> None:
    """Change a cache file the way a copy or a crashed writer would: a new file under the old name (a
    file mapped by a live tensor must never be rewritten in place; the cache itself only replaces)."""
    tmp = path.with_name("tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)


def test_unusable_cache_file_is_rebuilt(clip, tmp_path, text_passes):
    model, tokenizer = clip
    cache = EmbeddingCache(tmp_path)
    vocab = Vocabulary.from_names(["mug"])
    built = cache.get_or_build(vocab, model, tokenizer, "cpu", TWO_TEMPLATES[:1], progress=False)
    (npy,) = tmp_path.glob("*.npy")
    replace_file(npy, lambda p: p.write_bytes(b"not a numpy file"))
    rebuilt = cache.get_or_build(vocab, model, tokenizer, "cpu", TWO_TEMPLATES[:1], progress=False)
    assert len(text_passes) == 2 and torch.equal(rebuilt, built)
    replace_file(npy, lambda p: np.save(p, np.zeros((2, 1, 768), dtype=np.float32)))  # wrong shape
    assert torch.equal(cache.get_or_build(vocab, model, tokenizer, "cpu", TWO_TEMPLATES[:1], progress=False),
                       built)
    assert len(text_passes) == 3


def test_float16_cache(clip, tmp_path):
    model, tokenizer = clip
    vocab = Vocabulary.from_names(["mug"])
    full = EmbeddingCache(tmp_path).get_or_build(vocab, model, tokenizer, "cpu", TWO_TEMPLATES[:1],
                                                 progress=False)
    half = EmbeddingCache(tmp_path, dtype="float16").get_or_build(vocab, model, tokenizer, "cpu",
                                                                  TWO_TEMPLATES[:1], progress=False)
    assert half.dtype == torch.float32 and len(list(tmp_path.glob("*.npy"))) == 2
    torch.testing.assert_close(half, full, atol=1e-3, rtol=0)
