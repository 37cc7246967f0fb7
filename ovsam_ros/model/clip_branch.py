"""The frozen-CLIP branch of the released open-vocabulary ensemble.

The trained CLIP2SAM head names novel classes poorly; the frozen CLIP tower has not forgotten them.
So the box is RoIAligned on C5 (stride 32) to exactly the grid CLIP's attention pool was trained
on (12x12 for RN50x16 at 384 px), and CLIP's own attention pool turns it into a 768-d embedding in
the text space. The box is the prompt box, or the predicted mask's box where the prompt has none
(clicks, everything mode, text candidates); the official evaluation fed ground-truth boxes here,
which a robot never has.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ovsam_ros.model.clip2sam import RoIInputError, boxes_to_rois


class ClipBranch(nn.Module):
    """C5 ``[1, C, H, W]`` + boxes ``[N, 4]`` (input pixels) -> CLIP image embeddings ``[N, D]``.

    ``attnpool`` is the CLIP tower's own attention pool (open_clip ``AttentionPool2d``); the RoI size
    is read off its positional embedding (``side * side + 1`` rows). Its weights are used by
    :func:`class_token_pool`, not its ``forward``.
    """

    def __init__(self, attnpool: nn.Module, stride: int = 32) -> None:
        super().__init__()
        self.attnpool = attnpool
        self.stride = stride
        cells = attnpool.positional_embedding.shape[0] - 1
        self.roi_size = math.isqrt(cells)
        if self.roi_size * self.roi_size != cells:
            raise ValueError(f"attention pool has {cells} positions, not a square grid")

    def forward(self, c5: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        if c5.dim() != 4 or c5.shape[0] != 1:
            raise RoIInputError(f"C5 must be one image [1, C, H, W], got {tuple(c5.shape)}")
        rois = boxes_to_rois(boxes.to(c5.dtype))
        crops = roi_align(c5, rois, self.roi_size, spatial_scale=1.0 / self.stride, sampling_ratio=0,
                          aligned=True)
        return class_token_pool(self.attnpool, crops)


def class_token_pool(attnpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d.forward`` on ``x`` ``[N, C, H, W]``, computing only the row it
    returns. Deliberately not its ``forward``: that attends with all ``H * W + 1`` tokens as queries
    and keeps the first (the mean token); each query row is independent, so asking the same
    ``multi_head_attention_forward`` with that one query gives the same numbers (to float rounding)
    without the other 144 rows' query and output projections, a third of the pool's work on a
    12 x 12 RoI."""
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW)NC
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    tokens = tokens + attnpool.positional_embedding[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1],
        num_heads=attnpool.num_heads, q_proj_weight=attnpool.q_proj.weight,
        k_proj_weight=attnpool.k_proj.weight, v_proj_weight=attnpool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([attnpool.q_proj.bias, attnpool.k_proj.bias, attnpool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=attnpool.c_proj.weight,
        out_proj_bias=attnpool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]
