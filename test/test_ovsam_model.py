"""The assembled OVSAM model: building from files in the official layout, and the forward pass.

Fast tests use a deliberately tiny CLIP ResNet and adapter (same code, small widths) to check the
plumbing at the real 1024 px input; the slow ones build the real-sized model from random weights
written in the official key layout, check every tensor landed, and run one full forward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet

from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.model.checkpoints import CheckpointError, read_state_dict
from ovsam_ros.model.classifier import EmbeddingError
from ovsam_ros.model.clip2sam import RoIInputError, mask_boxes
from ovsam_ros.model.clip_backbone import ClipImageTower, ClipInputError
from ovsam_ros.model.fusion import EXCLUDED_SCORE, fuse_log_scores, mask_is_valid
from ovsam_ros.model.ovsam import OVSAMSegmenter, build_ovsam, load_clip2sam
from ovsam_ros.model.ovsam_decoder import DecoderInputError
from ovsam_ros.model.sam2clip import Sam2Clip

sys.path.insert(0, str(Path(__file__).parent))
from official_weights import write_official_files

EMBED = 32  # the tiny tower's CLIP width


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def tiny() -> OVSAMSegmenter:
    torch.manual_seed(0)
    visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=EMBED, heads=2, image_size=384, width=8)
    tower = ClipImageTower(visual)
    adapter = Sam2Clip(in_channels=tower.channels, embed_dim=64, depth=1, num_heads=2, global_blocks=(0,))
    return OVSAMSegmenter(tower, adapter, roi_size=7).eval()


def _encode_random(model: OVSAMSegmenter, seed: int) -> ImageFeatures:
    """Features of a random 1024 px input, as a frame's cached features."""
    torch.manual_seed(seed)
    with torch.no_grad():
        embedding, levels = model.encode(torch.randn(1, 3, 1024, 1024))
    return ImageFeatures(embedding, levels, (1024, 1024), (1024, 1024))


@pytest.fixture(scope="module")
def tiny_features(tiny) -> ImageFeatures:
    return _encode_random(tiny, 1)


def test_encode_gives_the_sam_embedding_and_fpn_levels_plus_c5(tiny, tiny_features):
    assert tiny_features.embedding.shape == (1, 256, 64, 64)
    shapes = [tuple(t.shape) for t in tiny_features.clip_levels]
    assert shapes == [(1, 256, 256, 256), (1, 256, 128, 128), (1, 256, 64, 64), (1, 256, 32, 32),
                      (1, 256, 32, 32)]
    assert tiny.resize_mode == "cv2" and tiny.num_mask_tokens == 1
    with pytest.raises(ClipInputError, match="1024x1024"):
        tiny.encode(torch.zeros(1, 3, 512, 512))


def test_decode_points_with_negative_clicks_boxes_and_masks(tiny, tiny_features):
    coords = torch.tensor([[[500.0, 400.0], [700.0, 650.0]]] * 2)
    with torch.no_grad():
        pos = tiny.decode(tiny_features, coords, torch.tensor([[1, 1], [1, 0]]))
        box = tiny.decode(tiny_features, boxes=torch.tensor([[100.0, 150.0, 800.0, 900.0]]))
        both = tiny.decode(tiny_features, coords[:1], torch.tensor([[1, 1]]),
                           boxes=torch.tensor([[100.0, 150.0, 800.0, 900.0]]))
        masked = tiny.decode(tiny_features, boxes=torch.tensor([[100.0, 150.0, 800.0, 900.0]]),
                             mask_input=pos.low_res_logits[:1])
    assert pos.low_res_logits.shape == (2, 1, 256, 256)
    assert pos.iou_pred is None
    assert pos.label_embedding.shape == (2, EMBED)
    assert not torch.allclose(pos.low_res_logits[0], pos.low_res_logits[1])  # the negative click counts
    for out in (box, both, masked):
        assert out.low_res_logits.shape == (1, 1, 256, 256)
        assert torch.isfinite(out.low_res_logits).all()
    assert not torch.allclose(masked.low_res_logits, box.low_res_logits)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "no prompt"),
    ({"point_coords": torch.zeros(1, 2, 2)}, "point_labels"),
    ({"point_labels": torch.ones(1, 2)}, "without point_coords"),
    ({"boxes": torch.zeros(4)}, r"\[N, 4\]"),
    ({"boxes": torch.zeros(2, 4), "point_coords": torch.zeros(1, 1, 2), "point_labels": torch.ones(1, 1)},
     "disagree"),
    ({"mask_input": torch.zeros(1, 1, 64, 64)}, "256, 256"),
])
def test_bad_prompts_raise_clear_errors(tiny, tiny_features, kwargs, match):
    with pytest.raises(DecoderInputError, match=match):
        tiny.decode(tiny_features, **kwargs)


