"""Text queries: parsing, resolution against a vocabulary, matching, and the whole path on a real photo.

No real CLIP weights exist here, so names cannot be right by themselves. The end-to-end tests make
them right by construction: the real MobileSAM finds candidate masks on a real photo, a random CLIP
tower (feature-crop recognizer) gives each a region feature through the model's own pooling code, and
the text embeddings are set to those features, so exactly one known candidate must answer a query.
A random tower's region features are nearly parallel (cosine ~0.999), so the constructed class wins
the argmax by a hair and with a low probability; the selection is therefore checked at
``text_threshold`` 0 and the threshold separately, just above the probability found.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d

from ovsam_ros.config import EverythingConfig, VocabConfig
from ovsam_ros.everything import generate_candidates
from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.model.feature_crop import build_feature_crop
from ovsam_ros.model.ovsam import OVSAMRecognizer
from ovsam_ros.model.sam import build_mobile_sam
from ovsam_ros.predictor import Predictor
from ovsam_ros.prompts import PromptKind
from ovsam_ros.queries import (
    QueryError,
    build_query_set,
    find_text_instances,
    match_queries,
    parse_queries,
    phrase_embedder,
)
from ovsam_ros.vocab.text_embeddings import embed_vocabulary
from ovsam_ros.vocab.vocabulary import Vocabulary


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _fixed(embeddings: torch.Tensor):
    """A phrase embedder that returns ``embeddings`` (built by the test) whatever the phrases."""
    return lambda phrases: embeddings


# ---- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("red mug, screwdriver", ["red mug", "screwdriver"]),
    ("red mug;screwdriver ; pliers", ["red mug", "screwdriver", "pliers"]),
    ("  red   mug ,, ; ,screwdriver,", ["red mug", "screwdriver"]),
    ("Red Mug, red mug, RED MUG, mug", ["Red Mug", "mug"]),
    ("", []),
    (" , ; ", []),
])
def test_parse_queries(text: str, expected: list[str]) -> None:
    assert parse_queries(text) == expected


def test_parse_rejects_non_text() -> None:
    with pytest.raises(QueryError, match="string"):
        parse_queries(["red mug"])  # type: ignore[arg-type]


# ---- resolution against the vocabulary -------------------------------------------------------------

def test_query_set_appends_new_phrases_and_reuses_vocabulary_classes() -> None:
    vocab = Vocabulary.from_names(["mug, coffee cup", "screwdriver", "pliers"])
    vocab_emb = _unit(3, 2, 8)
    phrase = _unit(1, 1, 8, seed=1)
    base = torch.tensor([True, False, True])
    qs = build_query_set("Coffee  Cup, red mug, pliers", vocab, vocab_emb, _fixed(phrase))
    assert qs.queries == ("Coffee Cup", "red mug", "pliers")
    assert qs.query_class.tolist() == [0, 3, 2]  # synonym of class 0; appended; class 2
    assert qs.names.display_names == ["mug", "screwdriver", "pliers", "red mug"]
    assert qs.phrase_embeddings is phrase  # only the appended phrase is kept, not the vocabulary
    assert qs.nbytes == phrase.nbytes + qs.query_class.nbytes
    embeddings, mask = qs.extended(vocab_emb, base)
    assert embeddings.shape == (4, 2, 8)
    assert torch.equal(embeddings[:3], vocab_emb)
    assert torch.equal(embeddings[3], phrase[0].expand(2, 8))  # padded by repeating its first synonym
    assert mask.tolist() == [True, False, True, False]  # the appended phrase is novel


def test_query_set_of_vocabulary_classes_only_uses_the_vocabulary_tensors() -> None:
    vocab = Vocabulary.from_names(["mug, coffee cup", "screwdriver"])
    vocab_emb, base = _unit(2, 2, 8), torch.tensor([True, False])
    qs = build_query_set("coffee cup", vocab, vocab_emb, _fixed(_unit(1, 1, 8)))
    assert qs.phrase_embeddings is None and qs.names is vocab
    embeddings, mask = qs.extended(vocab_emb, base)
    assert embeddings is vocab_emb and mask is base


def test_query_set_fits_the_ovsam_recognizer() -> None:
    """The extended embeddings and base mask are accepted by the released model's recognizer."""
    recognizer = OVSAMRecognizer(AttentionPool2d(12, 3072, 48, 768), roi_size=7)
    vocab = Vocabulary.from_names(["mug", "pliers"])
    vocab_emb = _unit(2, 1, 768)
    qs = build_query_set("red mug", vocab, vocab_emb, _fixed(_unit(1, 1, 768)))
    recognizer.set_text_embeddings(*qs.extended(vocab_emb, torch.tensor([True, False])))
    assert recognizer.num_classes == 3 and recognizer.base_mask.tolist() == [True, False, False]


