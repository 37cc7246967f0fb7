"""The cosine classifier against the released formula, at 21,843 classes in one matmul."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ovsam_ros.model.classifier import LOGIT_SCALE, EmbeddingError, TextClassifier, pad_synonyms


def _embeddings(c: int, p: int, d: int = 768, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(c, p, d, generator=gen), dim=-1)


def _released_formula(features: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """The head's forward_logit as documented: [D, C+1, P] with a zero background class, einsum,
    max over synonyms, times exp(4.6052) computed in float32."""
    _, p, d = emb.shape
    table = torch.cat([emb, torch.zeros(1, p, d)]).permute(2, 0, 1)
    cos = torch.einsum("nc,ckp->nkp", F.normalize(features, dim=-1), table).max(-1).values
    return torch.tensor(4.6052, dtype=torch.float32).exp() * cos


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_logit_scale_is_exp_of_4_6052_in_float32():
    assert abs(LOGIT_SCALE - 100.00296) < 1e-5
    assert torch.tensor(4.6052, dtype=torch.float32).exp().item() == LOGIT_SCALE


def test_matches_the_released_formula_with_background_last():
    emb = _embeddings(20, 3)
    clf = TextClassifier()
    clf.set_embeddings(emb)
    feats = torch.randn(5, 768) * 7.0
    feats[2] = emb[4, 1] * 3.0  # a region that is exactly class 4's second synonym
    logits = clf(feats)
    assert logits.shape == (5, 21)
    assert torch.equal(logits[:, -1], torch.zeros(5))
    assert (logits - _released_formula(feats, emb)).abs().max().item() <= 1e-4
    assert logits[2, :-1].argmax().item() == 4
    assert logits[2, 4].item() == pytest.approx(LOGIT_SCALE, abs=1e-3)


def test_padding_repeats_the_first_synonym_and_cannot_change_the_max():
    emb = _embeddings(3, 4)
    ragged = [emb[0, :1], emb[1, :4], emb[2, :2]]
    padded = pad_synonyms(ragged)
    assert padded.shape == (3, 4, 768)
    assert torch.equal(padded[0], emb[0, :1].expand(4, -1))
    assert torch.equal(padded[2, 2:], emb[2, :1].expand(2, -1))
    clf = TextClassifier()
    clf.set_embeddings(padded)
    feats = torch.randn(6, 768)
    want = torch.stack([(F.normalize(feats, dim=-1) @ e.T).amax(-1) for e in ragged], dim=1) * LOGIT_SCALE
    assert (clf(feats)[:, :-1] - want).abs().max().item() <= 1e-4


def test_imagenet21k_sized_vocabulary_is_one_matmul():
    emb = _embeddings(21_843, 2)
    clf = TextClassifier()
    clf.set_embeddings(emb)
    feats = torch.randn(4, 768)
    with torch.no_grad(), _CountOps() as ops:
        logits = clf(feats)
    assert logits.shape == (4, 21_844)
    assert sum(name in ("mm", "addmm", "bmm", "matmul") for name in ops.names) == 1
    pick = torch.tensor([0, 7, 12_345, 21_842])
    assert (logits[:, pick] - _released_formula(feats, emb[pick])[:, :-1]).abs().max().item() <= 1e-4


def test_subset_restriction_by_indices_and_by_mask():
    emb = _embeddings(10, 2)
    clf = TextClassifier()
    clf.set_embeddings(emb)
    feats = torch.randn(3, 768)
    full = clf(feats)
    idx = clf.class_indices(torch.tensor([7, 2, 5]))
    sub = clf(feats, idx)
    assert sub.shape == (3, 4)
    assert torch.allclose(sub[:, :-1], full[:, [7, 2, 5]], atol=1e-4)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 5, 7]] = True
    assert torch.allclose(clf(feats, clf.class_indices(mask))[:, :-1], full[:, [2, 5, 7]], atol=1e-4)


def test_bad_embeddings_and_features_raise_clear_errors():
    clf = TextClassifier()
    with pytest.raises(EmbeddingError, match="no text embeddings"):
        clf(torch.randn(1, 768))
    with pytest.raises(EmbeddingError, match=r"\[C, P, 768\]"):
        clf.set_embeddings(torch.randn(4, 768))
    with pytest.raises(EmbeddingError, match="L2-normalised"):
        clf.set_embeddings(torch.randn(4, 2, 768))
    bad = _embeddings(4, 2)
    bad[1, 1, 3] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        clf.set_embeddings(bad)
    clf.set_embeddings(_embeddings(4, 2))
    with pytest.raises(EmbeddingError, match=r"\[N, 768\]"):
        clf(torch.randn(2, 512))
    with pytest.raises(EmbeddingError, match=r"\[0, 4\)"):
        clf.class_indices(torch.tensor([1, 4]))
    with pytest.raises(EmbeddingError, match="mask"):
        clf.class_indices(torch.ones(3, dtype=torch.bool))
    with pytest.raises(EmbeddingError):
        pad_synonyms([])


def test_swapping_between_two_vocabularies_reuses_their_prepared_weights():
    """Text queries swap the vocabulary and vocabulary + phrases on every frame: the second time each
    is set, nothing is validated or copied again, and the logits are those of the tensor set."""
    classifier = TextClassifier(8)
    vocab = F.normalize(torch.randn(5, 2, 8), dim=-1)
    extended = F.normalize(torch.randn(7, 2, 8), dim=-1)
    feats = torch.randn(3, 8)
    classifier.set_embeddings(vocab)
    first_weight, first_logits = classifier.weight, classifier(feats)
    classifier.set_embeddings(extended)
    assert classifier(feats).shape == (3, 8)
    classifier.set_embeddings(vocab)
    assert classifier.weight is first_weight and classifier.num_classes == 5
    torch.testing.assert_close(classifier(feats), first_logits)
    equal_copy = vocab.clone()  # same values, another tensor: validated and prepared anew
    classifier.set_embeddings(equal_copy)
    assert classifier.weight is not first_weight
    with pytest.raises(EmbeddingError):
        classifier.set_embeddings(vocab * 2)  # a new tensor is always validated


def _padded_reference(features: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """The padded form: every row of [C, P, D], max over P."""
    cosine = F.normalize(features, dim=-1) @ padded.flatten(0, 1).T
    logits = cosine.view(len(features), padded.shape[0], padded.shape[1]).amax(-1) * LOGIT_SCALE
    return torch.cat([logits, logits.new_zeros(len(features), 1)], dim=1)


@pytest.mark.parametrize("counts", [[1], [3, 1, 2], [15, 1, 1, 7, 2, 15, 4], [2] * 9, [1, 5] * 20])
def test_ragged_rows_give_exactly_the_padded_result(counts):
    """Padding is dropped (R real rows kept) and the segment max equals the padded max, for the whole
    vocabulary and for subsets in any order, repeats included. Equal up to the matmul's last bit: BLAS
    rounds a dot product differently for a differently shaped matrix."""
    gen = torch.Generator().manual_seed(len(counts))
    per_class = [F.normalize(torch.randn(n, 768, generator=gen), dim=-1) for n in counts]
    padded = pad_synonyms(per_class)
    clf = TextClassifier()
    clf.set_embeddings(padded)
    assert clf.num_rows == sum(counts) and clf.num_synonyms == max(counts)
    feats = torch.randn(5, 768, generator=gen)
    feats[0] = per_class[-1][-1]  # a region that is exactly the last class's last synonym
    full, want = clf(feats), _padded_reference(feats, padded)
    torch.testing.assert_close(full, want, atol=2e-5, rtol=0)
    assert torch.equal(full.argmax(1), want.argmax(1))
    pick = torch.tensor([len(counts) - 1, 0, 0, len(counts) // 2])
    sub, want = clf(feats, clf.class_indices(pick)), _padded_reference(feats, padded[pick])
    torch.testing.assert_close(sub, want, atol=2e-5, rtol=0)
    assert torch.equal(sub[:, 1], sub[:, 2])


def test_a_synonym_equal_to_the_first_is_dropped_without_changing_the_max():
    emb = _embeddings(4, 3)
    emb[1, 2] = emb[1, 0]
    clf = TextClassifier()
    clf.set_embeddings(emb)
    assert clf.num_rows == 11
    feats = torch.randn(3, 768)
    torch.testing.assert_close(clf(feats), _padded_reference(feats, emb), atol=2e-5, rtol=0)
