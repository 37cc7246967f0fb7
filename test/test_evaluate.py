"""The evaluator: the paper's protocol on the real bear photos with the real MobileSAM, plus the split,
click and error rules on small COCO files written here."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from ovsam_ros import evaluate as ev
from ovsam_ros.model.sam import build_mobile_sam
from ovsam_ros.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(mobile_sam_path):
    return Predictor(build_mobile_sam(mobile_sam_path))


@pytest.fixture(scope="module")
def box_report(predictor, bear):
    return ev.evaluate(predictor, bear.annotations, bear.image_dir, "box", progress=False)


# ---- the real model on the real photos --------------------------------------------------------------


@pytest.mark.slow
def test_box_prompts_reproduce_known_ious(box_report):
    """GT boxes: ~0.95 / 0.95 / 0.90 on the three toys of the first photo, mean >= 0.90 over all six."""
    summary = box_report.summary()
    assert summary["instances"] == 6 and summary["images"] == 3 and summary["skipped"] == {}
    first = [r.iou for r in box_report.instances if r.image_id == 1]
    np.testing.assert_allclose(first, [0.95, 0.95, 0.90], atol=0.02)
    assert summary["IoU"] >= 90.0
    assert summary["IoU"] == pytest.approx(100 * np.mean([r.iou for r in box_report.instances]))
    assert set(summary["iou_per_image"]) == {"1", "3", "4"}
    assert "Acc" not in summary  # MobileSAM alone does not name masks
    ann = next(r for r in box_report.instances if r.ann_id == 11)
    assert ann.prompt == [227.0, 259.0, 444.0, 424.0]  # COCO xywh -> xyxy, the GT box itself


@pytest.mark.slow
def test_point_prompts_lower_but_sane(predictor, bear, box_report):
    """One click per object (distance-transform maximum): worse than a box, still on the object."""
    report = ev.evaluate(predictor, bear.annotations, bear.image_dir, "point", progress=False)
    summary = report.summary()
    assert summary["instances"] == 6
    assert 15.0 < summary["IoU"] < box_report.summary()["IoU"]
    coco = ev.load_coco(bear.annotations)
    for r in report.instances:
        x, y = (int(v) for v in r.prompt)
        assert coco.annToMask(coco.loadAnns([r.ann_id])[0])[y, x] == 1  # the click lies inside its object


def test_split_reports_groups(box_report):
    """A split over the same answers: IoU_b / IoU_n are the means over their own instances."""
    split = ev.EvalReport("box", [replace(r, group=ev.BASE if r.image_id == 1 else ev.NOVEL)
                                  for r in box_report.instances])
    summary = split.summary()
    assert summary["instances_b"] == 3 and summary["instances_n"] == 3
    base = [r.iou for r in box_report.instances if r.image_id == 1]
    assert summary["IoU_b"] == pytest.approx(100 * np.mean(base))
    assert summary["IoU"] == pytest.approx(box_report.summary()["IoU"])


@pytest.mark.slow
def test_naming_accuracy(mobile_sam_path, bear):
    """With a recognizer and the dataset's names as vocabulary, every instance gets a category and the
    accuracy is the share of right ones (random CLIP weights here: the path, not the quality)."""
    import torch

    from ovsam_ros.model.feature_crop import build_feature_crop

    recognizer = build_feature_crop("RN50", random_init=True)[0]
    named = Predictor(build_mobile_sam(mobile_sam_path, recognizer=recognizer))
    coco = ev.load_coco(bear.annotations)
    cat_ids, vocab = ev.dataset_vocabulary(coco)
    assert cat_ids == [1, 2] and vocab.display_names == ["xiaoduxiong", "toy"]
    embeddings = torch.nn.functional.normalize(torch.randn(2, 1, recognizer.embed_dim), dim=-1)
    split = ev.make_split(coco, base_ids=[1])
    report = ev.evaluate(named, bear.annotations, bear.image_dir, "point", split, embeddings,
                         max_images=1, progress=False)
    assert len(report.instances) == 3
    assert all(r.predicted_category_id in (1, 2) for r in report.instances)
    summary = report.summary()
    assert summary["Acc"] == pytest.approx(100 * np.mean([r.correct for r in report.instances]))
    assert summary["Acc_b"] == summary["Acc"] and "Acc_n" not in summary
    assert named.class_names == ["xiaoduxiong", "toy"]


@pytest.mark.slow
def test_coco_protocol_excludes_classes_from_evaluation_and_from_prediction(mobile_sam_path, bear, tmp_path):
    """The real toys of photo 1 relabelled as COCO classes: "teddy bear" is one of the 15 classes
    OV-COCO 48/17 excludes, "dog" novel, "bear" base. The excluded class is given every other class's
    embedding as a synonym, so without the split it wins every instance (max over synonyms); with the
    dataset's split (auto) its instance is not evaluated and it is never predicted."""
    import torch

    from ovsam_ros.model.feature_crop import build_feature_crop

    data = json.loads(bear.annotations.read_text())
    data["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(("teddy bear", "dog", "bear"))]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    for ann, cat in zip(data["annotations"], (1, 2, 3), strict=True):
        ann["category_id"] = cat
    annotations = tmp_path / "coco-classes.json"
    annotations.write_text(json.dumps(data))
    coco = ev.load_coco(annotations)
    split = ev.make_split(coco, "auto")
    assert (split.name, split.base, split.novel) == ("coco", {3}, {2})
    recognizer = build_feature_crop("RN50", random_init=True)[0]
    named = Predictor(build_mobile_sam(mobile_sam_path, recognizer=recognizer))
    dog, bear_ = torch.nn.functional.normalize(torch.randn(2, recognizer.embed_dim), dim=-1)
    embeddings = torch.stack([torch.stack(pair) for pair in ((dog, bear_), (dog, dog), (bear_, bear_))])
    open_vocab = ev.evaluate(named, annotations, bear.image_dir, "box", None, embeddings, progress=False)
    assert [r.predicted_category_id for r in open_vocab.instances] == [1, 1, 1]
    report = ev.evaluate(named, annotations, bear.image_dir, "box", split, embeddings, progress=False)
    assert report.skipped == {"outside split": 1} and len(report.instances) == 2
    assert {r.predicted_category_id for r in report.instances} <= {2, 3}
    summary = report.summary()
    assert summary["instances_b"] == summary["instances_n"] == 1
    for group, suffix in ((ev.BASE, "_b"), (ev.NOVEL, "_n")):
        (member,) = [r for r in report.instances if r.group == group]
        assert summary[f"IoU{suffix}"] == pytest.approx(100 * member.iou)
        assert summary[f"Acc{suffix}"] == (100.0 if member.correct else 0.0)


@pytest.mark.slow
def test_main_writes_json(bear, tmp_path, capsys):
    """The command line end to end on one photo, with the mobilesam preset from the weight cache."""
    out = tmp_path / "eval.json"
    code = ev.main(["--coco", str(bear.annotations), "--images", str(bear.image_dir), "--model", "mobilesam",
                    "--device", "cpu", "--max-images", "1", "--base-ids", "1", "--json", str(out), "-q"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed == saved["summary"]
    assert printed["model"] == "mobilesam" and printed["instances"] == 3 and printed["IoU_b"] >= 90.0
    assert printed["instances_b"] == 3 and "IoU_n" not in printed  # category 2 has no instance here
    assert [r["ann_id"] for r in saved["instances"]] == [11, 12, 13]


# ---- protocol details on small files ----------------------------------------------------------------


def _write_coco(tmp_path: Path, categories: list[dict], annotations: list[dict]) -> Path:
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(ann_id: int, cat: int, box: list[float], crowd: int = 0) -> dict:
    x, y, w, h = box
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": 1, "category_id": cat, "bbox": box, "area": w * h, "iscrowd": crowd,
            "segmentation": [poly]}


COCO_CATS = [{"id": i + 1, "name": n} for i, n in enumerate(["person", "airplane", "bus", "giraffe", "cow"])]


def test_make_split_sides(tmp_path):
    coco = ev.load_coco(_write_coco(tmp_path, COCO_CATS, []))
    assert ev.make_split(coco) is None
    split = ev.make_split(coco, base_ids=[1, 3])
    assert split.base == {1, 3} and split.novel == {2, 4, 5}
    split = ev.make_split(coco, novel_ids=[2])
    assert split.base == {1, 3, 4, 5} and split.novel == {2}
    split = ev.make_split(coco, base_ids=[1], novel_ids=[2])
    assert split.group(1) == ev.BASE and split.group(2) == ev.NOVEL and split.group(3) is None
    names = tmp_path / "novel.txt"
    names.write_text("# novel\nAirplane\n  bus \n")
    assert ev.make_split(coco, novel_classes=names).novel == {2, 3}


def test_packaged_coco_split(tmp_path):
    """OV-COCO 48/17: person, giraffe base; airplane, bus, cow novel."""
    coco = ev.load_coco(_write_coco(tmp_path, COCO_CATS, []))
    split = ev.make_split(coco, split="coco")
    assert split.base == {1, 4} and split.novel == {2, 3, 5} and split.name == "coco"
    assert ev.make_split(coco, split="auto") == split  # every category is a COCO class
    assert ev.make_split(coco, split="none") is None
    assert ev.make_split(coco, split="auto", base_ids=[1]).name == "custom"  # ids given: no auto split
    lvis = ev.make_split(coco, split="lvis")
    assert lvis.base | lvis.novel == {1, 2, 3, 4, 5} and not lvis.excluded_mask([1, 2, 3, 4, 5]).any()


@pytest.mark.parametrize("kwargs, message", [
    ({"base_ids": [9]}, "not in the dataset"),
    ({"base_ids": [1], "novel_ids": [1]}, "both base and novel"),
    ({"split": "imagenet"}, "unknown split"),
])
def test_make_split_errors(tmp_path, kwargs, message):
    coco = ev.load_coco(_write_coco(tmp_path, COCO_CATS, []))
    with pytest.raises(ev.EvalError, match=message):
        ev.make_split(coco, **kwargs)


def test_make_split_unknown_name(tmp_path):
    coco = ev.load_coco(_write_coco(tmp_path, COCO_CATS, []))
    names = tmp_path / "base.txt"
    names.write_text("person\nunicorn\n")
    with pytest.raises(ev.EvalError, match="unicorn"):
        ev.make_split(coco, base_classes=names)


def test_center_click():
    mask = np.zeros((40, 60), bool)
    mask[10:31, 5:26] = True  # 21 x 21 square centred on (15, 20)
    assert ev.center_click(mask) == (15.0, 20.0)
    edge = np.zeros((40, 60), bool)
    edge[:, :9] = True  # touches the image border: the border counts as the object's boundary
    x, y = ev.center_click(edge)
    assert x == 4.0 and 4 <= y <= 35


def test_gt_instances_skips_with_reasons(tmp_path):
    anns = [_ann(1, 1, [5, 5, 20, 10]), _ann(2, 1, [30, 5, 10, 10], crowd=1), _ann(3, 2, [0, 0, 0, 5]),
            _ann(4, 5, [40, 20, 10, 10])]
    coco = ev.load_coco(_write_coco(tmp_path, COCO_CATS, anns))
    skipped: dict[str, int] = {}
    split = ev.make_split(coco, base_ids=[1, 2], novel_ids=[3])
    gts = ev.gt_instances(coco, 1, split, skipped)
    assert [g.ann_id for g in gts] == [1]
    np.testing.assert_array_equal(gts[0].box, [5, 5, 25, 15])
    assert gts[0].mask.shape == (40, 60) and gts[0].mask[10, 10]
    assert skipped == {"crowd": 1, "degenerate box": 1, "outside split": 1}


def test_bad_inputs(tmp_path, predictor):
    with pytest.raises(ev.EvalError, match="not found"):
        ev.load_coco(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ev.EvalError, match="not a COCO"):
        ev.load_coco(broken)
    path = _write_coco(tmp_path, COCO_CATS, [_ann(1, 1, [5, 5, 20, 10])])
    with pytest.raises(ev.EvalError, match="prompt must be"):
        ev.evaluate(predictor, path, tmp_path, prompt="text")
    with pytest.raises(ev.EvalError, match="cannot read image"):
        ev.evaluate(predictor, path, tmp_path, progress=False)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 60, 3), np.uint8))
    with pytest.raises(ev.EvalError, match="annotations say 60x40"):
        ev.evaluate(predictor, path, tmp_path, progress=False)
    empty = _write_coco(tmp_path, COCO_CATS, [_ann(1, 1, [5, 5, 20, 10], crowd=1)])
    with pytest.raises(ev.EvalError, match="no evaluable instance"):
        ev.evaluate(predictor, empty, tmp_path, progress=False)


def test_main_reports_bad_input_in_one_line(tmp_path, capsys):
    code = ev.main(["--coco", str(tmp_path / "nope.json"), "--images", str(tmp_path), "--model", "mobilesam"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ovsam-ros eval: error:") and "not found" in err and len(err.splitlines()) == 1
