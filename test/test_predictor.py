"""The predictor on the real MobileSAM weights and the real bear photos (COCO ground truth), plus
exact parity of pre/post-processing and decoding with segment_anything's own SamPredictor."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything.modeling import Sam
from segment_anything.predictor import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from ovsam_ros.model.base import ImageFeatures
from ovsam_ros.model.sam import build_mobile_sam
from ovsam_ros.predictor import InputError, Prediction, Predictor
from ovsam_ros.prompts import Prompt, PromptKind
from ovsam_ros.transforms import map_boxes, map_points, normalize_and_pad, resize_image, resized_size


@dataclass
class Frame:
    rgb: np.ndarray
    features: ImageFeatures
    gts: list[np.ndarray]
    boxes: np.ndarray

    def click(self, i: int) -> tuple[int, int]:
        """The interior point farthest from the border (the paper's point-prompt protocol)."""
        dist = cv2.distanceTransform(self.gts[i].astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(dist.argmax(), dist.shape)
        return int(x), int(y)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def model(mobile_sam_path):
    return build_mobile_sam(mobile_sam_path)


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model)


@pytest.fixture(scope="module")
def frames(predictor, bear) -> list[Frame]:
    """Each photo encoded once for the whole module (about 2-8 s each on 2 shared cores)."""
    coco = json.loads(bear.annotations.read_text())
    out = []
    for image in coco["images"]:
        bgr = cv2.imread(str(bear.image_dir / image["file_name"]))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        gts = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], image["height"], image["width"]))
               .max(axis=2).astype(bool) for a in anns]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=float)
        out.append(Frame(rgb, predictor.encode(rgb), gts, boxes))
    assert sum(len(f.gts) for f in out) == 6
    return out


# ---- pre/post-processing and decoding parity with segment_anything ------------------------------------


@pytest.mark.parametrize("shape", [(1008, 756), (300, 451), (37, 1500)])
def test_preprocessing_matches_sam(shape):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    transform = ResizeLongestSide(1024)
    ref_resized = transform.apply_image(rgb)
    size = resized_size(*shape, 1024)
    ours = resize_image(rgb, size, "pil")
    np.testing.assert_array_equal(ours, ref_resized)
    encoder = torch.nn.Identity()
    encoder.img_size = 1024  # all that Sam.preprocess reads from its encoder
    sam = Sam(image_encoder=encoder, prompt_encoder=None, mask_decoder=None)
    ref_input = sam.preprocess(torch.from_numpy(ref_resized).permute(2, 0, 1)[None].float())
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    torch.testing.assert_close(normalize_and_pad(torch.from_numpy(ours), 1024, mean, std), ref_input)
    pts = rng.uniform(0, min(shape), (5, 2))
    np.testing.assert_allclose(map_points(pts, shape, size), transform.apply_coords(pts, shape))
    boxes = rng.uniform(0, min(shape), (3, 4))
    np.testing.assert_allclose(map_boxes(boxes, shape, size), transform.apply_boxes(boxes, shape))


