"""The released open-vocabulary ensemble: a geometric mean of head and frozen-CLIP probabilities.

With ``q = softmax(head)`` and ``c = softmax(clip)`` over C + 1 columns (background last), base
classes and background keep mostly the trained head, ``q^0.9 c^0.1``; novel classes lean on frozen
CLIP, ``q^0.1 c^0.9``, since the head never saw them. If the mask has no positive cell at the CLIP
grid (32x32), only the head counts. The log of that product is the released output
(``open_voc_inference``): an unnormalised log-score whose argmax over the real classes is the label
and whose softmax users read as probabilities.

A class split (:mod:`ovsam_ros.vocab.class_splits`) may also exclude classes, as the released COCO
48/17 protocol does with 15 of the 80 classes: their score is the released sentinel
:data:`EXCLUDED_SCORE` (-1000), so they are never predicted and take no probability mass
(``exp(-1000)`` is 0 in float32).

The released code computes ``log(q ** (1 - a) * c ** a)`` and multiplies it by a 0/1 mask, which gives
-inf (and NaN after ``-inf * 0``) once a probability underflows; we compute the same quantity as
``(1 - a) * log_softmax(head) + a * log_softmax(clip)``, which is finite and agrees with the literal
formula to float32 rounding wherever that one is finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BASE_CLIP_WEIGHT = 0.1  # alpha: weight of frozen CLIP on base classes and background
NOVEL_CLIP_WEIGHT = 0.9  # beta: weight of frozen CLIP on all other classes
EXCLUDED_SCORE = -1000.0  # the released log-score of a class outside the split's base and novel sets


class FusionInputError(ValueError):
    """Logits, masks or class masks whose shapes do not agree."""


def mask_is_valid(low_res_logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[N, h, w]`` logits -> bool ``[N]``: any positive value after bilinear resizing to ``grid``."""
    small = F.interpolate(low_res_logits.unsqueeze(1).float(), size=grid, mode="bilinear",
                          align_corners=False)
    return (small > 0).flatten(1).any(dim=1)


def _class_mask(mask: torch.Tensor | None, name: str, classes: int,
                device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.shape != (classes,):
        raise FusionInputError(f"{name} must be [{classes}], got {tuple(mask.shape)}")
    return mask.to(device, torch.bool)


def exclude_classes(scores: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    """``scores`` ``[N, C + 1]`` with the real classes marked in bool ``excluded`` ``[C]`` set to
    :data:`EXCLUDED_SCORE` (background is never excluded)."""
    excluded = _class_mask(excluded, "excluded", scores.shape[1] - 1, scores.device)
    if excluded is None:
        return scores
    column = torch.cat([excluded, excluded.new_zeros(1)])
    return scores.masked_fill(column, EXCLUDED_SCORE)


def fuse_log_scores(
    head_logits: torch.Tensor,
    clip_logits: torch.Tensor,
    valid: torch.Tensor,
    base_mask: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    alpha: float = BASE_CLIP_WEIGHT,
    beta: float = NOVEL_CLIP_WEIGHT,
) -> torch.Tensor:
    """The released fused log-scores ``[N, C + 1]`` from the two branches' logits ``[N, C + 1]``.

    ``valid`` bool ``[N]`` (see :func:`mask_is_valid`); ``base_mask`` bool ``[C]`` marks the classes the
    head was trained on (None: only background counts as seen, as the released code does without a
    split); ``excluded`` bool ``[C]`` the classes a split leaves out (score :data:`EXCLUDED_SCORE`).
    """
    if head_logits.shape != clip_logits.shape or head_logits.dim() != 2:
        raise FusionInputError(
            f"head and CLIP logits must both be [N, C + 1], got {tuple(head_logits.shape)} and "
            f"{tuple(clip_logits.shape)}"
        )
    n, k = head_logits.shape
    if valid.shape != (n,):
        raise FusionInputError(f"valid must be [{n}], got {tuple(valid.shape)}")
    seen = torch.zeros(k, dtype=torch.bool, device=head_logits.device)
    seen[-1] = True
    base = _class_mask(base_mask, "base_mask", k - 1, seen.device)
    if base is not None:
        seen[:-1] = base
    clip_weight = torch.where(seen, alpha, beta) * valid.to(torch.float32).unsqueeze(1)
    log_q = F.log_softmax(head_logits.float(), dim=-1)
    log_c = F.log_softmax(clip_logits.float(), dim=-1)
    return exclude_classes((1 - clip_weight) * log_q + clip_weight * log_c, excluded)
