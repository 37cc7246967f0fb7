"""From class probabilities to names: top-k, the naming threshold, and restriction to a subset.

The recognizer returns probabilities ``[N, C + 1]`` whose last column is background. As in the released
model, the label is the argmax over the real classes (background never wins), and its probability stays
the softmax value including background, so a low score still says "probably not an object of this
vocabulary". Everything runs on the probabilities' device with one transfer to the host at the end.

The no-name contract, the same in every output (InstanceArray, Detection2D, the class image, the CLI
JSON, COCO export): an instance whose top-1 probability is below the threshold is unnamed, with
label ``""`` (:data:`UNNAMED`), class_index -1, no top-k hypotheses, and its top-1 probability kept
as ``score`` so a consumer can see how far below the threshold it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ovsam_ros.vocab.vocabulary import Vocabulary, normalise_name

UNNAMED = ""


class RecognitionError(ValueError):
    """Probabilities or options that do not fit the vocabulary; the message says what is wrong."""


@dataclass(frozen=True)
class Naming:
    """The name given to one instance. ``class_index`` indexes the full vocabulary; -1 (label ``""``,
    no top-k) when unnamed."""

    label: str
    class_index: int
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)


def subset_indices(vocab: Vocabulary, names: Sequence[str]) -> np.ndarray:
    """Vocabulary indices of ``names``, matched on display names case- and space-insensitively."""
    if isinstance(names, str) or not names:
        raise RecognitionError("a class subset must be a non-empty list of class names")
    lookup: dict[str, int] = {}
    for i, display in enumerate(vocab.display_names):
        lookup.setdefault(normalise_name(display), i)
    missing = [n for n in names if normalise_name(n) not in lookup]
    if missing:
        raise RecognitionError(f"not in vocabulary {vocab.label}: {missing[:10]}")
    return np.unique([lookup[normalise_name(n)] for n in names])


def name_instances(
    probs: torch.Tensor,
    vocab: Vocabulary,
    top_k: int = 5,
    score_threshold: float = 0.0,
    subset: Sequence[str] | np.ndarray | None = None,
) -> list[Naming]:
    """One :class:`Naming` per row of ``probs`` ``[N, C + 1]`` (last column background).

    ``score_threshold``: a best probability below it leaves the instance unnamed (label ``""``,
    class_index -1, empty top_k; ``score`` is still that probability). ``subset``: class names, or
    vocabulary indices from :func:`subset_indices`; only those classes compete, with probabilities
    renormalised over the subset plus background, i.e. what the classifier would give had the
    vocabulary held only the subset (background keeps its logit of 0).
    """
    if probs.ndim != 2 or probs.shape[1] != len(vocab) + 1:
        raise RecognitionError(
            f"probabilities must be [N, {len(vocab) + 1}] for vocabulary {vocab.label} "
            f"(C classes + background), got {list(probs.shape)}")
    if top_k < 1:
        raise RecognitionError(f"top_k must be >= 1, got {top_k}")
    if not 0.0 <= score_threshold <= 1.0:
        raise RecognitionError(f"score_threshold must be within [0, 1], got {score_threshold}")
    if probs.shape[0] == 0:
        return []
    names = vocab.display_names
    if subset is None:
        classes = None
        real = probs[:, :-1]
    else:
        classes = subset if isinstance(subset, np.ndarray) else subset_indices(vocab, subset)
        if (not np.issubdtype(classes.dtype, np.integer) or classes.size == 0
                or classes.min() < 0 or classes.max() >= len(vocab)):
            raise RecognitionError(f"subset indices must lie in [0, {len(vocab)}), got {classes!r}")
        columns = torch.as_tensor(np.append(classes, len(vocab)), device=probs.device)
        kept = probs.index_select(1, columns)
        real = (kept / kept.sum(dim=1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny))[:, :-1]
    values, indices = real.float().topk(min(top_k, real.shape[1]), dim=1)
    # one device-to-host copy; float32 holds class indices exactly up to 2**24
    packed = torch.stack([values, indices.float()]).cpu().numpy()
    values, indices = packed[0], packed[1].astype(np.int64)
    if classes is not None:
        indices = classes[indices]
    namings = []
    for row_values, row_indices in zip(values, indices, strict=True):
        best = float(row_values[0])
        ranked = [(names[i], float(v)) for i, v in zip(row_indices, row_values, strict=True)]
        if best < score_threshold:
            namings.append(Naming(UNNAMED, -1, best, []))
        else:
            namings.append(Naming(names[row_indices[0]], int(row_indices[0]), best, ranked))
    return namings
