"""CLIP towers: stage taps equal open_clip's own forward, the OpenAI file loads faithfully and strictly."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from official_weights import random_official_state_dict
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from ovsam_ros.model.checkpoints import CheckpointError
from ovsam_ros.model.clip_backbone import (
    ClipImageTower,
    ClipInputError,
    build_clip_image_tower,
    build_clip_towers,
    load_openai_clip,
)


class _Stop(Exception):
    """Raised by a hook to end open_clip's forward after layer4 (its attention pool needs 384 px)."""


def _randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """open_clip zero-initialises every bn3 weight, which would make the residual branches vanish."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
            bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))


@pytest.fixture(scope="module")
def rn50x16() -> ClipImageTower:
    tower = build_clip_image_tower(random_init=True)
    _randomise_batchnorm(tower)
    return tower


def test_stage_outputs_match_open_clip_forward(rn50x16):
    visual = rn50x16.visual
    taps: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        taps.append(output.clone())

    def stop(_module, _inputs, output):
        taps.append(output.clone())
        raise _Stop

    hooks = [getattr(visual, f"layer{i}").register_forward_hook(keep) for i in (1, 2, 3)]
    hooks.append(visual.layer4.register_forward_hook(stop))
    x = torch.randn(1, 3, 64, 96)
    try:
        with pytest.raises(_Stop):
            visual(x)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        ours = rn50x16(x)
    expected = [(1, 384, 16, 24), (1, 768, 8, 12), (1, 1536, 4, 6), (1, 3072, 2, 3)]
    assert [tuple(t.shape) for t in ours] == expected
    for mine, reference in zip(ours, taps, strict=True):
        assert (mine - reference).abs().max() <= 1e-5
    assert rn50x16.channels == (384, 768, 1536, 3072)
    assert rn50x16.embed_dim == 768 and rn50x16.pool_size == 12


def _attention_pool_by_hand(pool: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """ovsam-forward-pass.md §2: mean token first, positional embedding, one MHA, token 0 out."""
    tokens = x.flatten(2).permute(0, 2, 1)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + pool.positional_embedding
    b, n, d = tokens.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n, heads, d // heads).transpose(1, 2)

    q, k, v = (split(proj(tokens)) for proj in (pool.q_proj, pool.k_proj, pool.v_proj))
    attn = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return pool.c_proj((attn @ v).transpose(1, 2).reshape(b, n, d))[:, 0]


def test_attention_pool_on_12x12_matches_the_documented_computation(rn50x16):
    x = torch.randn(2, 3072, 12, 12)
    with torch.no_grad():
        ours = rn50x16.attnpool(x)
        reference = _attention_pool_by_hand(rn50x16.attnpool, x, heads=48)
    assert ours.shape == (2, 768)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_tower_is_frozen_and_stays_in_eval_mode(rn50x16):
    rn50x16.train()
    assert not rn50x16.training and not rn50x16.visual.layer1[0].bn1.training
    assert not any(p.requires_grad for p in rn50x16.parameters())


@pytest.mark.parametrize("shape", [(1, 3, 100, 128), (3, 128, 128), (1, 1, 128, 128)])
def test_bad_images_raise_a_clear_error(rn50x16, shape):
    with pytest.raises(ClipInputError):
        rn50x16(torch.zeros(shape))


def _tiny_openai_clip() -> CLIP:
    """A small CLIP in the OpenAI layout; open_clip infers the architecture from the shapes."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=64),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
        quick_gelu=True,
    )
    _randomise_batchnorm(model)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_openai_file(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """Saved in fp32, so the effect of open_clip's fp16 rounding is visible after loading."""
    state = {k: v.clone() for k, v in _tiny_openai_clip().state_dict().items()}
    path = tmp_path_factory.mktemp("clip") / "tiny_openai.pt"
    torch.save(state, str(path))
    return state, path


def test_openai_file_is_fp16_rounded_like_open_clip(tiny_openai_file):
    state, path = tiny_openai_file
    ours = load_openai_clip(path).state_dict()
    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").state_dict()
    assert ours.keys() == reference.keys() == state.keys()
    for key in state:
        assert torch.equal(ours[key], reference[key]), key
    conv = "visual.layer1.0.conv1.weight"
    assert torch.equal(ours[conv], state[conv].half().float()) and not torch.equal(ours[conv], state[conv])
    unrounded = ("visual.layer1.0.bn1.running_var", "visual.attnpool.positional_embedding", "ln_final.weight")
    for kept in unrounded:
        assert torch.equal(ours[kept], state[kept]), kept
    assert all(t.dtype in (torch.float32, torch.int64) for t in ours.values())


def test_text_tower_embeds_like_open_clip(tiny_openai_file):
    _, path = tiny_openai_file
    image, text = build_clip_towers(path, model_name="RN50")
    assert image.channels == (32, 64, 128, 256) and image.embed_dim == text.embed_dim == 16
    reference = load_openai_clip(path)
    names = ["a photo of a bear", "grass"]
    tokens = open_clip.get_tokenizer("RN50")(names)
    torch.testing.assert_close(text(names), F.normalize(reference.encode_text(tokens), dim=-1))
    assert not any(p.requires_grad for p in text.parameters())


@pytest.mark.parametrize("dropped", ["visual.attnpool.c_proj.bias", "token_embedding.weight"])
def test_openai_file_missing_key_is_named(tiny_openai_file, tmp_path, dropped):
    state, _ = tiny_openai_file
    path = tmp_path / "broken.pt"
    torch.save({k: v for k, v in state.items() if k != dropped}, str(path))
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        load_openai_clip(path)


def test_missing_file_and_ambiguous_requests_are_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"RN50x16\.pt"):
        build_clip_image_tower(tmp_path / "RN50x16.pt")
    with pytest.raises(ValueError, match="random_init"):
        build_clip_image_tower()
    with pytest.raises(ValueError, match="not both"):
        build_clip_towers(tmp_path / "RN50x16.pt", random_init=True)


@pytest.mark.slow
def test_official_rn50x16_file_loads_every_key(tmp_path):
    """All 921 keys of the OpenAI RN50x16 layout (fp16 conv/linear weights as in the real file)."""
    state = random_official_state_dict("clip", seed=5)
    path = tmp_path / "RN50x16.pt"
    torch.save(state, str(path))
    image, text = build_clip_towers(path)
    loaded = {f"visual.{k}": v for k, v in image.visual.state_dict().items()}
    loaded.update({k: v for k, v in text.model.state_dict().items() if not k.startswith("visual.")})
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor.to(loaded[key].dtype)), key
    assert image.channels == (384, 768, 1536, 3072) and image.pool_size == 12
    assert text(["bear"]).shape == (1, 768)
