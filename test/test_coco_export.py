"""COCO export round trip through pycocotools, on the real bear photos' ground-truth masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ovsam_ros.coco_export import CocoExportError, encode_mask, to_coco, write_coco
from ovsam_ros.prompts import PromptKind
from ovsam_ros.results import Instance, mask_bbox
from ovsam_ros.vocab import Vocabulary

VOCAB = Vocabulary.from_names(["toy robot, xiaoduxiong", "mug", "screwdriver"], name="desk")


def instance(mask: np.ndarray, class_index: int = 0, prompt_id: str = "p") -> Instance:
    label = VOCAB.display_names[class_index] if class_index >= 0 else ""
    return Instance(mask=mask, bbox=mask_bbox(mask), mask_score=0.9, prompt_kind=PromptKind.BOX,
                    prompt_id=prompt_id, id=f"i-{prompt_id}", label=label, class_index=class_index,
                    score=0.75, top_k=[(label, 0.75), ("mug", 0.2)])


@pytest.fixture(scope="module")
def bear_results(bear):
    """The real ground-truth instances of the bear photos as results."""
    gt = COCO(str(bear.annotations))
    results = []
    for image in gt.dataset["images"]:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image["id"]))
        instances = [instance(gt.annToMask(a).astype(bool), prompt_id=str(a["id"])) for a in anns]
        results.append((image["id"], image["file_name"], image["height"], image["width"], instances))
    return results


def test_round_trip_through_pycocotools(bear_results, tmp_path):
    path = write_coco(tmp_path / "out" / "instances.json", bear_results, VOCAB)
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 3
    originals = [inst for *_, instances in bear_results for inst in instances]
    assert len(originals) == 6 and len(coco.getAnnIds()) == 6
    assert coco.loadCats(coco.getCatIds())[0] == {"id": 1, "name": "toy robot", "supercategory": ""}
    for ann_id, inst in zip(sorted(coco.getAnnIds()), originals, strict=True):
        ann = coco.loadAnns(ann_id)[0]
        assert isinstance(ann["segmentation"]["counts"], str)
        assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
        assert ann["area"] == inst.mask.sum()
        assert ann["bbox"] == pytest.approx(mask_utils.toBbox(ann["segmentation"]).tolist())
        assert ann["category_id"] == 1 and ann["score"] == 0.75 and ann["mask_score"] == pytest.approx(0.9)
        assert ann["top_k"] == [["toy robot", 0.75], ["mug", 0.2]]
        assert ann["prompt_id"] == inst.prompt_id and ann["instance_id"] == inst.id
    detections = coco.loadRes(coco.dataset["annotations"])  # also a valid detection-results list
    assert len(detections.getAnnIds()) == 6


def test_categories_and_unnamed():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:4] = True
    data = to_coco([(7, "a.png", 4, 5, [instance(mask, 2, "a"), instance(mask, -1, "b")])], VOCAB)
    assert [(c["id"], c["name"]) for c in data["categories"]][:2] == [(0, "unlabeled"), (1, "toy robot")]
    assert [a["category_id"] for a in data["annotations"]] == [3, 0]
    assert data["annotations"][0]["bbox"] == [2.0, 1.0, 2.0, 2.0]
    assert data["images"] == [{"id": 7, "file_name": "a.png", "height": 4, "width": 5}]
    assert "desk@" in data["info"]["description"]
    json.dumps(data)
    plain = to_coco([(1, "b.png", 4, 5, [instance(mask, 1)])], VOCAB)
    assert [c["name"] for c in plain["categories"]] == ["toy robot", "mug", "screwdriver"]


def test_encode_mask_decodes_back():
    mask = np.random.default_rng(0).random((37, 53)) > 0.5
    rle = encode_mask(mask)
    assert rle["size"] == [37, 53]
    assert np.array_equal(mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool), mask)


def test_bad_results():
    mask = np.ones((4, 5), dtype=bool)
    with pytest.raises(CocoExportError, match=r"does not match the image \(8, 5\)"):
        to_coco([(1, "a.png", 8, 5, [instance(mask)])], VOCAB)
    with pytest.raises(CocoExportError, match="appears twice"):
        to_coco([(1, "a.png", 4, 5, []), (1, "b.png", 4, 5, [])], VOCAB)
    bad = instance(mask)
    bad.class_index = 3
    with pytest.raises(CocoExportError, match="class_index 3"):
        to_coco([(1, "a.png", 4, 5, [bad])], VOCAB)
