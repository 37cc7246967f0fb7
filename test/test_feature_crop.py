"""Feature-Crop baseline recognizer on small random open_clip towers (ResNet and ViT)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from ovsam_ros.model.base import ImageFeatures, Segmenter
from ovsam_ros.model.checkpoints import CheckpointError
from ovsam_ros.model.classifier import EmbeddingError
from ovsam_ros.model.feature_crop import (
    FeatureCropError,
    FeatureCropRecognizer,
    build_feature_crop,
)

SIZE = 256  # padded square side of the "segmenter" input; low-res masks are SIZE/4


def _tiny_resnet() -> ModifiedResNet:
    torch.manual_seed(0)
    visual = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=64, width=8)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # open_clip zero-initialises bn3, which would make every block an identity
        for bn in (m for m in visual.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
    return visual


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=64, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2.0,
                             output_dim=16)


@pytest.fixture(params=["resnet", "vit"])
def recognizer(request) -> FeatureCropRecognizer:
    if request.param == "resnet":
        return FeatureCropRecognizer(_tiny_resnet(), input_size=128)
    return FeatureCropRecognizer(_tiny_vit())


def _sam_normalise(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(Segmenter.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(Segmenter.pixel_std).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _two_region_image() -> torch.Tensor:
    """Left half bright noisy texture, right half dark smooth gradient: two distinct regions."""
    gen = torch.Generator().manual_seed(2)
    rgb = torch.empty(1, 3, SIZE, SIZE)
    rgb[..., : SIZE // 2] = 150 + 100 * torch.rand(1, 3, SIZE, SIZE // 2, generator=gen)
    rgb[..., SIZE // 2:] = torch.linspace(0, 80, SIZE).view(1, 1, SIZE, 1)
    return _sam_normalise(rgb)


def _half_masks() -> torch.Tensor:
    """Low-res logits [2, 64, 64]: mask 0 = left half, mask 1 = right half."""
    logits = torch.full((2, SIZE // 4, SIZE // 4), -5.0)
    logits[0, :, : SIZE // 8] = 5.0
    logits[1, :, SIZE // 8:] = 5.0
    return logits


def test_dense_map_shape_and_pixel_renormalisation(recognizer):
    rgb = torch.randint(0, 256, (1, 3, SIZE, SIZE)).float()
    (dense,) = recognizer.encode_image(_sam_normalise(rgb))
    grid = 4  # ResNet: 128 px / 32; ViT: 64 px / 16
    assert dense.shape == (1, 16, grid, grid)
    clip = (rgb / 255 - torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        OPENAI_DATASET_STD).view(1, 3, 1, 1)
    clip = F.interpolate(clip, size=recognizer.input_size, mode="bilinear", align_corners=False,
                         antialias=True)
    visual = recognizer.visual
    with torch.no_grad():
        if isinstance(visual, ModifiedResNet):
            c5 = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(clip)))))
            pool = visual.attnpool
            expected = pool.c_proj(pool.v_proj(c5.permute(0, 2, 3, 1) + pool.positional_embedding[0]))
        else:
            _, tokens = visual(clip)
            expected = (tokens @ visual.proj).reshape(1, grid, grid, 16)
    torch.testing.assert_close(dense, expected.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_resnet_projection_is_the_attention_pool_on_one_token():
    """The docstring's claim: CLIP's attention pool over a one-token sequence is c_proj(v_proj(.))."""
    pool = _tiny_resnet().attnpool
    token = torch.randn(1, 3, 256) + pool.positional_embedding[0]  # (L=1, N=3, C)
    with torch.no_grad():
        attended, _ = F.multi_head_attention_forward(
            token, token, token, 256, pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False,
            use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
        )
        torch.testing.assert_close(attended[0], pool.c_proj(pool.v_proj(token[0])), rtol=1e-4, atol=1e-5)


def test_mask_is_named_by_the_class_built_from_its_region(recognizer):
    (dense,) = recognizer.encode_image(_two_region_image())
    features = ImageFeatures(embedding=torch.zeros(1, 256, 64, 64), clip_levels=(dense,))
    left = dense[0, :, :, : dense.shape[-1] // 2].mean(dim=(1, 2))
    right = dense[0, :, :, dense.shape[-1] // 2:].mean(dim=(1, 2))
    decoy = torch.randn(16)
    # class 0 "right" (one synonym a random decoy), class 1 "left"
    text = F.normalize(torch.stack([torch.stack([decoy, right]), torch.stack([left, left])]), dim=-1)
    recognizer.set_text_embeddings(text)
    assert recognizer.num_classes == 2
    probs = recognizer(features, _half_masks()).exp()  # log-probabilities
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert probs[:, :2].argmax(-1).tolist() == [1, 0]
    cosine = F.cosine_similarity(left, right, dim=0)
    expected_left = torch.softmax(torch.tensor([cosine * 100.00296, 100.00296, 0.0]), dim=0)
    torch.testing.assert_close(probs[0], expected_left, rtol=1e-3, atol=1e-4)
    recognition = recognizer.recognize(features, _half_masks())  # the embedding: each half's mean feature
    torch.testing.assert_close(recognition.embedding, F.normalize(torch.stack([left, right]), dim=-1))
    torch.testing.assert_close(recognition.log_scores.exp(), probs)


def test_empty_mask_goes_to_background(recognizer):
    (dense,) = recognizer.encode_image(_two_region_image())
    recognizer.set_text_embeddings(F.normalize(torch.randn(3, 1, 16), dim=-1))
    logits = torch.cat([_half_masks()[:1], torch.full((1, SIZE // 4, SIZE // 4), -3.0)])
    probs = recognizer(ImageFeatures(embedding=torch.zeros(1), clip_levels=(dense,)), logits).exp()
    assert probs[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert probs[0, :3].sum() > 0


def test_bad_inputs_raise_clear_errors(recognizer):
    (dense,) = recognizer.encode_image(_two_region_image())
    recognizer.set_text_embeddings(F.normalize(torch.randn(3, 1, 16), dim=-1))
    with pytest.raises(FeatureCropError, match="square"):
        recognizer.encode_image(torch.zeros(1, 3, 64, 32))
    with pytest.raises(FeatureCropError, match="clip_levels"):
        recognizer(ImageFeatures(embedding=torch.zeros(1)), _half_masks())
    with pytest.raises(FeatureCropError, match="low_res_logits"):
        recognizer(ImageFeatures(embedding=torch.zeros(1), clip_levels=(dense,)), _half_masks()[0])
    with pytest.raises(EmbeddingError):
        recognizer.set_text_embeddings(torch.randn(3, 8))


def test_frozen_and_in_eval_mode(recognizer):
    recognizer.train()
    assert not recognizer.training and not recognizer.visual.training
    assert not any(p.requires_grad for p in recognizer.parameters())


def test_builder_refuses_ambiguous_or_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        build_feature_crop("ViT-B-16")
    with pytest.raises(CheckpointError, match=r"clip\.bin"):
        build_feature_crop("ViT-B-16", tmp_path / "clip.bin")
    with pytest.raises(ValueError, match="divisible by 32"):
        FeatureCropRecognizer(_tiny_resnet(), input_size=100)
