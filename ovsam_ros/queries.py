"""Text queries: find every instance of each phrase of "red mug, screwdriver" in a frame.

Method. OVSAM has no text-conditioned mask decoder: masks come from point or box prompts, names
from a classifier over text embeddings. So a text query is answered in two steps:

1. candidate masks: everything mode (a point grid, filtered and de-duplicated; see
   :mod:`ovsam_ros.everything`), or the boxes of an external detector when the caller has them;
2. each candidate is named against the active vocabulary PLUS the query phrases, appended as extra
   classes embedded with the same text tower and templates. A candidate answers a query when its
   top class is that query and the query's probability is at least ``text_threshold``.

Why let the phrases compete with the vocabulary instead of thresholding one cosine similarity per
phrase: CLIP similarities are uncalibrated (their level shifts with the phrase and the image), so no
fixed cut-off separates "is a screwdriver" from "is not"; a softmax over many classes is calibrated
by the competition. A candidate is returned for "screwdriver" only if no vocabulary class describes
it better, e.g. a pen, which the vocabulary names, is not returned for "screwdriver". A phrase that is
already a class of the vocabulary (any synonym, compared case- and space-insensitively) is that class,
not a duplicate: a duplicate would split the probability with its twin and never be the top class.
Appended phrases are novel classes for the released base/novel fusion (the checkpoint was not
trained on them), which lets the frozen-CLIP branch carry their naming.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.utils import amg

from ovsam_ros.config import EverythingConfig, VocabConfig
from ovsam_ros.everything import (
    Candidates,
    candidates_to_instances,
    encode_masks,
    generate_candidates,
)
from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.prompts import PromptKind
from ovsam_ros.recognition import name_instances
from ovsam_ros.results import Instance
from ovsam_ros.vocab.templates import VILD_TEMPLATES
from ovsam_ros.vocab.text_embeddings import TextModel, Tokenizer, embed_vocabulary
from ovsam_ros.vocab.vocabulary import Vocabulary, normalise_name

_SEPARATORS = re.compile(r"[,;]")

PhraseEmbedder = Callable[[Vocabulary], torch.Tensor]
"""Embeds a vocabulary of phrases -> L2-normalised ``[Q, P, D]``, as the active vocabulary was."""


class QueryError(ValueError):
    """A text query that cannot be answered; the message says why."""


def parse_queries(text: str) -> list[str]:
    """``"red mug, screwdriver; red mug"`` -> ``["red mug", "screwdriver"]``.

    Splits on commas and semicolons, collapses white space, drops empty phrases and repeats
    (case-insensitive; the first spelling wins). An empty string gives an empty list (no queries).
    """
    if not isinstance(text, str):
        raise QueryError(f"text queries must be a string, got {type(text).__name__}")
    seen: set[str] = set()
    phrases = []
    for raw in _SEPARATORS.split(text):
        phrase = " ".join(raw.split())
        if phrase and phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            phrases.append(phrase)
    return phrases


def phrase_embedder(text_model: TextModel, tokenizer: Tokenizer, device: torch.device | str,
                    templates: Sequence[str] = VILD_TEMPLATES) -> PhraseEmbedder:
    """The embedding the vocabulary got (:func:`embed_vocabulary`: same tower, same templates),
    for the handful of query phrases (no progress bar, no cache)."""
    return functools.partial(embed_vocabulary, text_model=text_model, tokenizer=tokenizer, device=device,
                             progress=False, templates=templates)


def _pad_synonyms(embeddings: torch.Tensor, count: int) -> torch.Tensor:
    """``[C, P, D]`` -> ``[C, count, D]`` by repeating the first synonym, as the released classifier
    pads (a repeat cannot change the max over synonyms)."""
    missing = count - embeddings.shape[1]
    if missing <= 0:
        return embeddings
    return torch.cat([embeddings, embeddings[:, :1].expand(-1, missing, -1)], dim=1)


@dataclass(frozen=True)
class QuerySet:
    """Query phrases resolved against one active vocabulary; build it once per (queries, vocabulary)
    with :func:`build_query_set` and reuse it on every frame.

    ``query_class[q]`` is the class answering query ``q`` among ``names`` (the vocabulary followed
    by the appended phrases). Only the appended phrases' embeddings are kept (``phrase_embeddings``,
    ``[Q, P, D]``, None when every query is a vocabulary class), so a cache of many query sets costs
    kilobytes, not a copy of the vocabulary each; :meth:`extended` builds the full set for a use.
    """

    queries: tuple[str, ...]
    vocabulary: Vocabulary
    names: Vocabulary
    query_class: torch.Tensor
    phrase_embeddings: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        phrases = self.phrase_embeddings
        return self.query_class.nbytes + (0 if phrases is None else phrases.nbytes)

    def extended(self, vocab_embeddings: torch.Tensor,
                 base_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[C + Q, P, D]`` embeddings of ``names`` and its base mask (appended phrases are novel: the
        checkpoint was not trained on them); the vocabulary's own tensors when nothing is appended."""
        phrases = self.phrase_embeddings
        if phrases is None:
            return vocab_embeddings, base_mask
        count = max(vocab_embeddings.shape[1], phrases.shape[1])
        embeddings = torch.cat([_pad_synonyms(vocab_embeddings, count),
                                _pad_synonyms(phrases.to(vocab_embeddings), count)])
        if base_mask is not None:
            base_mask = torch.cat([base_mask.bool(),
                                   torch.zeros(len(phrases), dtype=torch.bool, device=base_mask.device)])
        return embeddings, base_mask