def _mask_logits() -> torch.Tensor:
    lr = torch.full((3, 256, 256), -4.0)
    lr[0, 40:120, 60:200] = 3.0  # a mid-size object
    lr[1, 10:14, 10:14] = 2.0  # a small one
    return lr  # row 2: an empty mask


def test_recognizer_modes_and_the_box_each_branch_uses(tiny, tiny_features):
    rec = tiny.recognizer
    emb, base = _unit(6, 2, EMBED), torch.tensor([True, True, True, False, False, False])
    rec.set_text_embeddings(emb, base)
    assert rec.num_classes == 6
    lr = _mask_logits()
    prompt_boxes = torch.tensor([[0.0, 0.0, 600.0, 500.0], [30.0, 30.0, 90.0, 90.0],
                                 [500.0, 500.0, 900.0, 900.0]])
    *p_levels, c5 = tiny_features.clip_levels
    mask_box = mask_boxes(lr)
    label = torch.randn(3, EMBED)
    with torch.no_grad():
        head_logits = rec.classifier(rec.roi_head(tuple(p_levels), mask_box))
        clip_prompt = rec.classifier(rec.clip_branch(c5, prompt_boxes))
        clip_mask = rec.classifier(rec.clip_branch(c5, mask_box))
        results = {}
        for mode in ("head", "clip", "ensemble"):
            rec.set_mode(mode)
            results[mode] = (rec(tiny_features, lr, prompt_boxes, label), rec(tiny_features, lr))
        rec.set_mode("ensemble")
    # a single branch returns its logits, as the released open_voc_inference does
    assert torch.allclose(results["head"][0], head_logits, atol=1e-6)
    assert torch.allclose(results["clip"][0], clip_prompt, atol=1e-6)  # prompt box
    assert torch.allclose(results["clip"][1], clip_mask, atol=1e-6)  # the mask's box
    valid = mask_is_valid(lr, (32, 32))
    assert valid.tolist() == [True, True, False]
    ens = results["ensemble"][0]
    assert torch.allclose(ens, fuse_log_scores(head_logits, clip_prompt, valid, base), atol=1e-6)
    assert ens.shape == (3, 7)
    assert torch.allclose(ens[2], head_logits[2].log_softmax(-1), atol=1e-6)  # empty mask: the head alone


def test_recognizer_subset_label_term_and_errors(tiny, tiny_features):
    rec = tiny.recognizer
    base = torch.tensor([True, False, True, False])
    rec.set_text_embeddings(_unit(4, 3, EMBED, seed=5), base)
    lr = _mask_logits()
    with torch.no_grad():
        full_head = rec.classifier(rec.roi_head(tuple(tiny_features.clip_levels[:4]), mask_boxes(lr)))
        idx = rec.classifier.class_indices(torch.tensor([3, 0]))
        sub = rec(tiny_features, lr, classes=idx)
        rec.set_mode("head")
        poisoned = rec(tiny_features, lr, label_embedding=torch.full((3, EMBED), float("inf")))
        rec.set_mode("ensemble")
        clip_sub = rec.classifier(rec.clip_branch(tiny_features.clip_levels[4], mask_boxes(lr)), idx)
    want = fuse_log_scores(torch.cat([full_head[:, [3, 0]], full_head[:, -1:]], 1), clip_sub,
                           mask_is_valid(lr, (32, 32)), base[[3, 0]])
    assert sub.shape == (3, 3)
    assert torch.allclose(sub, want, atol=1e-6)
    assert poisoned[:, :-1].isnan().all()  # 0 * inf: the released label term propagates a broken label MLP
    with pytest.raises(RoIInputError, match="P2, P3"):
        rec(ImageFeatures(tiny_features.embedding, tiny_features.clip_levels[:4]), lr)
    with pytest.raises(RoIInputError, match="prompt boxes"):
        rec(tiny_features, lr, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="base_mask"):
        rec.set_text_embeddings(_unit(4, 3, EMBED), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="recognition mode"):
        rec.set_mode("both")
    with pytest.raises(EmbeddingError):
        rec.set_text_embeddings(torch.randn(4, 3, EMBED))


def test_builder_argument_and_file_errors(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        build_ovsam("objects365", random_init=True)
    with pytest.raises(ValueError, match="recognition mode"):
        build_ovsam("lvis", random_init=True, recognition="both")
    with pytest.raises(ValueError, match="not both"):
        build_ovsam("lvis", {"sam": tmp_path / "x"}, random_init=True)
    with pytest.raises(CheckpointError, match="random_init"):
        build_ovsam("lvis")
    files = {name: tmp_path / f"{name}.pth" for name in ("sam2clip", "clip2sam", "clip")}
    with pytest.raises(CheckpointError, match="'sam' weight file"):
        build_ovsam("coco", files)
    files["sam"] = tmp_path / "sam_vit_h_4b8939.pth"
    for name in ("sam2clip", "clip2sam", "clip"):
        files[name].write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"sam_vit_h_4b8939\.pth"):
        build_ovsam("coco", files)


