"""SAM2CLIP adapter: official layout, segment_anything parity, doc re-computation, strict loading."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from official_weights import LAYOUT_PATH, random_official_state_dict
from segment_anything.modeling.image_encoder import Block
from torch import nn

from ovsam_ros.model.checkpoints import CheckpointError
from ovsam_ros.model.sam2clip import FeatureShapeError, Sam2Clip, load_sam2clip

SMALL = dict(in_channels=(6, 10, 12, 16), embed_dim=32, out_channels=8, depth=3, num_heads=4,
             window_size=3, global_blocks=(2,), grid=8)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (zero-initialised rel-pos tables would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)


def _levels(model: Sam2Clip, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for shape in model.expected_shapes(2)]


def test_state_dict_is_the_official_layout_without_prefix():
    layout = json.loads(LAYOUT_PATH.read_text())["sam2clip_vith_rn50x16.pth"]["groups"][0]["keys"]
    official = {e["key"].removeprefix("neck_student."): tuple(e["shape"]) for e in layout}
    with torch.device("meta"):
        model = Sam2Clip()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official


def test_real_size_levels_give_sam_embedding():
    with torch.device("meta"):
        model = Sam2Clip()
        levels = [torch.empty(1, 384, 256, 256), torch.empty(1, 768, 128, 128),
                  torch.empty(1, 1536, 64, 64), torch.empty(1, 3072, 32, 32)]
        assert model(levels).shape == (1, 256, 64, 64)


def _sam_vit_h_block(global_attn: bool) -> Block:
    """A block configured exactly as segment_anything's build_sam_vit_h configures its image encoder."""
    return Block(dim=1280, num_heads=16, mlp_ratio=4, qkv_bias=True,
                 norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, use_rel_pos=True,
                 rel_pos_zero_init=True, window_size=0 if global_attn else 14, input_size=(64, 64))


@pytest.mark.parametrize("index", [0, 4])
def test_blocks_match_sam_vit_h_blocks(index):
    with torch.device("meta"):
        model = Sam2Clip()
    ours = model.blocks[index].to_empty(device="cpu")
    _randomise(ours, seed=index)
    reference = _sam_vit_h_block(global_attn=index == 4)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 20, 20, 1280)
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def _doc_recomputation(model: Sam2Clip, levels: list[torch.Tensor]) -> torch.Tensor:
    """ovsam-forward-pass.md §3 written out with plain torch ops (blocks: segment_anything's own)."""
    sd = model.state_dict()
    kernels = (4, 2, 1)
    projected = [
        F.conv2d(levels[i], sd[f"patch_embeds.{i}.projection.weight"],
                 sd[f"patch_embeds.{i}.projection.bias"], stride=kernels[i])
        for i in range(3)
    ]
    projected.append(F.conv_transpose2d(levels[3], sd["patch_embeds.3.projection.weight"],
                                        sd["patch_embeds.3.projection.bias"], stride=2))
    x = sum(p.permute(0, 2, 3, 1) + sd["level_encoding.weight"][i] for i, p in enumerate(projected))
    x = x + sd["pos_embed"]
    for block in model.blocks:
        x = block(x)
    x = x.permute(0, 3, 1, 2)

    def layer_norm_2d(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        mean = t.mean(1, keepdim=True)
        var = ((t - mean) ** 2).mean(1, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-6) * w[:, None, None] + b[:, None, None]

    x = layer_norm_2d(F.conv2d(x, sd["neck.0.weight"]), sd["neck.1.weight"], sd["neck.1.bias"])
    return layer_norm_2d(F.conv2d(x, sd["neck.2.weight"], padding=1), sd["neck.3.weight"], sd["neck.3.bias"])


def test_adapter_matches_doc_recomputation():
    model = Sam2Clip(**SMALL).eval()
    _randomise(model)
    levels = _levels(model)
    out = model(levels)
    assert out.shape == (2, 8, 8, 8)
    torch.testing.assert_close(out, _doc_recomputation(model, levels), rtol=1e-5, atol=1e-5)


def test_windowed_and_global_blocks_are_configured():
    model = Sam2Clip(**SMALL)
    assert [b.window_size for b in model.blocks] == [3, 3, 0]
    assert model.blocks[0].attn.rel_pos_h.shape == (5, 8)
    assert model.blocks[2].attn.rel_pos_h.shape == (15, 8)


def test_bad_levels_raise_a_clear_error():
    model = Sam2Clip(**SMALL)
    levels = _levels(model)
    with pytest.raises(FeatureShapeError, match="4 CLIP levels"):
        model(levels[:3])
    levels[2] = torch.randn(2, 12, 9, 9)
    with pytest.raises(FeatureShapeError, match="shapes"):
        model(levels)


@pytest.fixture(scope="module")
def official_sam2clip(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """Random tensors in the official layout, saved under a top-level ``state_dict`` key."""
    state = random_official_state_dict("sam2clip", seed=3)
    path = tmp_path_factory.mktemp("sam2clip") / "sam2clip_vith_rn50x16.pth"
    torch.save({"state_dict": state, "meta": {"note": "mmengine-style wrapper"}}, str(path))
    return state, path


@pytest.mark.slow
def test_official_file_loads_every_tensor_into_place(official_sam2clip):
    state, path = official_sam2clip
    model = load_sam2clip(path)
    ours = model.state_dict()
    assert len(ours) == len(state) == 86
    for key, tensor in state.items():
        assert torch.equal(ours[key.removeprefix("neck_student.")], tensor), key
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_missing_key_is_named(official_sam2clip, tmp_path):
    state, _ = official_sam2clip
    path = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if k != "neck_student.blocks.4.attn.rel_pos_w"}, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\.4\.attn\.rel_pos_w"):
        load_sam2clip(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth"):
        load_sam2clip(tmp_path / "nowhere.pth")
