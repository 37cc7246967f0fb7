"""SAM2CLIP: the adapter that turns CLIP's C2..C5 into SAM's ``[B, 256, 64, 64]`` image embedding.

Layout and arithmetic follow ovsam-forward-pass.md §3 so the official ``sam2clip_vith_rn50x16.pth``
(prefix ``neck_student``) loads strictly. The transformer blocks and LayerNorm2d are
segment_anything's own, so they match SAM ViT-H's blocks by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Block
from torch import nn

from .checkpoints import load_into, read_state_dict, take_prefix

CHECKPOINT_PREFIX = "neck_student"


class FeatureShapeError(ValueError):
    """CLIP stage outputs that do not fit the adapter (wrong count, channels or sizes)."""


class LevelEmbed(nn.Module):
    """One CLIP level to the adapter width at the adapter grid, channels last.

    The conv is named ``projection`` to match the official (mmdet PatchEmbed) key names."""

    def __init__(self, in_channels: int, embed_dim: int, scale: float) -> None:
        super().__init__()
        if scale > 1:  # coarser than the grid (C5 at stride 32): upsample
            self.projection: nn.Module = nn.ConvTranspose2d(in_channels, embed_dim, 2, stride=2)
        else:
            k = round(1 / scale)
            self.projection = nn.Conv2d(in_channels, embed_dim, k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x).permute(0, 2, 3, 1)


class Sam2Clip(nn.Module):
    """CLIP stage outputs -> SAM image embedding.

    Each level is projected to ``embed_dim`` at the ``grid`` (stride 16), tagged with a learned level
    encoding, the levels are summed, SAM's absolute position embedding is added, then SAM ViT blocks
    (windowed except ``global_blocks``) and SAM's neck. Defaults are the released RN50x16 / ViT-H sizes.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (384, 768, 1536, 3072),
        embed_dim: int = 1280,
        out_channels: int = 256,
        depth: int = 5,
        num_heads: int = 16,
        window_size: int = 14,
        global_blocks: Sequence[int] = (4,),
        grid: int = 64,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"Sam2Clip takes four CLIP levels (C2..C5), got {len(in_channels)} channels")
        self.in_channels = tuple(in_channels)
        self.grid = grid
        # level i has stride 4 * 2**i; the grid has stride 16
        self.level_scales = (0.25, 0.5, 1.0, 2.0)
        self.patch_embeds = nn.ModuleList(
            LevelEmbed(c, embed_dim, s) for c, s in zip(self.in_channels, self.level_scales, strict=True)
        )
        self.level_encoding = nn.Embedding(4, embed_dim)
        self.register_buffer("pos_embed", torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=4.0,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                act_layer=nn.GELU,
                use_rel_pos=True,
                window_size=0 if i in global_blocks else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    def expected_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        return [
            (batch, c, round(self.grid / s), round(self.grid / s))
            for c, s in zip(self.in_channels, self.level_scales, strict=True)
        ]

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """``levels`` = (C2, C3, C4, C5) for a padded square input -> ``[B, out_channels, grid, grid]``."""
        if len(levels) != 4:
            raise FeatureShapeError(f"expected 4 CLIP levels (C2..C5), got {len(levels)}")
        expected = self.expected_shapes(levels[0].shape[0])
        got = [tuple(t.shape) for t in levels]
        if got != expected:
            raise FeatureShapeError(f"CLIP levels have shapes {got}, the adapter needs {expected}")
        x = None
        for i, (embed, level) in enumerate(zip(self.patch_embeds, levels, strict=True)):
            tagged = embed(level) + self.level_encoding.weight[i]
            x = tagged if x is None else x + tagged
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def load_sam2clip(path: str | Path) -> Sam2Clip:
    """The released adapter from ``sam2clip_vith_rn50x16.pth`` (keys under ``neck_student.``), frozen."""
    model = Sam2Clip()
    weights = take_prefix(read_state_dict(path), CHECKPOINT_PREFIX)
    load_into(model, weights, f"SAM2CLIP adapter ({path}, prefix '{CHECKPOINT_PREFIX}')")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