def build_query_set(
    queries: str | Sequence[str],
    vocabulary: Vocabulary,
    vocab_embeddings: torch.Tensor,
    embed: PhraseEmbedder,
) -> QuerySet:
    """Resolve ``queries`` (a "red mug, screwdriver" string or a list of phrases) against the active
    ``vocabulary`` with its ``[C, P, D]`` embeddings.

    Phrases that are a synonym of a vocabulary class become that class; the others are embedded with
    ``embed`` (checked against the vocabulary's dimension) to be appended as novel classes.
    """
    phrases = parse_queries(queries if isinstance(queries, str) else ", ".join(queries))
    if not phrases:
        raise QueryError("no text query: give one or more phrases separated by commas")
    num_vocab = len(vocabulary)
    if vocab_embeddings.dim() != 3 or vocab_embeddings.shape[0] != num_vocab:
        raise QueryError(f"vocabulary embeddings must be [{num_vocab}, P, D] for {vocabulary.label}, got "
                         f"{tuple(vocab_embeddings.shape)}")
    lookup: dict[str, int] = {}
    for index, synonyms in enumerate(vocabulary.classes):
        for synonym in synonyms:
            lookup.setdefault(normalise_name(synonym), index)
    known = {q: lookup[normalise_name(q)] for q in phrases if normalise_name(q) in lookup}
    new = [q for q in phrases if q not in known]
    query_emb, names = None, vocabulary
    if new:
        new_vocab = Vocabulary.from_names(new, name="queries")
        query_emb = embed(new_vocab)
        dim = vocab_embeddings.shape[2]
        if query_emb.dim() != 3 or query_emb.shape[0] != len(new) or query_emb.shape[2] != dim:
            raise QueryError(f"phrase embeddings must be [{len(new)}, P, {dim}] (the vocabulary's text "
                             f"tower), got {tuple(query_emb.shape)}")
        names = Vocabulary(f"{vocabulary.name}+queries", vocabulary.classes + new_vocab.classes)
    query_class = torch.tensor([known[q] if q in known else num_vocab + new.index(q) for q in phrases])
    return QuerySet(tuple(phrases), vocabulary, names, query_class, query_emb)


@dataclass(frozen=True)
class QueryMatches:
    """Candidate ``candidate[i]`` answers query ``query[i]`` with probability ``score[i]``."""

    candidate: torch.Tensor
    query: torch.Tensor
    score: torch.Tensor


def match_queries(probs: torch.Tensor, query_class: torch.Tensor, text_threshold: float) -> QueryMatches:
    """From probabilities ``[N, K + 1]`` (background last): every (candidate, query) pair where the
    candidate's top real class (background excluded) is the query's class and its probability is
    at least ``text_threshold``."""
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise QueryError(f"probabilities must be [N, classes + 1], got {tuple(probs.shape)}")
    if not 0.0 <= text_threshold <= 1.0:
        raise QueryError(f"text_threshold must be in [0, 1], got {text_threshold}")
    query_class = query_class.to(probs.device)
    if len(query_class) and int(query_class.max()) >= probs.shape[1] - 1:
        raise QueryError(f"query classes {query_class.tolist()} outside the {probs.shape[1] - 1} classes")
    score, top = probs[:, :-1].max(dim=1)
    answers = (top[:, None] == query_class[None, :]) & (score >= text_threshold)[:, None]
    candidate, query = torch.nonzero(answers, as_tuple=True)
    return QueryMatches(candidate, query, score[candidate])


@contextmanager
def _query_vocabulary(predictor: Any, extended: tuple[torch.Tensor, torch.Tensor | None],
                      restore: tuple[torch.Tensor, torch.Tensor | None]) -> Iterator[None]:
    """The recognizer names with the ``extended`` (vocabulary + phrases) embeddings inside the block,
    and with ``restore`` (the vocabulary's) again after it, also on error. Call it on the thread that
    runs the predictor."""
    recognizer = predictor.model.recognizer
    device = predictor.device

    def use(embeddings: torch.Tensor, base_mask: torch.Tensor | None) -> None:
        mask = None if base_mask is None else base_mask.to(device)
        recognizer.set_text_embeddings(embeddings.to(device), mask)

    use(*extended)
    try:
        yield
    finally:
        use(*restore)