def test_query_set_pads_the_vocabulary_when_a_phrase_has_more_synonyms() -> None:
    vocab = Vocabulary.from_names(["mug", "pliers"])
    vocab_emb = _unit(2, 1, 8)
    phrase = _unit(1, 2, 8, seed=2)
    qs = build_query_set(["screwdriver/driver"], vocab, vocab_emb, _fixed(phrase))
    embeddings, mask = qs.extended(vocab_emb)
    assert embeddings.shape == (3, 2, 8)
    assert torch.equal(embeddings[:2, 1], vocab_emb[:, 0])
    assert mask is None


@pytest.mark.slow
def test_query_set_embeds_phrases_like_the_vocabulary() -> None:
    """The production embedder is the vocabulary's own embedding function, on the phrases."""
    model = open_clip.create_model("RN50", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("RN50")
    vocab = Vocabulary.from_names(["mug", "pliers"])
    vocab_emb = embed_vocabulary(vocab, model, tokenizer, "cpu", progress=False)
    qs = build_query_set("red mug", vocab, vocab_emb, phrase_embedder(model, tokenizer, "cpu"))
    direct = embed_vocabulary(Vocabulary.from_names(["red mug"]), model, tokenizer, "cpu", progress=False)
    assert torch.equal(qs.phrase_embeddings, direct)


@pytest.mark.parametrize("queries, vocab_shape, phrase_shape, match", [
    ("", (2, 1, 8), (1, 1, 8), "no text query"),
    ("red mug", (3, 1, 8), (1, 1, 8), r"\[2, P, D\]"),
    ("red mug", (2, 1, 8), (1, 1, 4), "text tower"),
    ("red mug, fork", (2, 1, 8), (1, 1, 8), r"\[2, P, 8\]"),
])
def test_query_set_errors(queries, vocab_shape, phrase_shape, match) -> None:
    vocab = Vocabulary.from_names(["mug", "pliers"])
    with pytest.raises(QueryError, match=match):
        build_query_set(queries, vocab, _unit(*vocab_shape), _fixed(_unit(*phrase_shape)))


# ---- matching ------------------------------------------------------------------------------------

def test_match_queries() -> None:
    # classes: 0 mug, 1 pliers (vocabulary), 2 "red mug", 3 "screwdriver" (queries); background last
    probs = torch.tensor([
        [0.10, 0.05, 0.80, 0.04, 0.01],  # red mug
        [0.60, 0.05, 0.30, 0.04, 0.01],  # the vocabulary's mug wins
        [0.02, 0.03, 0.05, 0.20, 0.70],  # background is most likely, but the best real class counts
        [0.05, 0.05, 0.10, 0.10, 0.70],  # tie between queries at 0.10: first wins, under the threshold
        [0.00, 0.00, 0.00, 0.95, 0.05],  # screwdriver
    ])
    m = match_queries(probs, torch.tensor([2, 3]), text_threshold=0.15)
    assert m.candidate.tolist() == [0, 2, 4]
    assert m.query.tolist() == [0, 1, 1]
    assert torch.allclose(m.score, torch.tensor([0.80, 0.20, 0.95]))
    strict = match_queries(probs, torch.tensor([2, 3]), text_threshold=0.5)
    assert strict.candidate.tolist() == [0, 4]
    # a query that is a vocabulary class is answered by that class; two queries may share one
    shared = match_queries(probs, torch.tensor([0, 0]), text_threshold=0.5)
    assert shared.candidate.tolist() == [1, 1] and shared.query.tolist() == [0, 1]


@pytest.mark.parametrize("probs, classes, threshold, match", [
    (torch.ones(3), torch.tensor([0]), 0.3, "probabilities"),
    (torch.ones(2, 3), torch.tensor([2]), 0.3, "outside"),
    (torch.ones(2, 3), torch.tensor([0]), 1.5, "text_threshold"),
])
def test_match_queries_errors(probs, classes, threshold, match) -> None:
    with pytest.raises(QueryError, match=match):
        match_queries(probs, classes, threshold)


def test_text_queries_need_a_recognizer() -> None:
    predictor = Predictor(build_mobile_sam(None, random_init=True))
    vocab = Vocabulary.from_names(["mug"])
    qs = build_query_set("red mug", vocab, _unit(1, 1, 8), _fixed(_unit(1, 1, 8)))
    features = ImageFeatures(torch.zeros(1, 256, 64, 64), input_size=(64, 64), original_size=(64, 64))
    with pytest.raises(QueryError, match="need a recognizer"):
        find_text_instances(predictor, features, qs, _unit(1, 1, 8))


# ---- the whole path on a real photo ------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(mobile_sam_path, bear):
    """Real MobileSAM + a random RN50 feature-crop recognizer, one real photo encoded once, and the
    everything-mode candidates with their region features (the recognizer's own mask pooling)."""
    recognizer = build_feature_crop("RN50", random_init=True, input_size=448)[0]
    predictor = Predictor(build_mobile_sam(mobile_sam_path, recognizer=recognizer))
    rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / "3.jpeg")), cv2.COLOR_BGR2RGB)
    features = predictor.encode(rgb)
    config = EverythingConfig(points_per_side=8)
    candidates = generate_candidates(predictor, features, config)
    assert len(candidates) >= 4
    pooled, covered = recognizer.pool_masks(features.clip_levels[0], candidates.low_res_logits > 0)
    assert covered.all()
    return predictor, features, candidates, F.normalize(pooled, dim=-1)