def test_cv2_resize_mode_matches_mmcv_rule():
    """OVSAM's flavour: int(x * s + 0.5) sizes (Chelsea 300x451 -> 681x1024), cv2 bilinear."""
    rgb = np.random.default_rng(1).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    assert resized_size(300, 451, 1024) == (681, 1024)
    ours = resize_image(rgb, (681, 1024), "cv2")
    np.testing.assert_array_equal(ours, cv2.resize(rgb, (1024, 681), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(rgb, (681, 1024), "bicubic")


@pytest.mark.slow
def test_decoding_matches_sam_predictor(model, predictor, frames):
    """Same prompts through segment_anything's SamPredictor (fed our cached features): same logits."""
    frame = frames[0]
    sam = Sam(image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder,
              mask_decoder=model.mask_decoder)
    ref = SamPredictor(sam)
    ref.features = frame.features.embedding
    ref.original_size, ref.input_size = frame.features.original_size, frame.features.input_size
    ref.is_image_set = True
    x, y = frame.click(0)
    points, labels, box = np.array([[x, y], [x + 40.0, y + 5.0]]), np.array([1, 0]), frame.boxes[0]
    with torch.inference_mode():
        ref_logits, ref_iou, ref_low = ref.predict(points, labels, box, multimask_output=True,
                                                   return_logits=True)
    ours = predictor.predict_on(frame.features, points[None], labels[None], box[None],
                                multimask_output=True, return_logits=True)
    np.testing.assert_allclose(ours.low_res_logits[0].numpy(), ref_low, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.iou_pred[0].numpy(), ref_iou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.logits[0].numpy(), ref_logits, rtol=1e-5, atol=1e-4)
    assert (ours.masks[0].numpy() == (ref_logits > 0)).mean() > 0.99999


# ---- real photos -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_box_prompts_reach_published_quality(predictor, frames):
    """One GT box per instance, all boxes of a photo in one decoder call: mean mask IoU >= 0.90."""
    ious = []
    for frame in frames:
        pred = predictor.predict_on(frame.features, boxes=frame.boxes)
        assert pred.masks.shape == (len(frame.boxes), 1, *frame.rgb.shape[:2])
        assert pred.low_res_logits.shape == (len(frame.boxes), 1, 256, 256)
        assert pred.iou_pred.shape == pred.stability_score.shape == (len(frame.boxes), 1)
        torch.testing.assert_close(pred.mask_score, pred.iou_pred)
        ious += [_iou(m, g) for m, g in zip(pred.masks[:, 0].numpy(), frame.gts, strict=True)]
    assert len(ious) == 6
    assert np.mean(ious) >= 0.90, ious
    assert min(ious) >= 0.85, ious


@pytest.mark.slow
def test_single_click_segments_inside_the_object(predictor, frames):
    """A lone click picks the best of three masks; the mask holds the click and lies on the object."""
    for frame in frames:
        for i, gt in enumerate(frame.gts):
            x, y = frame.click(i)
            pred = predictor.predict_on(frame.features, np.array([[[x, y]]]), np.array([[1]]))
            three = predictor.predict_on(frame.features, np.array([[[x, y]]]), np.array([[1]]),
                                         multimask_output=True)
            assert pred.masks.shape[1] == 1 and three.masks.shape[1] == 3
            best = int(three.iou_pred[0].argmax())
            assert torch.equal(pred.masks[0, 0], three.masks[0, best])
            mask = pred.masks[0, 0].numpy()
            assert mask[y, x]
            assert (mask & gt).sum() / mask.sum() >= 0.9
            assert 0.5 < float(pred.stability_score[0, 0]) <= 1.0


@pytest.mark.slow
def test_negative_point_shrinks_the_mask(predictor, frames):
    """One object per photo (each check costs two decoder runs)."""
    for frame in frames:
        x, y = frame.click(0)
        pos = predictor.predict_on(frame.features, np.array([[[x, y]]]), np.array([[1]]),
                                   multimask_output=False).masks[0, 0].numpy()
        inner = cv2.distanceTransform(pos.astype(np.uint8), cv2.DIST_L2, 5) > 5
        ys, xs = np.nonzero(inner)
        far = np.argmax((ys - y) ** 2 + (xs - x) ** 2)
        nx, ny = int(xs[far]), int(ys[far])
        both = predictor.predict_on(frame.features, np.array([[[x, y], [nx, ny]]]),
                                    np.array([[1, 0]])).masks[0, 0].numpy()
        assert both.sum() < pos.sum()
        assert both[y, x] and not both[ny, nx]


@pytest.mark.slow
def test_predict_api_and_feature_round_trip(model, predictor, frames):
    """set/get features reproduce the masks exactly without running the image encoder again."""
    frame = frames[1]
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        other = Predictor(model)
        other.set_image_features(frame.features)
        assert other.is_image_set
        a = other.predict(box=frame.boxes[0])
        predictor.set_image_features(frames[2].features)
        b = predictor.predict_on(frame.features, boxes=frame.boxes[:1])
        c = predictor.predict_batch(boxes=frame.boxes[:1])
        refined = other.predict(box=frame.boxes[0], mask_input=a.low_res_logits[0])
    finally:
        hook.remove()
    assert calls == []
    assert torch.equal(a.masks, b.masks)
    assert c.masks.shape[0] == 1 and not torch.equal(c.masks[0], a.masks[0])
    assert _iou(refined.masks[0, 0].numpy(), frame.gts[0]) > 0.85
    assert predictor.get_image_features() is frames[2].features
    host = a.cpu()
    assert isinstance(host, Prediction) and host.masks.device.type == "cpu"


@pytest.mark.slow
def test_predict_prompts_batches_and_records_skipped(predictor, frames):
    frame = frames[0]
    x, y = frame.click(1)
    prompts = [
        Prompt.from_box(frame.boxes[0], id="b0"),
        Prompt.point([(x, y)], id="p1"),
        Prompt.from_text("robot"),
        Prompt.point([(5000.0, 10.0)], id="far"),
        Prompt.from_box(frame.boxes[2], id="b2"),
        Prompt.from_box([50, 50, 20, 80], id="flat"),
    ]
    errors: list[str] = []
    instances = predictor.predict_prompts(frame.features, prompts, errors)
    assert [inst.prompt_id for inst in instances] == ["b0", "p1", "b2"]
    assert [inst.prompt_kind for inst in instances] == [PromptKind.BOX, PromptKind.POINT, PromptKind.BOX]
    assert len(errors) == 3
    assert "TEXT" in errors[0] and "far" in errors[1] and "5000" in errors[1] and "flat" in errors[2]
    for inst, gt in zip(instances, [frame.gts[0], frame.gts[1], frame.gts[2]], strict=True):
        assert inst.mask.shape == frame.rgb.shape[:2] and inst.mask.dtype == bool
        assert (inst.mask & gt).sum() / inst.mask.sum() > 0.9
        x0, y0, x1, y1 = inst.bbox
        assert inst.mask[int(y0):int(y1), int(x0):int(x1)].sum() == inst.mask.sum()
        assert 0.0 < inst.mask_score <= 1.1 and 0.0 < inst.stability_score <= 1.0
        assert inst.class_index == -1 and inst.label == ""
    assert _iou(instances[0].mask, frame.gts[0]) > 0.9


@pytest.mark.slow
def test_reduced_precision_matches_fp32(model, frames):
    """bf16 autocast decoding gives (nearly) the same masks as fp32."""
    frame = frames[0]
    full = Predictor(model).predict_on(frame.features, boxes=frame.boxes)
    half = Predictor(model, dtype="bf16").predict_on(frame.features, boxes=frame.boxes)
    assert half.masks.dtype == torch.bool and half.low_res_logits.dtype == torch.float32
    for a, b in zip(full.masks[:, 0].numpy(), half.masks[:, 0].numpy(), strict=True):
        assert _iou(a, b) > 0.95


# ---- input checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy"),
])
def test_bad_images_raise_input_error(predictor, image, message):
    with pytest.raises(InputError, match=message):
        predictor.encode(image)