def _check_recognition(predictor: Any, query_set: QuerySet) -> None:
    recognizer = predictor.model.recognizer
    if recognizer is None:
        raise QueryError(f"text queries need a recognizer, and {type(predictor.model).__name__} only "
                         "segments: use an OVSAM preset, or configure a CLIP model for mobilesam / sam-clip")
    if predictor.class_names != query_set.vocabulary.display_names:
        raise QueryError(f"the queries were resolved against vocabulary {query_set.vocabulary.label} but the "
                         f"predictor names with another one ({len(predictor.class_names)} classes): "
                         "rebuild the query set after set_vocabulary")


def _box_candidates(predictor: Any, features: ImageFeatures,
                    boxes: np.ndarray) -> tuple[Candidates, torch.Tensor, torch.Tensor]:
    """Masks of detector boxes as candidates, with their probabilities over the query vocabulary and
    their region embeddings (the predictor's recognition, which gets the prompt boxes as the released
    model does)."""
    pred = predictor.predict_on(features, boxes=boxes, multimask_output=False)
    masks = pred.masks[:, 0]
    probs = torch.cat([pred.probs, pred.background[:, None]], dim=1)
    box_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=masks.device)
    centres = (box_t[:, :2] + box_t[:, 2:]) / 2
    candidates = Candidates(
        rles=encode_masks(masks), boxes=amg.batched_mask_to_box(masks).float(), points=centres,
        mask_score=pred.mask_score[:, 0], stability_score=pred.stability_score[:, 0],
        low_res_logits=pred.low_res_logits[:, 0], image_size=tuple(masks.shape[-2:]))
    return candidates, probs, pred.embedding


def find_text_instances(
    predictor: Any,
    features: ImageFeatures,
    query_set: QuerySet,
    vocab_embeddings: torch.Tensor,
    base_mask: torch.Tensor | None = None,
    *,
    extended: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    candidates: Candidates | None = None,
    boxes: np.ndarray | None = None,
    config: EverythingConfig | None = None,
    vocab_config: VocabConfig | None = None,
) -> list[Instance]:
    """Every instance of every query on one frame: ``prompt_kind`` TEXT, ``prompt_id`` and ``label``
    the query phrase, ``score`` its probability, ``class_index`` its vocabulary index (-1 for an
    appended phrase), ``top_k`` over vocabulary + phrases. Ordered by query, then by score.

    ``vocab_embeddings`` and ``base_mask`` are the active vocabulary's (the recognizer's own, restored
    afterwards); ``extended`` is ``query_set.extended(...)`` of them when the caller keeps it between
    frames (at 21,843 classes it is a ~1 GB tensor: built once, not per frame).

    Candidates: ``candidates`` when given (e.g. everything mode already ran on this frame), else the
    masks of ``boxes`` (``[N, 4]`` detector boxes, original pixels), else everything mode with
    ``config``. ``vocab_config`` gives ``text_threshold`` and ``top_k``.
    """
    _check_recognition(predictor, query_set)
    vocab_config = VocabConfig() if vocab_config is None else vocab_config
    if base_mask is not None and tuple(base_mask.shape) != (len(query_set.vocabulary),):
        raise QueryError(f"base mask must be [{len(query_set.vocabulary)}] bool, "
                         f"got {tuple(base_mask.shape)}")
    if extended is None:
        extended = query_set.extended(vocab_embeddings, base_mask)
    restore = (vocab_embeddings, base_mask)
    if candidates is None and boxes is not None:
        with _query_vocabulary(predictor, extended, restore):
            candidates, probs, embedding = _box_candidates(predictor, features, boxes)
    else:
        if candidates is None:
            candidates = generate_candidates(predictor, features, config)
        with _query_vocabulary(predictor, extended, restore):
            log_scores, embedding = predictor.recognize_regions(features, candidates.low_res_logits)
            probs = log_scores.softmax(dim=-1)
    matches = match_queries(probs, query_set.query_class, vocab_config.text_threshold)
    order = np.lexsort((-matches.score.cpu().numpy(), matches.query.cpu().numpy()))
    chosen = matches.candidate.cpu().numpy()[order]
    namings = name_instances(probs[torch.as_tensor(chosen, device=probs.device)], query_set.names,
                             vocab_config.top_k)
    embeddings = embedding[torch.as_tensor(chosen, device=embedding.device)].cpu().numpy()
    instances = candidates_to_instances(candidates.subset(chosen), None, embeddings, PromptKind.TEXT, "")
    numbers: dict[str, int] = {}
    for inst, naming, q in zip(instances, namings, matches.query.cpu().numpy()[order], strict=True):
        phrase = query_set.queries[q]
        class_index = int(query_set.query_class[q])
        numbers[phrase] = numbers.get(phrase, -1) + 1
        inst.prompt_id, inst.id, inst.label = phrase, f"{phrase}/{numbers[phrase]}", phrase
        inst.class_index = class_index if class_index < len(query_set.vocabulary) else -1
        inst.score, inst.top_k = naming.score, list(naming.top_k)
    return instances