# --- the real-sized model from files in the official layout (slow: RN50x16 + 5 ViT-H blocks) ---


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> dict[str, Path]:
    return write_official_files(tmp_path_factory.mktemp("ovsam_official"))


@pytest.fixture(scope="module")
def model(official) -> OVSAMSegmenter:
    return build_ovsam("lvis", official)


# model state-dict prefix -> file and key prefix it must come from
_SOURCES = [
    ("clip_tower.visual.", "clip", "visual."),
    ("clip_tower.attnpool.", "clip", "visual.attnpool."),
    ("recognizer.clip_branch.attnpool.", "clip", "visual.attnpool."),
    ("sam2clip.", "sam2clip", "neck_student."),
    ("prompt_encoder.", "sam", "prompt_encoder."),
    ("mask_decoder.", "clip2sam", "mask_decoder."),
    ("recognizer.fpn_neck.", "clip2sam", "fpn_neck."),
    ("recognizer.roi_head.", "clip2sam", "mask_decoder."),
    ("text_tower.model.", "clip", ""),
]


@pytest.mark.slow
def test_every_tensor_landed(model, official):
    files = {name: read_state_dict(path) for name, path in official.items()}
    used: dict[str, set[str]] = {name: set() for name in files}
    for key, tensor in model.state_dict().items():
        prefix, name, file_prefix = next(s for s in _SOURCES if key.startswith(s[0]))
        file_key = file_prefix + key[len(prefix):]
        assert file_key in files[name], f"{key} has no source {file_key} in the {name} file"
        # The OpenAI CLIP loader rounds to fp16 and back, so fp16 file tensors compare exactly.
        assert torch.equal(tensor, files[name][file_key].to(tensor.dtype)), key
        used[name].add(file_key)
    assert model.recognizer.roi_head.roi_size == 7
    assert used["clip2sam"] == set(files["clip2sam"])
    assert used["sam2clip"] == set(files["sam2clip"])
    assert used["sam"] == {k for k in files["sam"] if k.startswith("prompt_encoder.")}
    assert used["clip"] == set(files["clip"])  # image tower, attention pool and text tower


@pytest.mark.slow
def test_a_missing_key_in_the_clip2sam_file_is_named(model, tmp_path):
    bad = write_official_files(tmp_path, which=("clip2sam",), omit=("fpn_neck.fpn_convs.3.conv.bias",))
    with pytest.raises(CheckpointError, match=r"fpn_convs\.3\.conv\.bias"):
        load_clip2sam(model, bad["clip2sam"])


@pytest.fixture(scope="module")
def encoded(model) -> ImageFeatures:
    return _encode_random(model, 2)


@pytest.mark.slow
def test_full_forward_at_1024(model, encoded):
    with torch.no_grad():
        clicks = torch.tensor([[[500.0, 400.0], [700.0, 650.0]]])
        point = model.decode(encoded, clicks, torch.tensor([[1, 0]]))
        box_prompt = torch.tensor([[100.0, 150.0, 800.0, 900.0]])
        box = model.decode(encoded, boxes=box_prompt)
        for out in (point, box):
            assert out.low_res_logits.shape == (1, 1, 256, 256)
            assert out.label_embedding.shape == (1, 768)
            assert torch.isfinite(out.low_res_logits).all()
        rec = model.recognizer
        base = torch.tensor([True, True, False, True, False])
        excluded = torch.tensor([False, False, False, False, True])
        low_res = torch.cat([point.low_res_logits[:, 0], box.low_res_logits[:, 0]])
        label = torch.cat([point.label_embedding, box.label_embedding])
        boxes = torch.cat([mask_boxes(point.low_res_logits[:, 0]), box_prompt])
        scores = {}
        for split in (None, excluded):
            rec.set_text_embeddings(_unit(5, 3, 768, seed=7), base, split)
            for mode in ("head", "clip", "ensemble"):
                rec.set_mode(mode)
                scores[mode, split is not None] = rec(encoded, low_res, boxes, label)
        rec.set_mode("ensemble")
    for (_, with_split), p in scores.items():
        assert p.shape == (2, 6)
        assert torch.isfinite(p).all()
        assert (p[:, 4] == EXCLUDED_SCORE).all() == with_split
    # the released fusion written out (open_voc_inference) on the two branches' own logits
    q, c = scores["head", False].softmax(-1), scores["clip", False].softmax(-1)
    valid = mask_is_valid(low_res, (32, 32)).float()[:, None]
    seen = torch.cat([base.float(), torch.ones(1)])
    alpha, beta = 0.1 * valid, 0.9 * valid
    want = (q ** (1 - alpha) * c ** alpha).log() * seen + (q ** (1 - beta) * c ** beta).log() * (1 - seen)
    want[:, 4] = -1000.0
    assert (scores["ensemble", True] - want).abs().max().item() <= 1e-5
