"""TinyViT (MobileSAM's image encoder): strict loading of the real checkpoint, and block-by-block
numerical parity with timm's TinyViT modules (an independent implementation) on random weights."""

from __future__ import annotations

import pytest
import torch
from timm.models import tiny_vit as timm_tv
from torch import nn

from ovsam_ros.model.checkpoints import read_state_dict, take_prefix
from ovsam_ros.model.tiny_vit import MBConv, PatchEmbed, PatchMerging, TinyViT, TinyViTBlock, TinyViTConfig


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, BN statistics included, so every term is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.5 if t.ndim == 1 else
                        torch.randn(t.shape, generator=gen) * 0.2)
    return module.eval()


def _to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key names -> timm's (``c`` -> ``conv``, ``seq.0/2`` -> ``conv1/2``)."""
    out = {}
    for k, v in state.items():
        k = k.replace("seq.0.", "conv1.").replace("seq.2.", "conv2.")
        out[k.replace(".c.", ".conv.")] = v
    return out


def _same(ours: nn.Module, ref: nn.Module, x: torch.Tensor, seed: int) -> None:
    _randomise(ours, seed)
    missing, unexpected = ref.load_state_dict(_to_timm(ours.state_dict()), strict=False)
    assert not unexpected and all("attention_bias_idxs" in k for k in missing)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_patch_embed_matches_timm():
    _same(PatchEmbed(3, 16), timm_tv.PatchEmbed(3, 16, nn.GELU), torch.randn(2, 3, 32, 48), 1)


def test_mbconv_matches_timm():
    _same(MBConv(16, 4.0), timm_tv.MBConv(16, 16, 4.0, nn.GELU, 0.0), torch.randn(2, 16, 12, 10), 2)


def test_patch_merging_matches_timm():
    ref = timm_tv.PatchMerging(16, 24, nn.GELU)
    ours = PatchMerging(16, 24, stride=2)
    _randomise(ours, 3)
    ref.load_state_dict(_to_timm(ours.state_dict()))
    x = torch.randn(2, 16, 14, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.eval()(x).permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "window"), [((7, 7), 7), ((16, 12), 7), ((20, 20), 14)])
def test_block_matches_timm(size, window):
    """Whole windows, zero-padded windows, and MobileSAM's 14-wide windows."""
    ours = TinyViTBlock(40, 5, window, 4.0)
    ref = timm_tv.TinyVitBlock(40, 5, window_size=window, mlp_ratio=4.0)
    _same(ours, ref, torch.randn(2, *size, 40), 4)


def test_merge_stride_and_output_shape():
    """The last merge keeps the resolution (MobileSAM's change): 256 px in -> 16x16 embedding out."""
    model = TinyViT(TinyViTConfig(img_size=256)).eval()
    assert [layer.downsample.conv2.c.stride for layer in model.layers[:3]] == [(2, 2), (2, 2), (1, 1)]
    assert model.layers[3].downsample is None
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 256, 16, 16)


def test_real_checkpoint_loads_strictly(mobile_sam_path):
    """Every image_encoder key of the real file, and no other, with matching shapes."""
    state = take_prefix(read_state_dict(mobile_sam_path), "image_encoder")
    model = TinyViT()
    own = model.state_dict()
    assert set(state) == set(own)
    assert all(own[k].shape == v.shape for k, v in state.items())
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 6_065_532
