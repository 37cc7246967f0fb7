"""Vocabularies: shipped data, file formats, synonym splitting, hashes, merging, base/novel classes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ovsam_ros.vocab import VILD_TEMPLATES, Vocabulary, VocabularyError, base_mask_for, split_synonyms
from ovsam_ros.vocab.base_classes import base_vocabulary
from ovsam_ros.vocab.templates import TemplateError, check_templates, templates_hash
from ovsam_ros.vocab.vocabulary import data_file, normalise_name


def test_split_follows_the_released_rule():
    assert split_synonyms("aerosol_can/spray_can") == ["aerosol can", "spray can"]
    assert split_synonyms("tape_(sticky_cloth_or_paper)") == ["tape (sticky cloth", "paper)"]
    assert split_synonyms("mug, coffee cup,") == ["mug", "coffee cup"]
    assert split_synonyms("  Teddy   bear ") == ["Teddy bear"]


@pytest.mark.parametrize(("name", "size", "first", "last"), [
    ("coco", 80, "person", "toothbrush"),
    ("lvis", 1203, "aerosol can", "zucchini"),
    ("imagenet21k", 21843, "organism", "knothole"),
])
def test_shipped_vocabularies(name, size, first, last):
    vocab = Vocabulary.from_name(name)
    assert len(vocab) == size
    assert vocab.display_names[0] == first
    assert vocab.display_names[-1].startswith(last)
    assert all(all(s == s.strip() and s for s in c) for c in vocab.classes)


def test_imagenet21k_keeps_synonyms_and_order():
    vocab = Vocabulary.from_name("imagenet21k")
    assert vocab.classes[0] == ("organism", "being")
    assert vocab.max_synonyms == 15  # "bomber, grinder, hero, hoagie, ... submarine sandwich, ..."


def test_lvis_synonyms_from_ultralytics():
    vocab = Vocabulary.from_name("lvis_synonyms")
    assert vocab.classes[0] == ("aerosol can", "spray can")
    assert "trash can" in vocab.display_names


def test_lvis_is_the_released_class_strings():
    """LVIS category names split as the released OVSAM split them: its classifier is [1203, 2, 768]."""
    vocab = Vocabulary.from_name("lvis")
    assert len(vocab) == 1203 and vocab.max_synonyms == 2
    assert [c for c in vocab.classes if len(c) > 1] == [("tape (sticky cloth", "paper)")]
    assert vocab.classes[0] == ("aerosol can",)
    synonyms = Vocabulary.from_name("lvis_synonyms")
    assert len(synonyms) == len(vocab)


def test_all_is_merged_without_duplicates():
    merged = Vocabulary.from_name("all")
    keys = [normalise_name(n) for n in merged.display_names]
    assert len(keys) == len(set(keys))
    assert merged.display_names[:80] == Vocabulary.from_name("coco").display_names
    every = {normalise_name(n) for v in ("coco", "lvis", "imagenet21k")
             for n in Vocabulary.from_name(v).display_names}
    assert set(keys) == every  # ImageNet-21k itself repeats display names ("crane" the bird and the machine)


def test_merge_is_case_and_space_insensitive():
    a = Vocabulary.from_names(["Coffee  Cup", "dog"])
    b = Vocabulary.from_names(["coffee cup, mug", "cat"])
    merged = Vocabulary.merged([a, b], name="ab")
    assert merged.classes == (("Coffee Cup",), ("dog",), ("cat",))


def test_content_hash_is_stable_and_content_only():
    a = Vocabulary.from_names(["mug, coffee cup", "screwdriver"], name="a")
    b = Vocabulary.from_names([["mug", "coffee cup"], "screwdriver"], name="b")
    assert a.content_hash == b.content_hash
    # pinned: a change of the hashed form would silently invalidate every text-embedding cache
    assert a.content_hash == hashlib.sha256(b"mug\tcoffee cup\nscrewdriver").hexdigest()
    assert Vocabulary.from_names(["mug", "screwdriver"]).content_hash != a.content_hash
    assert Vocabulary.from_names(["screwdriver", "mug, coffee cup"]).content_hash != a.content_hash
    assert a.label.startswith("a@") and len(a.label) == 14


def test_text_file(tmp_path):
    path = tmp_path / "kitchen.txt"
    path.write_text("# my kitchen\nmug, coffee cup\n\n  screwdriver\nred_apple/apple\n")
    vocab = Vocabulary.from_file(path)
    assert vocab.name == "kitchen"
    assert vocab.classes == (("mug", "coffee cup"), ("screwdriver",), ("red apple", "apple"))
    assert vocab.display_names == ["mug", "screwdriver", "red apple"]


def test_yaml_files(tmp_path):
    mapping = tmp_path / "u.yaml"
    mapping.write_text("path: x\nnames:\n  1: cat\n  0: aerosol can/spray can\n  2: 3\n")
    assert Vocabulary.from_file(mapping).classes == (("aerosol can", "spray can"), ("cat",), ("3",))
    listing = tmp_path / "l.yml"
    listing.write_text("- mug\n- [cup, coffee cup]\n")
    assert Vocabulary.from_file(listing).classes == (("mug",), ("cup", "coffee cup"))
    names_list = tmp_path / "n.yaml"
    names_list.write_text("names: [a, b]\n")
    assert len(Vocabulary.from_file(names_list)) == 2


@pytest.mark.parametrize(("filename", "content"), [
    ("empty.txt", ""), ("comments.txt", "# only a comment\n\n"), ("empty.yaml", "names: {}\n"),
    ("scalar.yaml", "names: 5\n"), ("keys.yaml", "names:\n  a: cat\n"), ("nested.yaml", "- {a: 1}\n"),
    ("broken.yaml", "[unclosed\n"),
])
def test_bad_files_give_clear_errors(tmp_path, filename, content):
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(VocabularyError, match=str(path.name)):
        Vocabulary.from_file(path)


def test_unreadable_file(tmp_path):
    with pytest.raises(VocabularyError, match="cannot read"):
        Vocabulary.from_file(tmp_path / "missing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VocabularyError, match="cannot read"):
        Vocabulary.from_file(binary)


def test_bad_names():
    with pytest.raises(VocabularyError):
        Vocabulary.from_names([])
    with pytest.raises(VocabularyError, match="empty class name"):
        Vocabulary.from_names(["mug", " , /"])
    with pytest.raises(VocabularyError, match="synonym list"):
        Vocabulary.from_names(["mug", 3])
    with pytest.raises(VocabularyError, match="unknown vocabulary"):
        Vocabulary.from_name("coco2017")
    assert isinstance(VocabularyError("x"), ValueError)


def test_templates():
    assert len(VILD_TEMPLATES) == 14
    assert VILD_TEMPLATES[0] == "a photo of a {}."
    assert VILD_TEMPLATES[1] == "This is a photo of a {}"
    assert templates_hash(VILD_TEMPLATES) != templates_hash(VILD_TEMPLATES[:13])
    for bad in ([], "a {}", ["no slot"], ["{} and {}"], ["a {0}"]):
        with pytest.raises(TemplateError):
            check_templates(bad)


def test_checkpoint_base_classes():
    assert len(base_vocabulary("lvis")) == 866
    assert len(base_vocabulary("coco")) == 48
    coco = Vocabulary.from_name("coco")
    mask = base_mask_for(coco, "coco")
    assert mask.dtype == bool and mask.shape == (80,) and mask.sum() == 48
    base = {n for n, b in zip(coco.display_names, mask, strict=True) if b}
    novel = {"airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
             "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors"}
    assert set(Vocabulary.from_file(data_file("coco_novel.txt")).display_names) == novel
    assert {"person", "bicycle", "toothbrush", "toaster"} <= base and not base & novel
    # rare LVIS classes that share a name with a trained one ("bow" weapon vs ribbon) stay novel
    assert base_mask_for(Vocabulary.from_name("lvis"), "lvis").sum() == 866
    assert base_mask_for(Vocabulary.from_name("lvis_synonyms"), "lvis").sum() == 866


def test_base_mask_on_a_custom_vocabulary():
    vocab = Vocabulary.from_names(["Coffee Cup, mug", "screwdriver", "bicycle", "dog", "flux capacitor",
                                   "spray can"])
    assert base_mask_for(vocab, "lvis").tolist() == [True, True, True, True, False, True]
    assert base_mask_for(vocab, "coco").tolist() == [False, False, True, False, False, False]
    big = base_mask_for(Vocabulary.from_name("imagenet21k"), "lvis")
    assert isinstance(big, np.ndarray) and big.shape == (21843,) and 0 < big.sum() < 21843
    with pytest.raises(VocabularyError, match="unknown checkpoint"):
        base_mask_for(vocab, "objects365")
