"""Naming instances from class probabilities: top-k, background, threshold, subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovsam_ros.recognition import UNNAMED, RecognitionError, name_instances, subset_indices
from ovsam_ros.vocab import Vocabulary

VOCAB = Vocabulary.from_names(["mug, coffee cup", "screwdriver", "apple", "red apple"])


def probs(*rows: list[float]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.sum(dim=1, keepdim=True)


def test_argmax_over_real_classes_ignores_background():
    p = probs([0.1, 0.2, 0.06, 0.04, 0.6], [0.5, 0.1, 0.2, 0.1, 0.1])
    first, second = name_instances(p, VOCAB, top_k=3)
    assert (first.label, first.class_index) == ("screwdriver", 1)
    assert first.score == pytest.approx(0.2)  # the softmax value including background
    assert [n for n, _ in first.top_k] == ["screwdriver", "mug", "apple"]
    assert [v for _, v in first.top_k] == pytest.approx([0.2, 0.1, 0.06])
    assert (second.label, second.class_index, second.score) == ("mug", 0, pytest.approx(0.5))


def test_top_k_is_capped_by_the_vocabulary():
    (naming,) = name_instances(probs([0.1, 0.2, 0.3, 0.3, 0.1]), VOCAB, top_k=10)
    assert len(naming.top_k) == 4
    assert [v for _, v in naming.top_k] == sorted((v for _, v in naming.top_k), reverse=True)


def test_below_the_threshold_an_instance_is_unnamed():
    p = probs([0.2, 0.1, 0.1, 0.1, 0.5], [0.7, 0.1, 0.1, 0.05, 0.05])
    low, high = name_instances(p, VOCAB, top_k=2, score_threshold=0.3)
    assert (low.label, low.class_index, low.top_k) == (UNNAMED, -1, []) and UNNAMED == ""
    assert low.score == pytest.approx(0.2)  # how far below the threshold it was
    assert (high.label, high.class_index) == ("mug", 0)


def test_subset_renormalises_with_background():
    p = probs([0.4, 0.1, 0.3, 0.1, 0.1])
    (naming,) = name_instances(p, VOCAB, top_k=3, subset=["Apple", "screwdriver"])
    # only screwdriver (0.1), apple (0.3) and background (0.1) compete: 0.3 / 0.5, 0.1 / 0.5
    assert (naming.label, naming.class_index) == ("apple", 2)
    assert naming.score == pytest.approx(0.6)
    assert naming.top_k == [("apple", pytest.approx(0.6)), ("screwdriver", pytest.approx(0.2))]
    indices = subset_indices(VOCAB, ["screwdriver", "apple"])
    assert indices.tolist() == [1, 2]
    assert name_instances(p, VOCAB, top_k=3, subset=indices) == [naming]


def test_same_as_a_vocabulary_restricted_to_the_subset():
    """Renormalising over subset + background equals a classifier whose vocabulary held only the subset."""
    logits = torch.randn(6, len(VOCAB) + 1)
    logits[:, -1] = 0.0  # the background logit
    full = name_instances(logits.softmax(dim=1), VOCAB, top_k=2, subset=["red apple", "mug"])
    small_vocab = Vocabulary.from_names(["mug, coffee cup", "red apple"])
    small = name_instances(logits[:, [0, 3, 4]].softmax(dim=1), small_vocab, top_k=2)
    for a, b in zip(full, small, strict=True):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-6)
        assert [n for n, _ in a.top_k] == [n for n, _ in b.top_k]


def test_large_vocabulary_and_empty_batch():
    vocab = Vocabulary.from_names([f"class {i}" for i in range(21843)])
    p = torch.rand(50, len(vocab) + 1).softmax(dim=1)
    namings = name_instances(p, vocab, top_k=5)
    best = p[:, :-1].argmax(dim=1)
    assert [n.class_index for n in namings] == best.tolist()
    assert [n.label for n in namings] == [f"class {i}" for i in best.tolist()]
    assert name_instances(p[:0], vocab) == []


def test_bad_input():
    with pytest.raises(RecognitionError, match=r"\[N, 5\]"):
        name_instances(torch.rand(2, 4), VOCAB)
    with pytest.raises(RecognitionError, match=r"\[N, 5\]"):
        name_instances(torch.rand(5), VOCAB)
    with pytest.raises(RecognitionError, match="top_k"):
        name_instances(torch.rand(2, 5), VOCAB, top_k=0)
    with pytest.raises(RecognitionError, match="score_threshold"):
        name_instances(torch.rand(2, 5), VOCAB, score_threshold=1.5)
    with pytest.raises(RecognitionError, match=r"not in vocabulary.*'pear'"):
        name_instances(torch.rand(2, 5), VOCAB, subset=["apple", "pear"])
    with pytest.raises(RecognitionError, match="non-empty"):
        subset_indices(VOCAB, "apple")
    with pytest.raises(RecognitionError, match="subset indices"):
        name_instances(torch.rand(2, 5), VOCAB, subset=np.array([0, 4]))
    assert issubclass(RecognitionError, ValueError)
