"""The released open-vocabulary ensemble: a geometric mean of head and frozen-CLIP probabilities.

With ``q = softmax(head)`` and ``c = softmax(clip)`` over C + 1 columns (background last), base
classes and background keep mostly the trained head, ``q^0.9 c^0.1``; every other class of the
active vocabulary leans on frozen CLIP, ``q^0.1 c^0.9``, since the head never saw it. If the mask
has no positive cell at the CLIP grid (32x32), only the head counts. The result is a log-score,
turned into probabilities by a softmax (the label is the argmax over the real classes).

The released code computes ``log(q ** (1 - a) * c ** a)`` and multiplies by a 0/1 mask, which gives
-inf (and NaN after ``-inf * 0``) once a probability underflows; we compute the same quantity as
``(1 - a) * log_softmax(head) + a * log_softmax(clip)``, which is finite. The released "neither base
nor novel -> -1000" rule has no counterpart: in an open vocabulary every non-base class is novel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BASE_CLIP_WEIGHT = 0.1  # alpha: weight of frozen CLIP on base classes and background
NOVEL_CLIP_WEIGHT = 0.9  # beta: weight of frozen CLIP on all other classes


class FusionInputError(ValueError):
    """Logits, masks or base-class masks whose shapes do not agree."""


def mask_is_valid(low_res_logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[N, h, w]`` logits -> bool ``[N]``: any positive value after bilinear resizing to ``grid``."""
    small = F.interpolate(low_res_logits.unsqueeze(1).float(), size=grid, mode="bilinear",
                          align_corners=False)
    return (small > 0).flatten(1).any(dim=1)


def fuse(
    head_logits: torch.Tensor,
    clip_logits: torch.Tensor,
    valid: torch.Tensor,
    base_mask: torch.Tensor | None = None,
    alpha: float = BASE_CLIP_WEIGHT,
    beta: float = NOVEL_CLIP_WEIGHT,
) -> torch.Tensor:
    """Fused probabilities ``[N, C + 1]`` from the two branches' logits ``[N, C + 1]``.

    ``valid`` bool ``[N]`` (see :func:`mask_is_valid`); ``base_mask`` bool ``[C]`` marks the classes the
    head was trained on (None: only background counts as seen, as the released code does).
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
    if base_mask is not None:
        if base_mask.shape != (k - 1,):
            raise FusionInputError(f"base_mask must be [{k - 1}], got {tuple(base_mask.shape)}")
        seen[:-1] = base_mask.to(seen.device, torch.bool)
    clip_weight = torch.where(seen, alpha, beta) * valid.to(torch.float32).unsqueeze(1)
    log_q = F.log_softmax(head_logits.float(), dim=-1)
    log_c = F.log_softmax(clip_logits.float(), dim=-1)
    return torch.softmax((1 - clip_weight) * log_q + clip_weight * log_c, dim=-1)
