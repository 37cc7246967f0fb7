"""Any open_clip model names masks for mobilesam and sam-clip; the recognition mode is honoured or
refused per preset (ovsam_ros.preset_registry's rule).

The CLIP weights are random (open_clip's own init, written to a file as a user's checkpoint would
be): no other CLIP weights exist here. The MobileSAM weights and the photo are real.
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from test_presets import _bear_photo

from ovsam_ros import assets
from ovsam_ros.cli import main
from ovsam_ros.config import ConfigError, ModelConfig, VocabConfig
from ovsam_ros.model.checkpoints import CheckpointError
from ovsam_ros.model.feature_crop import FeatureCropError, FeatureCropRecognizer
from ovsam_ros.model.presets import PresetError, build_model
from ovsam_ros.pipeline import build_processor
from ovsam_ros.preset_registry import PRESET_NAMES, recognition_mode
from ovsam_ros.prompts import Prompt

NAMES = "bear\ndog, puppy\ntree\n"


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """Text embeddings of random towers go to a throw-away cache, not the user's."""
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))


def _random_clip_file(tmp_path, arch: str) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    clip = open_clip.create_model(arch, pretrained=None).eval()
    path = tmp_path / f"{arch}-random.pt"
    torch.save(clip.state_dict(), path)
    return clip, path


def test_recognition_mode_rule_per_preset():
    expected = {  # (preset, recognition, clip_model) -> mode, or the words of the refusal
        ("ovsam-lvis", "auto", ""): "ensemble", ("ovsam-coco", "head", ""): "head",
        ("ovsam-lvis", "clip", "RN50x16"): "clip",
        ("sam-clip", "auto", ""): "clip", ("sam-clip", "clip", "ViT-B-32"): "clip",
        ("mobilesam", "auto", "RN50"): "clip", ("mobilesam", "auto", ""): None,
        ("mobilesam", "head", ""): None,
        ("sam-clip", "head", ""): "no trained CLIP2SAM head",
        ("mobilesam", "ensemble", "RN50"): "frozen CLIP only",
        ("ovsam-coco", "auto", "ViT-B-32"): "trained on CLIP",
    }
    for (preset, mode, clip), want in expected.items():
        if want in (None, "clip", "head", "ensemble"):  # None: segments only, names nothing
            assert recognition_mode(preset, mode, clip) == want
            ModelConfig(preset=preset, recognition=mode, clip_model=clip)  # the config takes it too
        else:
            with pytest.raises(PresetError, match=want):
                recognition_mode(preset, mode, clip)
            with pytest.raises(ConfigError, match=f"model.recognition.*{want}"):
                ModelConfig(preset=preset, recognition=mode, clip_model=clip)
    assert set(ModelConfig.__dataclass_fields__["preset"].metadata["choices"]) == set(PRESET_NAMES)


def test_refusals_come_before_any_weights_load(tmp_path):
    with pytest.raises(PresetError, match="no trained CLIP2SAM head"):
        build_model("sam-clip", random_init=True, recognition="ensemble")
    with pytest.raises(FeatureCropError, match="unknown open_clip model 'ViT-Q-99'"):
        build_model("mobilesam", random_init=True, clip_model="ViT-Q-99")
    with pytest.raises(FeatureCropError, match="no dense feature map"):
        build_model("mobilesam", random_init=True, clip_model="convnext_tiny")
    with pytest.raises(PresetError, match="without a clip_model"):
        build_model("mobilesam", files={"sam": tmp_path / "sam.pt"}, clip_weights=tmp_path / "c.pt")


