"""OVSAM's released mask decoder: SAM's two-way transformer with one mask token and a label token.

The released head drops SAM's IoU token and IoU MLP, keeps one mask token (initialised from SAM's
token 0) and puts a learned label token FIRST: tokens are ``[label, mask, sparse...]``. The label
token's output goes through ``label_mlp`` to the CLIP width; the released code multiplies it by 0
before adding it to the region feature, so it only matters if it is non-finite. We still compute it
(two tiny linear layers per prompt) so a broken checkpoint shows up the way it does upstream.

Parameter names follow the ``mask_decoder.*`` group of ``clip2sam_*.pth`` (minus ``roi_conv``,
which lives in :mod:`ovsam_ros.model.clip2sam`). The transformer, MLP and LayerNorm2d are
segment_anything's own modules.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn


class DecoderInputError(ValueError):
    """Decoder inputs whose shapes do not fit together."""


class SingleTokenMaskDecoder(nn.Module):
    """SAM's mask decoder parts for one mask token and no IoU head (the ``mask_decoder.mask_decoder``
    sub-module of the released checkpoint)."""

    def __init__(self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads,
                                             mlp_dim=mlp_dim)
        self.mask_tokens = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList([MLP(dim, dim, dim // 8, 3)])


class OVSAMMaskDecoder(nn.Module):
    """Prompt embeddings + image embedding -> one low-res mask per prompt and the label embedding."""

    def __init__(self, dim: int = 256, label_dim: int = 768) -> None:
        super().__init__()
        self.dim = dim
        self.mask_decoder = SingleTokenMaskDecoder(dim)
        self.label_token = nn.Embedding(1, dim)
        self.label_mlp = MLP(dim, dim, label_dim, 3)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_embedding`` ``[1 or N, dim, h, w]``, ``image_pe`` ``[1, dim, h, w]``, ``sparse``
        ``[N, K, dim]``, ``dense`` ``[N, dim, h, w]``. Returns low-res logits ``[N, 1, 4h, 4w]`` and the
        label-MLP output ``[N, label_dim]``."""
        n = sparse.shape[0]
        if sparse.dim() != 3 or sparse.shape[-1] != self.dim:
            raise DecoderInputError(f"sparse embeddings must be [N, K, {self.dim}], got {list(sparse.shape)}")
        if dense.dim() != 4 or dense.shape[0] != n or dense.shape[1:] != image_embedding.shape[1:]:
            raise DecoderInputError(
                f"dense embeddings {tuple(dense.shape)} do not fit {n} prompts on an image embedding "
                f"{tuple(image_embedding.shape)}"
            )
        if image_embedding.shape[0] not in (1, n):
            raise DecoderInputError(f"image embedding batch {image_embedding.shape[0]} is neither 1 nor {n}")
        core = self.mask_decoder
        out_tokens = torch.cat([self.label_token.weight, core.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image_embedding + dense  # broadcasting replaces SAM's repeat_interleave of the embedding
        pos = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = core.transformer(src, pos, tokens)
        upscaled = core.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = core.output_hypernetworks_mlps[0](hs[:, 1, :])
        masks = (hyper.unsqueeze(1) @ upscaled.flatten(2)).view(b, 1, *upscaled.shape[-2:])
        return masks, self.label_mlp(hs[:, 0, :])
