"""Open-vocabulary classifier: cosine similarity with CLIP text embeddings, max over synonyms.

Embeddings come as ``[C, P, D]`` (P synonyms per class, padded by repeating the first). Only the real
rows are kept, flat as ``[R, D]`` with the class of each row: padding repeats a class's first row and
cannot change its max, and ImageNet-21k has 40,745 real synonyms in a [21843, 15, 768] tensor (327,645
rows). Any vocabulary is then ONE matrix multiply on the device plus a segment max over each class's
rows. On a GPU the rows are stored in half precision. Logits are ``exp(4.6052)`` (computed in float32,
= 100.00296) times the best synonym's cosine; a background logit of 0 is appended last, as in the
released head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE: float = float(torch.tensor(4.6052, dtype=torch.float32).exp())
_NORM_TOLERANCE = 5e-3  # fp16 embeddings carry ~1e-3 norm error


class EmbeddingError(ValueError):
    """Text embeddings or class selections that do not fit the classifier."""


def pad_synonyms(per_class: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-class ``[P_c, D]`` synonym embeddings into ``[C, max P_c, D]``, padding a class by
    repeating its first synonym (a repeat cannot change the max over synonyms)."""
    if not per_class or any(e.dim() != 2 or e.shape[0] == 0 for e in per_class):
        raise EmbeddingError("each class needs a non-empty [P, D] synonym embedding")
    most = max(e.shape[0] for e in per_class)
    return torch.stack([torch.cat([e, e[:1].expand(most - e.shape[0], -1)]) for e in per_class])


class TextClassifier(nn.Module):
    """Region features ``[N, D]`` -> logits ``[N, C + 1]`` (last column = background, always 0)."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_classes = 0
        self.num_synonyms = 0
        self.register_buffer("weight", torch.zeros(0, embed_dim), persistent=False)
        self.register_buffer("row_class", torch.zeros(0, dtype=torch.long), persistent=False)
        # Prepared weights of the last few embedding tensors given, keyed by identity (each entry keeps
        # its source alive, so an id is never reused while cached): text queries swap between the
        # vocabulary and the vocabulary + query phrases on every frame, and re-validating and
        # re-flattening 21,843 x P x D embeddings each time cost ~0.75 s per swap on CPU.
        self._prepared: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def set_embeddings(self, embeddings: torch.Tensor) -> None:
        """``[C, P, D]`` L2-normalised rows; kept on this module's device, in its dtype (half on a GPU)."""
        device = self.weight.device
        dtype = torch.float16 if device.type == "cuda" else self.weight.dtype
        for source, weight, row_class in self._prepared:
            if source is embeddings and (weight.device, weight.dtype) == (device, dtype):
                self.weight, self.row_class = weight, row_class
                self.num_classes, self.num_synonyms = embeddings.shape[:2]
                return
        if embeddings.dim() != 3 or embeddings.shape[-1] != self.embed_dim or 0 in embeddings.shape[:2]:
            raise EmbeddingError(f"text embeddings must be [C, P, {self.embed_dim}] with C, P >= 1, "
                                 f"got {tuple(embeddings.shape)}")
        if not torch.isfinite(embeddings).all():
            raise EmbeddingError("text embeddings contain NaN or infinite values")
        norms = embeddings.float().norm(dim=-1)
        if ((norms - 1).abs() > _NORM_TOLERANCE).any():
            raise EmbeddingError(f"text embeddings must be L2-normalised per synonym "
                                 f"(norms {norms.min():.4f}..{norms.max():.4f})")
        c, p, _ = embeddings.shape
        real = torch.ones(c, p, dtype=torch.bool, device=embeddings.device)
        real[:, 1:] = (embeddings[:, 1:] != embeddings[:, :1]).any(dim=-1)  # a repeat of row 0 is padding
        self.weight = embeddings[real].to(device, dtype).contiguous()
        self.row_class = real.nonzero()[:, 0].to(device)
        self.num_classes, self.num_synonyms = c, p
        self._prepared = [*self._prepared[-1:], (embeddings, self.weight, self.row_class)]

    @property
    def num_rows(self) -> int:
        """Synonym rows kept (the padding dropped)."""
        return len(self.weight)

    def class_indices(self, classes: torch.Tensor) -> torch.Tensor:
        """A bool ``[C]`` mask or integer indices -> validated indices on this module's device."""
        classes = classes.to(self.weight.device)
        if classes.dtype == torch.bool:
            if classes.shape != (self.num_classes,):
                raise EmbeddingError(f"class mask must be [{self.num_classes}], got {tuple(classes.shape)}")
            classes = classes.nonzero().flatten()
        if classes.dim() != 1 or classes.numel() == 0 or classes.is_floating_point():
            raise EmbeddingError("class subset must be a non-empty 1-D integer index tensor or a bool mask")
        if int(classes.min()) < 0 or int(classes.max()) >= self.num_classes:
            raise EmbeddingError(f"class indices must lie in [0, {self.num_classes})")
        return classes

    def forward(self, features: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``classes`` (validated indices, see :meth:`class_indices`) restricts the vocabulary; the
        output then has ``len(classes) + 1`` columns in that order, background last."""
        if self.num_classes == 0:
            raise EmbeddingError("no text embeddings set: call set_text_embeddings first")
        if features.dim() != 2 or features.shape[1] != self.embed_dim:
            raise EmbeddingError(f"region features must be [N, {self.embed_dim}], "
                                 f"got {tuple(features.shape)}")
        weight, row_class, columns = self.weight, self.row_class, self.num_classes
        if classes is not None:  # the rows of each chosen class, in the order asked
            counts = torch.bincount(row_class, minlength=self.num_classes)
            starts = counts.cumsum(0) - counts
            per = counts[classes]
            first = torch.repeat_interleave(starts[classes] - (per.cumsum(0) - per), per)
            rows = first + torch.arange(len(first), device=first.device)
            row_class = torch.repeat_interleave(torch.arange(len(classes), device=per.device), per)
            weight, columns = weight[rows], len(classes)
        x = F.normalize(features, dim=-1).to(weight.dtype)
        cosine = (x @ weight.T).float()
        best = cosine.new_full((x.shape[0], columns), -torch.inf)
        best.scatter_reduce_(1, row_class.expand(x.shape[0], -1), cosine, "amax")
        logits = best * LOGIT_SCALE
        return torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)