def _vocabulary_of(regions: torch.Tensor, skip: list[int]) -> tuple[Vocabulary, torch.Tensor]:
    """A vocabulary whose class ``c<i>`` is embedded as candidate i's region feature (i not in skip)."""
    rows = [i for i in range(len(regions)) if i not in skip]
    return Vocabulary.from_names([f"c{i}" for i in rows]), regions[rows][:, None]


@pytest.mark.slow
def test_only_the_constructed_candidate_answers(scene) -> None:
    predictor, features, candidates, regions = scene
    target = 1
    vocab, emb = _vocabulary_of(regions, skip=[target])
    predictor.set_vocabulary(vocab.display_names, emb)
    qs = build_query_set("red mug", vocab, emb, _fixed(regions[target][None, None]))
    found = find_text_instances(predictor, features, qs, emb, candidates=candidates,
                                vocab_config=VocabConfig(text_threshold=0.0, top_k=3))
    assert len(found) == 1
    inst = found[0]
    assert inst.prompt_kind == PromptKind.TEXT
    assert inst.prompt_id == inst.label == "red mug" and inst.id == "red mug/0"
    assert inst.class_index == -1  # an appended phrase has no index in the vocabulary
    assert np.array_equal(inst.mask, candidates.masks()[target])
    assert inst.top_k[0] == ("red mug", inst.score) and len(inst.top_k) == 3
    np.testing.assert_allclose(inst.embedding, regions[target].numpy(), rtol=1e-5, atol=1e-6)  # its region
    # the recognizer names with the vocabulary alone again afterwards
    assert predictor.model.recognizer.num_classes == len(vocab)
    above = VocabConfig(text_threshold=min(1.0, inst.score + 1e-6))
    assert find_text_instances(predictor, features, qs, emb, candidates=candidates, vocab_config=above) == []
    assert find_text_instances(predictor, features, qs, emb, candidates=candidates.subset([])) == []


@pytest.mark.slow
def test_two_queries_and_a_vocabulary_class(scene) -> None:
    predictor, features, candidates, regions = scene
    vocab, emb = _vocabulary_of(regions, skip=[0, 2])
    predictor.set_vocabulary(vocab.display_names, emb)
    phrases = torch.stack([regions[2], regions[0]])[:, None]
    qs = build_query_set("screwdriver, red mug, C3", vocab, emb, _fixed(phrases))
    found = find_text_instances(predictor, features, qs, emb, candidates=candidates,
                                vocab_config=VocabConfig(text_threshold=0.0))
    masks = candidates.masks()
    got = {(inst.label, inst.class_index): inst for inst in found}
    assert set(got) == {("screwdriver", -1), ("red mug", -1), ("C3", vocab.display_names.index("c3"))}
    assert np.array_equal(got["screwdriver", -1].mask, masks[2])
    assert np.array_equal(got["red mug", -1].mask, masks[0])
    assert np.array_equal(got["C3", 1].mask, masks[3])
    assert [inst.prompt_id for inst in found] == ["screwdriver", "red mug", "C3"]  # in query order


@pytest.mark.slow
def test_detector_boxes_as_candidates(scene, bear) -> None:
    predictor, features, _, _ = scene
    coco = json.loads(bear.annotations.read_text())
    image_id = next(im["id"] for im in coco["images"] if im["file_name"] == "3.jpeg")
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in
                      (a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id)])
    pred = predictor.predict_on(features, boxes=boxes, multimask_output=False)
    pooled, _ = predictor.model.recognizer.pool_masks(features.clip_levels[0], pred.low_res_logits[:, 0] > 0)
    regions = F.normalize(pooled, dim=-1)
    vocab, emb = _vocabulary_of(regions, skip=[1])
    predictor.set_vocabulary(vocab.display_names, emb)
    qs = build_query_set("toy robot", vocab, emb, _fixed(regions[1][None, None]))
    found = find_text_instances(predictor, features, qs, emb, boxes=boxes,
                                vocab_config=VocabConfig(text_threshold=0.0))
    assert [inst.label for inst in found] == ["toy robot"]
    assert np.array_equal(found[0].mask, pred.masks[1, 0].numpy())
    np.testing.assert_allclose(found[0].embedding, regions[1].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_predictor_vocabulary_must_match(scene) -> None:
    predictor, features, candidates, regions = scene
    vocab, emb = _vocabulary_of(regions, skip=[])
    predictor.set_vocabulary(vocab.display_names[:-1], emb[:-1])
    qs = build_query_set("red mug", vocab, emb, _fixed(regions[:1, None]))
    with pytest.raises(QueryError, match="rebuild the query set"):
        find_text_instances(predictor, features, qs, emb, candidates=candidates)
    predictor.set_vocabulary(vocab.display_names, emb)
    with pytest.raises(QueryError, match="base mask"):
        find_text_instances(predictor, features, qs, emb, torch.tensor([True]), candidates=candidates)
