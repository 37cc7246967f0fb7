"""Presets: each builds the right network from the right files, never silently from random weights."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from ovsam_ros.model.checkpoints import read_state_dict
from ovsam_ros.model.presets import DEFAULT_PRESET, PRESETS, PresetError, build_model
from ovsam_ros.model.sam import SamSegmenter
from ovsam_ros.model.tiny_vit import TinyViT
from ovsam_ros.predictor import InputError, Predictor
from ovsam_ros.prompts import Prompt
from ovsam_ros.weights import WeightsError


def _bear_photo(bear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo 1.jpeg, its one ground-truth mask and box."""
    coco = json.loads(bear.annotations.read_text())
    image = next(im for im in coco["images"] if im["file_name"] == "1.jpeg")
    ann = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
    rle = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
    gt = mask_utils.decode(rle).max(axis=2).astype(bool)
    x, y, w, h = ann["bbox"]
    rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / "1.jpeg")), cv2.COLOR_BGR2RGB)
    return rgb, gt, np.array([x, y, x + w, y + h], dtype=float)


def test_registry():
    assert set(PRESETS) == {"ovsam-lvis", "ovsam-coco", "mobilesam", "sam-clip"}
    assert DEFAULT_PRESET == "ovsam-lvis"
    with pytest.raises(PresetError, match="unknown preset 'sam3'"):
        build_model("sam3")


def test_mobilesam_loads_the_real_checkpoint(mobile_sam_path):
    model = build_model("mobilesam", files={"sam": mobile_sam_path})
    assert isinstance(model, SamSegmenter) and isinstance(model.image_encoder, TinyViT)
    assert model.recognizer is None and model.text_tower is None
    assert model.resize_mode == "pil" and model.num_mask_tokens == 4
    assert not model.training
    state = read_state_dict(mobile_sam_path)
    own = model.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_mobilesam_offline_resolves_the_cached_real_file(mobile_sam_path, tmp_path):
    model = build_model("mobilesam", weights_dir=tmp_path, offline=True)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.state_dict()[key], read_state_dict(mobile_sam_path)[key])


def test_missing_weights_raise_instead_of_random_init(tmp_path):
    with pytest.raises(WeightsError) as info:
        build_model("ovsam-lvis", weights_dir=tmp_path, offline=True)
    assert "sam2clip_vith_rn50x16.pth" in str(info.value) and "ovsam-lvis" in str(info.value)
    with pytest.raises(WeightsError, match=r"sam_vit_b_01ec64\.pth"):
        build_model("sam-clip", weights_dir=tmp_path, offline=True, sam_variant="vit_b")


def test_clip_weights_file_names_masks_for_mobilesam(mobile_sam_path, tmp_path):
    """``clip_weights`` takes any open_clip checkpoint (here ViT-S-32 with random weights, written by
    open_clip itself) beside the real MobileSAM from the weights folder."""
    import open_clip

    clip = open_clip.create_model("ViT-S-32", pretrained=None)
    path = tmp_path / "vit_s_32.pt"
    torch.save(clip.state_dict(), path)
    model = build_model("mobilesam", weights_dir=mobile_sam_path.parent, offline=True, clip_model="ViT-S-32",
                        clip_weights=path)
    assert model.recognizer is not None and model.text_tower is not None
    key = "token_embedding.weight"
    assert torch.equal(model.text_tower.model.state_dict()[key], clip.state_dict()[key])
    with pytest.raises(PresetError, match="clip_weights is for mobilesam and sam-clip"):
        build_model("ovsam-lvis", weights_dir=tmp_path, clip_weights=path)


def test_option_checks(mobile_sam_path, tmp_path):
    with pytest.raises(PresetError, match="not both"):
        build_model("mobilesam", files={"sam": mobile_sam_path}, random_init=True)
    with pytest.raises(PresetError, match="dtype"):
        build_model("mobilesam", files={"sam": mobile_sam_path}, dtype=torch.float64)
    with pytest.raises(PresetError, match="RN50x16"):
        build_model("ovsam-coco", random_init=True, clip_model="ViT-B-16")
    with pytest.raises(PresetError, match="no weights for CLIP model 'ViT-B-16'"):
        build_model("sam-clip", files={"sam": tmp_path / "sam.pth"}, clip_model="ViT-B-16")
    with pytest.raises(PresetError, match="'sam' entry"):
        build_model("mobilesam", files={"clip": tmp_path / "x.pt"})


@pytest.mark.slow
def test_reduced_precision_weights_still_segment(mobile_sam_path, bear):
    """bf16 weights (half the memory) through a bf16 predictor: the real mask is still found."""
    model = build_model("mobilesam", files={"sam": mobile_sam_path}, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(InputError, match="bfloat16"):
        Predictor(model)
    predictor = Predictor(model, dtype="bf16")
    rgb, gt, box = _bear_photo(bear)
    predictor.set_image(rgb)
    mask = predictor.predict(box=box).masks[0, 0].numpy()
    assert (mask & gt).sum() / (mask | gt).sum() > 0.85


@pytest.mark.slow
def test_mobilesam_with_clip_names_masks(bear):
    """mobilesam + clip_model attaches the Feature-Crop recognizer; the predictor then names masks.
    (Random weights on purpose: no CLIP weights exist here, so only the plumbing is under test.)"""
    model = build_model("mobilesam", random_init=True, clip_model="RN50")
    assert model.recognizer is not None and model.recognizer.embed_dim == 1024
    predictor = Predictor(model)
    rgb, _, box = _bear_photo(bear)
    features = predictor.encode(rgb)
    assert len(features.clip_levels) == 1 and features.clip_levels[0].shape[:2] == (1, 1024)
    names = ["toy", "cup", "robot"]
    with pytest.raises(InputError, match="embeddings must be"):
        predictor.set_vocabulary(names, torch.ones(2, 1, 1024))
    text = model.text_tower  # the same CLIP model's text tower embeds the names
    assert text is not None and text.embed_dim == model.recognizer.embed_dim
    embeddings = text(names)
    assert embeddings.shape == (3, 1024)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    predictor.set_vocabulary(names, torch.stack([embeddings, F.normalize(torch.randn(3, 1024), dim=-1)], 1))
    assert predictor.class_names == names
    pred = predictor.predict_on(features, boxes=box[None])
    assert pred.probs.shape == (1, 3) and pred.background.shape == (1,)
    torch.testing.assert_close(pred.probs.sum(1) + pred.background, torch.ones(1))
    assert int(pred.class_index[0]) == int(pred.probs[0].argmax())
    torch.testing.assert_close(pred.score, pred.probs.max(1).values)
    [inst] = predictor.predict_prompts(features, [Prompt.from_box(box, id="b")])
    assert inst.label == names[inst.class_index] and inst.score == pytest.approx(float(pred.score[0]))


@pytest.mark.slow
def test_random_init_presets_build_their_parts():
    ovsam = build_model("ovsam-coco", random_init=True, recognition="head")
    assert type(ovsam).__name__ == "OVSAMSegmenter" and ovsam.recognizer is not None
    assert ovsam.text_tower is not None and ovsam.text_tower.embed_dim == 768
    sam_clip = build_model("sam-clip", random_init=True, sam_variant="vit_b", clip_model="RN50")
    assert isinstance(sam_clip, SamSegmenter) and sam_clip.recognizer.embed_dim == 1024
    assert sam_clip.text_tower is not None and sam_clip.text_tower.embed_dim == 1024
    assert type(sam_clip.image_encoder).__name__ == "ImageEncoderViT"
    assert sam_clip.image_encoder.blocks[0].attn.qkv.in_features == 768  # ViT-B