def test_bad_prompts_raise_input_error(model):
    features = ImageFeatures(torch.zeros(1, 256, 64, 64), (), (768, 1024), (756, 1008))
    pred = Predictor(model)
    with pytest.raises(InputError, match="no image set"):
        pred.predict(box=[0, 0, 10, 10])
    pred.set_image_features(features)
    cases = [
        (dict(point_coords=[[np.nan, 3.0]], point_labels=[1]), "NaN"),
        (dict(point_coords=[[1.0, 3.0]], point_labels=[1, 1]), "does not match"),
        (dict(point_coords=[[1.0, 3.0]], point_labels=[2]), "padding"),
        (dict(point_coords=[[1.0, 3.0]]), "point_labels are required"),
        (dict(point_coords=[[1.0, 2.0, 3.0]], point_labels=[1]), "shape Nx2"),
        (dict(point_coords=[[10.0, 10.0], [1100.0, 20.0]], point_labels=[1, 0]), r"point 1 at \(1100, 20\)"),
        (dict(box=[100, 50, 100, 80]), "x1 > x0"),
        (dict(box=[2000, 10, 2100, 80]), "outside"),
        (dict(box=[0, 0, 10, np.inf]), "NaN or infinite"),
        (dict(box=["a", 0, 1, 2]), "numeric"),
        (dict(), "at least one"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            pred.predict(**kwargs)
    with pytest.raises(InputError, match="disagree"):
        pred.predict_batch(boxes=np.array([[0, 0, 5, 5.0]] * 2), point_coords=np.ones((3, 1, 2)),
                           point_labels=np.ones((3, 1)))
    with pytest.raises(InputError, match="image size"):
        pred.predict_on(replace(features, original_size=(0, 0)), boxes=[[0, 0, 5, 5]])
    with pytest.raises(InputError, match="no recognizer"):
        pred.set_vocabulary(["cup"], torch.ones(1, 1, 8))
    with pytest.raises(InputError, match="dtype"):
        Predictor(model, dtype=torch.int8)


def test_boxes_partly_outside_are_clipped(model):
    features = ImageFeatures(torch.randn(1, 256, 64, 64), (), (768, 1024), (756, 1008))
    pred = Predictor(model)
    inside = pred.predict_on(features, boxes=[[900, 700, 1008, 756]])
    over = pred.predict_on(features, boxes=[[900, 700, 1200, 900]])
    assert torch.equal(inside.low_res_logits, over.low_res_logits)


# ---- OVSAM through the predictor ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ovsam_ros.model.ovsam") is None,
                    reason="ovsam_ros.model.ovsam (build_ovsam) has not landed yet")
def test_random_init_ovsam_runs_through_the_predictor():
    """OVSAM at 1024 px with random weights: one mask per prompt, no IoU head, cv2 resizing."""
    from ovsam_ros.model.ovsam import build_ovsam

    model = build_ovsam("lvis", None, random_init=True)
    pred = Predictor(model)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    pred.set_image(rgb)
    features = pred.get_image_features()
    assert features.embedding.shape == (1, 256, 64, 64)
    assert features.input_size == (681, 1024) and features.original_size == (300, 451)
    out = pred.predict(point_coords=[[200, 100]], point_labels=[1])
    assert out.masks.shape == (1, 1, 300, 451) and out.iou_pred is None
    torch.testing.assert_close(out.mask_score, out.stability_score)
    boxes = pred.predict_batch(boxes=np.array([[10, 10, 200, 150], [100, 50, 400, 290.0]]))
    assert boxes.masks.shape == (2, 1, 300, 451)
