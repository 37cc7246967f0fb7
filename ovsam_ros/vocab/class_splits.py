"""Class splits as released: which classes of a dataset are base (trained on), novel (evaluated
open-vocabulary) or excluded (neither, never predicted).

The released OVSAM evaluation uses two: OV-COCO 48/17 (48 base, 17 novel, the other 15 of the 80
COCO classes excluded, so they score -1000 in the fused log-scores) and LVIS v1 866/337 (frequent +
common base, rare novel, none excluded). They ship as class-name files (``coco_base.txt``,
``coco_novel.txt``, ``lvis_base.txt``) and are mapped onto any vocabulary by name with the rule of
:mod:`ovsam_ros.vocab.base_classes`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ovsam_ros.vocab.base_classes import base_mask_for
from ovsam_ros.vocab.vocabulary import Vocabulary, VocabularyError, data_file, normalise_name

EXCLUDED, BASE, NOVEL = 0, 1, 2  # the released base_novel_indicator values
# split -> (its dataset's shipped vocabulary, novel-class file or None for "every non-base class")
RELEASED_SPLITS = {"coco": ("coco", "coco_novel.txt"), "lvis": ("lvis", None)}


@dataclass(frozen=True)
class ClassSplit:
    """Base / novel / excluded over the classes of one vocabulary, as bool masks ``[C]``."""

    name: str
    base: np.ndarray
    novel: np.ndarray

    def __post_init__(self) -> None:
        if self.base.shape != self.novel.shape or self.base.dtype != bool or self.novel.dtype != bool:
            raise VocabularyError("a split's base and novel masks must be bool arrays of one shape")
        if both := np.flatnonzero(self.base & self.novel).tolist():
            raise VocabularyError(f"split {self.name}: class(es) {both[:10]} are both base and novel")

    @property
    def excluded(self) -> np.ndarray:
        return ~(self.base | self.novel)

    @property
    def indicator(self) -> np.ndarray:
        """int ``[C]`` as the released code encodes a split: 1 base, 2 novel, 0 excluded."""
        return np.where(self.base, BASE, np.where(self.novel, NOVEL, EXCLUDED))

    def counts(self) -> dict[str, int]:
        return {"base": int(self.base.sum()), "novel": int(self.novel.sum()),
                "excluded": int(self.excluded.sum())}


def _names_in(vocab: Vocabulary, filename: str) -> np.ndarray:
    wanted = {normalise_name(n) for n in Vocabulary.from_file(data_file(filename)).display_names}
    return np.fromiter((normalise_name(n) in wanted for n in vocab.display_names), dtype=bool,
                       count=len(vocab))


def split_for(vocab: Vocabulary, split: str) -> ClassSplit:
    """The released ``split`` ("coco" or "lvis") mapped onto ``vocab``: base classes by the
    checkpoint's training-class rule; novel ones by the shipped novel list (COCO) or every other
    class (LVIS); the rest are excluded."""
    if split not in RELEASED_SPLITS:
        raise VocabularyError(f"unknown class split {split!r}; choose from {sorted(RELEASED_SPLITS)}")
    _, novel_file = RELEASED_SPLITS[split]
    base = base_mask_for(vocab, split)
    novel = ~base if novel_file is None else _names_in(vocab, novel_file) & ~base
    return ClassSplit(split, base, novel)


@functools.cache
def released_split(split: str) -> ClassSplit:
    """The released split over its own dataset's shipped vocabulary (COCO's 80, LVIS's 1203 classes)."""
    if split not in RELEASED_SPLITS:
        raise VocabularyError(f"unknown class split {split!r}; choose from {sorted(RELEASED_SPLITS)}")
    return split_for(Vocabulary.from_name(RELEASED_SPLITS[split][0]), split)


def dataset_split(vocab: Vocabulary) -> str | None:
    """The released split whose dataset ``vocab``'s classes come from ("coco" when every class is a
    COCO class, else "lvis" when every class is an LVIS class), or None."""
    names = {normalise_name(n) for n in vocab.display_names}
    for split, (dataset, _) in RELEASED_SPLITS.items():
        if names <= {normalise_name(n) for n in Vocabulary.from_name(dataset).display_names}:
            return split
    return None