def test_an_architecture_without_a_file_is_one_line_naming_the_flag(mobile_sam_path, bear, tmp_path, capsys):
    """No registry file exists for ViT-S-32: the error says to give --clip-weights; no random init."""
    with pytest.raises(PresetError, match=r"no weights for CLIP model 'ViT-S-32': set model\.clip_weights"):
        build_model("mobilesam", weights_dir=mobile_sam_path.parent, offline=True, clip_model="ViT-S-32")
    image = str(bear.image_dir / "1.jpeg")
    common = ["segment", image, "--box", "10,10,200,200", "--json", str(tmp_path / "o.json"),
              "--weights-dir", str(mobile_sam_path.parent)]
    assert main([*common, "--model", "mobilesam", "--clip-model", "ViT-S-32"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--clip-weights" in err[0]
    assert main([*common, "--model", "sam-clip", "--recognition", "head"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained CLIP2SAM head" in err[0]
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["RN50", "ViT-S-32", "ViT-S-16"])
def test_mobilesam_names_a_real_photo_with_any_open_clip_model(arch, mobile_sam_path, bear, tmp_path,
                                                               own_cache):
    """Real MobileSAM + ``arch`` from a checkpoint file: the file's weights are the ones used (same
    text embeddings and dense map as the model that wrote it), the vocabulary is embedded by that
    tower, and a box on the bear is segmented and named from the vocabulary."""
    clip, path = _random_clip_file(tmp_path, arch)
    (tmp_path / "names.txt").write_text(NAMES)
    model = ModelConfig(preset="mobilesam", weights_dir=str(mobile_sam_path.parent), clip_model=arch,
                        clip_weights=str(path), device="cpu")
    processor = build_processor(model, VocabConfig(vocabulary=str(tmp_path / "names.txt"), top_k=2),
                                progress=False)
    dim = open_clip.get_model_config(arch)["embed_dim"]
    names = ["bear", "dog", "puppy", "tree"]
    text = processor.predictor.model.text_tower
    with torch.no_grad():
        torch.testing.assert_close(text(names), clip.encode_text(open_clip.get_tokenizer(arch)(names),
                                                                 normalize=True))
    embeddings = processor._embeddings
    assert embeddings.shape[0] == 3 and embeddings.shape[2] == dim
    torch.testing.assert_close(embeddings.norm(dim=-1)[[0, 2], 0], torch.ones(2))

    rgb, gt, box = _bear_photo(bear)
    features = processor.encode(rgb)
    [dense] = features.clip_levels
    assert dense.shape[:2] == (1, dim)
    loaded = processor.predictor.model.recognizer
    own = FeatureCropRecognizer(clip.visual, input_size=loaded.input_size)
    padded = torch.randn(1, 3, 256, 256)
    torch.testing.assert_close(loaded.encode_image(padded)[0], own.encode_image(padded)[0])
    [inst] = processor.answer(features, [Prompt.from_box(box, id="bear")])
    assert (inst.mask & gt).sum() / (inst.mask | gt).sum() > 0.85  # MobileSAM's real mask
    assert inst.label in {"bear", "dog", "tree"} and len(inst.top_k) == 2  # score_threshold 0: always named
    assert all(name in ("bear", "dog", "tree") for name, _ in inst.top_k)
    assert 0.0 < inst.top_k[0][1] <= 1.0 and inst.top_k[0][1] >= inst.top_k[1][1]
    # the mask-pooled CLIP feature the names came from rides on the instance (tracking's appearance)
    assert inst.embedding.shape == (dim,) and abs(float(np.linalg.norm(inst.embedding)) - 1) < 1e-5
    [again] = processor.answer(features, [Prompt.from_box(box, id="bear")])
    assert np.array_equal(again.embedding, inst.embedding)


@pytest.mark.slow
def test_openai_layout_file_must_hold_the_named_architecture(tmp_path):
    """A file named <clip_model>.pt is read in OpenAI's layout, which carries its own architecture:
    an RN50 file named ViT-S-32.pt is refused, not run with the wrong tokenizer."""
    _, path = _random_clip_file(tmp_path, "RN50")
    wrong = path.rename(tmp_path / "ViT-S-32.pt")
    with pytest.raises(CheckpointError, match="holds a ResNet CLIP of width 1024, not ViT-S-32"):
        build_model("sam-clip", files={"sam": tmp_path / "unused.pth", "clip": wrong}, clip_model="ViT-S-32")
