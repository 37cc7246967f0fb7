"""Which classes of a vocabulary a checkpoint was trained on ("base") and which it never saw ("novel").

The open-vocabulary ensemble weights the trained head and the frozen CLIP branch differently for the two
(ovsam-reference.md), and evaluation reports them apart. The training classes are shipped as data: the
LVIS checkpoint's are LVIS v1's frequent + common classes (866), the COCO checkpoint's the 48 base classes
of the OV-COCO 48/17 split. They are mapped onto any vocabulary by name, case- and space-insensitively:
a class that is exactly one of the checkpoint's dataset classes (all its synonyms, in order) is base when
that class was trained on; any other class is base when one of its synonyms is a synonym of a training
class (the overlap rule the released code uses to merge class lists). The exact match comes first because
LVIS has classes that share a name ("bow" the weapon is rare, "bow" the ribbon is not).
"""

from __future__ import annotations

import functools

import numpy as np

from ovsam_ros.vocab.vocabulary import Vocabulary, VocabularyError, data_file, normalise_name

# checkpoint -> its training classes; the checkpoint's name is also that of its dataset's vocabulary
CHECKPOINT_CLASSES = {"lvis": "lvis_base.txt", "coco": "coco_base.txt"}
# checkpoint -> shipped vocabularies of its dataset, index-aligned (the same classes, other synonyms)
DATASET_VOCABULARIES = {"lvis": ("lvis", "lvis_synonyms"), "coco": ("coco",)}


@functools.cache
def base_vocabulary(checkpoint: str) -> Vocabulary:
    """The training classes of the ``"lvis"`` or ``"coco"`` checkpoint."""
    if checkpoint not in CHECKPOINT_CLASSES:
        raise VocabularyError(f"unknown checkpoint {checkpoint!r}; choose from {sorted(CHECKPOINT_CLASSES)}")
    return Vocabulary.from_file(data_file(CHECKPOINT_CLASSES[checkpoint]), name=f"{checkpoint}_base")


Key = tuple[str, ...]


def _key(synonyms: tuple[str, ...]) -> Key:
    return tuple(normalise_name(s) for s in synonyms)


@functools.cache
def _training_sets(checkpoint: str) -> tuple[frozenset[Key], frozenset[Key], frozenset[str]]:
    """(every dataset class, the trained classes, every synonym of a trained class), normalised, over
    every shipped form of the dataset's vocabulary (LVIS: its category names and its synonym lists)."""
    base_keys = set(map(_key, base_vocabulary(checkpoint).classes))
    forms = [Vocabulary.from_name(name).classes for name in DATASET_VOCABULARIES[checkpoint]]
    trained = [_key(c) in base_keys for c in forms[0]]
    dataset: set[Key] = set()
    base: set[Key] = set()
    for classes in forms:
        for synonyms, is_trained in zip(classes, trained, strict=True):
            dataset.add(_key(synonyms))
            if is_trained:
                base.add(_key(synonyms))
    return frozenset(dataset), frozenset(base), frozenset(s for key in base for s in key)


def _is_base(synonyms: tuple[str, ...], checkpoint: str) -> bool:
    dataset, base, base_synonyms = _training_sets(checkpoint)
    key = _key(synonyms)
    if key in dataset:
        return key in base
    return any(s in base_synonyms for s in key)


def base_mask_for(vocab: Vocabulary, checkpoint: str) -> np.ndarray:
    """Bool ``[C]``: True where class ``i`` of ``vocab`` is one the checkpoint was trained on."""
    return np.fromiter((_is_base(c, checkpoint) for c in vocab.classes), dtype=bool, count=len(vocab))
