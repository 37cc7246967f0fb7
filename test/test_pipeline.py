"""The one way from settings to answers, shared by the CLI, the bag replay, the evaluator and the node."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from ovsam_ros.config import ModelConfig, VocabConfig
from ovsam_ros.pipeline import (
    PipelineError,
    build_processor,
    checkpoint_classes,
    load_vocabulary,
    resolve_device,
)
from ovsam_ros.prompts import Prompt, PromptKind
from ovsam_ros.vocab.vocabulary import Vocabulary, VocabularyError


def test_resolve_device_and_precision():
    device, dtype = resolve_device("cpu", "auto")
    assert (device, dtype) == ("cpu", torch.float32)
    assert resolve_device("cuda:1", "auto") == ("cuda:1", torch.float16)
    assert resolve_device("cpu", "bf16") == ("cpu", torch.bfloat16)
    assert resolve_device("auto", "fp32")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PipelineError, match="precision"):
        resolve_device("cpu", "int8")


def test_vocabulary_by_name_file_or_object(tmp_path):
    assert len(load_vocabulary("coco")) == 80
    path = tmp_path / "mine.txt"
    path.write_text("mug, coffee cup\nscrewdriver\n")
    mine = load_vocabulary(str(path))
    assert mine.display_names == ["mug", "screwdriver"]
    assert load_vocabulary(mine) is mine
    with pytest.raises(VocabularyError):
        load_vocabulary(str(tmp_path / "missing.txt"))


def test_checkpoint_classes_of_presets():
    assert checkpoint_classes("ovsam-lvis") == "lvis"
    assert checkpoint_classes("ovsam-coco") == "coco"
    assert checkpoint_classes("mobilesam") is None and checkpoint_classes("sam-clip") is None


@pytest.fixture(scope="module")
def photo(bear):
    coco = json.loads(bear.annotations.read_text())
    image = next(im for im in coco["images"] if im["file_name"] == "3.jpeg")
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / "3.jpeg")), cv2.COLOR_BGR2RGB)
    gts = []
    for a in anns:
        rle = mask_utils.frPyObjects(a["segmentation"], image["height"], image["width"])
        x, y, w, h = a["bbox"]
        gts.append((np.array([x, y, x + w, y + h]), mask_utils.decode(rle).max(axis=2).astype(bool)))
    return rgb, gts


def test_mobilesam_processor_segments_real_photo(mobile_sam_path, photo):
    """Default weights dir = the package cache, where the real MobileSAM file already lies."""
    processor = build_processor(ModelConfig(preset="mobilesam", device="cpu"), VocabConfig(vocabulary="coco"),
                                progress=False)
    assert processor.vocabulary is None and not processor.can_name  # MobileSAM alone only segments
    rgb, gts = photo
    prompts = [Prompt.from_box(box, id=f"b{i}") for i, (box, _) in enumerate(gts)]
    instances = processor.segment(rgb, prompts)
    assert [i.prompt_id for i in instances] == [p.id for p in prompts]
    assert all(i.prompt_kind == PromptKind.BOX and i.label == "" for i in instances)
    ious = [(i.mask & gt).sum() / (i.mask | gt).sum() for i, (_, gt) in zip(instances, gts, strict=True)]
    assert np.mean(ious) >= 0.9
    with pytest.raises(PipelineError, match="only segments"):
        processor.use_vocabulary(Vocabulary.from_names(["toy"]))


def test_unreadable_vocabulary_fails_before_the_model_loads(tmp_path):
    with pytest.raises(VocabularyError):
        build_processor(ModelConfig(preset="ovsam-lvis", weights_dir=str(tmp_path)),
                        VocabConfig(vocabulary=str(tmp_path / "nope.txt")))


def test_naming_processor_embeds_and_caches_its_vocabulary(monkeypatch, tmp_path, photo):
    """mobilesam + a CLIP model (random weights on purpose: none exist here) names with a vocabulary
    file through the model's own text tower, caching the embeddings; box prompts get top-k names."""
    monkeypatch.setenv("OVSAM_ROS_CACHE", str(tmp_path))
    names = tmp_path / "names.txt"
    names.write_text("toy, toy robot\ncup\n")
    config = ModelConfig(preset="mobilesam", clip_model="RN50", random_init=True, device="cpu")
    processor = build_processor(config, VocabConfig(vocabulary=str(names), top_k=2), progress=False)
    assert processor.can_name and processor.vocabulary.display_names == ["toy", "cup"]
    assert len(list((tmp_path / "text_embeddings").glob("*.npy"))) == 1
    rgb, gts = photo
    [inst] = processor.segment(rgb, [Prompt.from_box(gts[0][0], id="b")])
    assert inst.label in ("toy", "cup") and [n for n, _ in inst.top_k] == sorted(
        ["toy", "cup"], key=lambda n: n != inst.label)
    assert inst.score == pytest.approx(inst.top_k[0][1]) and sum(p for _, p in inst.top_k) <= 1.0 + 1e-6
