"""The released class splits: OV-COCO 48/17 (15 classes excluded) and LVIS 866/337, shipped as class
names, must give exactly the released index lists (test/data/released_split_ids.json, copied from
the official ext/class_names/*.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovsam_ros.vocab.class_splits import (
    BASE,
    EXCLUDED,
    NOVEL,
    ClassSplit,
    dataset_split,
    released_split,
    split_for,
)
from ovsam_ros.vocab.vocabulary import Vocabulary, VocabularyError

RELEASED = json.loads((Path(__file__).parent / "data" / "released_split_ids.json").read_text())


@pytest.mark.parametrize(("name", "counts"), [("coco", (48, 17, 15)), ("lvis", (866, 337, 0))])
def test_released_splits_are_the_official_index_lists(name, counts):
    split = released_split(name)
    assert tuple(split.counts().values()) == counts
    assert np.flatnonzero(split.base).tolist() == RELEASED[name]["base"]
    assert np.flatnonzero(split.novel).tolist() == RELEASED[name]["novel"]
    indicator = split.indicator
    assert (indicator[RELEASED[name]["base"]] == BASE).all()
    assert (indicator[RELEASED[name]["novel"]] == NOVEL).all()
    assert (indicator == EXCLUDED).sum() == counts[2]


def test_a_split_maps_onto_a_dataset_vocabulary_by_name():
    vocab = Vocabulary.from_names(["dog", "Person", "hair drier", "bear"])
    split = split_for(vocab, "coco")
    assert split.base.tolist() == [False, True, False, True]  # person, bear: base
    assert split.novel.tolist() == [True, False, False, False]  # dog: novel
    assert split.excluded.tolist() == [False, False, True, False]  # hair drier: neither
    assert dataset_split(vocab) == "coco"
    lvis_only = Vocabulary.from_names(["aerosol can", "bear"])
    assert dataset_split(lvis_only) == "lvis"
    assert split_for(lvis_only, "lvis").base.tolist() == [True, True]
    assert dataset_split(Vocabulary.from_names(["no such class anywhere"])) is None


def test_bad_splits_are_refused():
    with pytest.raises(VocabularyError, match="unknown class split"):
        released_split("imagenet")
    with pytest.raises(VocabularyError, match="both base and novel"):
        ClassSplit("x", np.array([True, False]), np.array([True, True]))
