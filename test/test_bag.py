"""Bag replay with the real MobileSAM on the real bear photos: bags written here with rosbags (sqlite3 and
MCAP), replayed through the streaming engine, and the output bag read back."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from ovsam_ros.bag import (
    BagError,
    BagTopics,
    ReplayOptions,
    bag_storage,
    read_results,
    replay_bag,
    resolve_topics,
)
from ovsam_ros.cli import main
from ovsam_ros.pipeline import PromptProcessor
from ovsam_ros.prompts import PromptKind
from ovsam_ros.ros.factory import RosbagsFactory
from ovsam_ros.ros.image_conversions import image_to_numpy, numpy_to_image
from ovsam_ros.ros.interfaces import typestore
from ovsam_ros.ros.message_builders import make_header, stamp_seconds

IMAGE, POINTS, BOXES = "/camera/image", "/prompts/points", "/prompts/boxes"
T0 = 1_700_000_000  # seconds: a realistic epoch, so stamps are exact to the nanosecond in the bag


@pytest.fixture(scope="module")
def gt(bear):
    """file name -> (RGB image, [(xyxy box, mask)] of its ground-truth toys)."""
    data = json.loads(bear.annotations.read_text())
    out = {}
    for image in data["images"]:
        rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / image["file_name"])), cv2.COLOR_BGR2RGB)
        objects = []
        for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            rles = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            mask = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
            x, y, w, h = ann["bbox"]
            objects.append((np.array([x, y, x + w, y + h], dtype=float), mask))
        out[image["file_name"]] = (rgb, objects)
    return out


@pytest.fixture(scope="module")
def processor(mobile_sam_path):
    from ovsam_ros.model.presets import build_model
    from ovsam_ros.predictor import Predictor

    return PromptProcessor(Predictor(build_model("mobilesam", files={"sam": mobile_sam_path})))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


class BagBuilder:
    """Messages at chosen stamps; each is written at its stamp + a small transport delay (bag time)."""

    def __init__(self) -> None:
        self.f = RosbagsFactory(typestore())
        self.items: list[tuple[str, str, int, object]] = []

    def header(self, stamp: float, frame_id: str = "camera") -> object:
        return make_header(self.f, stamp, frame_id)

    def add(self, topic: str, msgtype: str, stamp: float, msg: object, delay: float = 0.01) -> None:
        self.items.append((topic, msgtype, round((stamp + delay) * 1e9), msg))

    def image(self, rgb: np.ndarray, stamp: float, topic: str = IMAGE) -> object:
        msg = numpy_to_image(self.f, rgb, "rgb8", self.header(stamp))
        self.add(topic, "sensor_msgs/msg/Image", stamp, msg)
        return msg

    def points(self, stamp: float, xy: list[tuple[float, float]], id: str, delay: float = 0.02) -> None:
        points = [self.f.make("geometry_msgs/msg/Point", x=float(x), y=float(y), z=0.0) for x, y in xy]
        msg = self.f.make("ovsam_ros/msg/PointPrompt", header=self.header(stamp), id=id, points=points,
                          labels=np.ones(len(xy), np.int8))
        self.add(POINTS, "ovsam_ros/msg/PointPrompt", stamp, msg, delay)

    def boxes(self, stamp: float, boxes: list[np.ndarray], delay: float = 0.03) -> None:
        dets = []
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            center = self.f.make("vision_msgs/msg/Pose2D", position=self.f.make(
                "vision_msgs/msg/Point2D", x=(x0 + x1) / 2, y=(y0 + y1) / 2))
            bbox = self.f.make("vision_msgs/msg/BoundingBox2D", center=center, size_x=x1 - x0, size_y=y1 - y0)
            dets.append(self.f.make("vision_msgs/msg/Detection2D", header=self.header(stamp), bbox=bbox,
                                    id=f"det_{i}"))
        msg = self.f.make("vision_msgs/msg/Detection2DArray", header=self.header(stamp), detections=dets)
        self.add(BOXES, "vision_msgs/msg/Detection2DArray", stamp, msg, delay)

    def write(self, path: Path, storage: str = "sqlite3") -> Path:
        plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
        store = self.f.store
        with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
            conns = {}
            for topic, msgtype, ns, msg in sorted(self.items, key=lambda item: item[2]):
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
                writer.write(conns[topic], ns, self.f.serialize(msg))
        return path


def _read_all(path: Path) -> dict[str, list[tuple[int, object]]]:
    store = typestore()
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for conn, ns, data in reader.messages():
            out.setdefault(conn.topic, []).append((ns, store.deserialize_cdr(bytes(data), conn.msgtype)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_replay_answers_prompts_on_their_frames(tmp_path, gt, processor, storage):
    """4 frames, a click on frame 0 and detector boxes on frame 2: the click answered on frame 0, the
    boxes on frame 2 and, standing as on the node, on frame 3; stamps of the source frames, masks
    that match the ground truth, every input message copied."""
    b = BagBuilder()
    names = ["3.jpeg", "1.jpeg", "2.jpeg", "1.jpeg"]
    stamps = [T0 + 0.1 * k for k in range(4)]
    sent = [b.image(gt[n][0], s) for n, s in zip(names, stamps, strict=True)]
    click_mask = gt["3.jpeg"][1][0][1]
    inside = cv2.distanceTransform(click_mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(inside.argmax(), inside.shape)  # the point deepest inside the toy
    b.points(stamps[0], [(float(x), float(y))], id="click")
    b.boxes(stamps[2], [box for box, _ in gt["2.jpeg"][1]], delay=0.15)  # arrives after the next frame
    src = b.write(tmp_path / f"in_{storage}", storage)
    assert bag_storage(src) == storage

    out = tmp_path / "out"
    stats = replay_bag(src, out, processor, ReplayOptions(progress=False))

    assert bag_storage(out) == storage
    assert stats["frames"] == 4 and stats["bad_frames"] == 0
    assert stats["encodes"] == 3  # frame 1 was never prompted
    assert stats["prompts"]["point_prompts"] == 1 and stats["prompts"]["box_prompts"] == 2
    assert stats["topics"] == {"image": IMAGE, "points": POINTS, "boxes": BOXES}
    assert stats["warnings"] == 0
    written = _read_all(out)
    original = _read_all(src)
    for topic, messages in original.items():  # all input messages, unchanged
        assert [ns for ns, _ in written[topic]] == [ns for ns, _ in messages]
    arrays = written["/ovsam/instances"]
    assert [stamp_seconds(m.header.stamp) for _, m in arrays] == [stamps[0], stamps[2], stamps[3]]
    prompted = [0, 2, 3]  # at the source frames' bag times:
    assert [ns for ns, _ in arrays] == [original[IMAGE][k][0] for k in prompted]
    for (_, arr), src_msg in zip(arrays, [sent[k] for k in prompted], strict=True):
        assert arr.header.stamp.sec == src_msg.header.stamp.sec
        assert arr.header.stamp.nanosec == src_msg.header.stamp.nanosec
        assert arr.header.frame_id == "camera"
    results = [r for _, r in read_results(out)]
    (click,) = results[0].instances
    assert click.prompt_kind == PromptKind.POINT and click.prompt_id == "click"
    assert (click.mask & click_mask).sum() > 0.5 * click.mask.sum()  # the mask lies on the clicked toy
    boxes = results[1].instances
    assert [i.prompt_id for i in boxes] == ["det_0", "det_1"]
    for inst, (_, mask) in zip(boxes, gt["2.jpeg"][1], strict=True):
        assert _iou(inst.mask, mask) >= 0.9
    assert [i.prompt_id for i in results[2].instances] == ["det_0", "det_1"]  # standing on frame 3
    assert [len(d.detections) for _, d in written["/ovsam/detections"]] == [1, 2, 2]
    overlays = written["/ovsam/overlay"]
    assert len(overlays) == 3
    drawn = image_to_numpy(overlays[1][1])
    assert drawn.shape == gt["2.jpeg"][0].shape and not np.array_equal(drawn, gt["2.jpeg"][0])


def _camera_info(b: BagBuilder, stamp: float, width: int, height: int, f: float = 800.0) -> object:
    cx, cy = width / 2, height / 2
    return b.f.make("sensor_msgs/msg/CameraInfo", header=b.header(stamp), width=width, height=height,
                    distortion_model="plumb_bob", d=np.zeros(5), k=[f, 0, cx, 0, f, cy, 0, 0, 1],
                    r=[1, 0, 0, 0, 1, 0, 0, 0, 1], p=[f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0])


@pytest.mark.slow
def test_corrupt_frame_and_bad_clicks_are_skipped(tmp_path, gt, processor):
    """A frame with the wrong data size, a PointPrompt off the image and a clicked point in a frame
    other than the camera's are reported and skipped; the box and the good click are answered."""
    b = BagBuilder()
    rgb = gt["2.jpeg"][0]
    h, w = rgb.shape[:2]
    b.add("/camera/camera_info", "sensor_msgs/msg/CameraInfo", T0, _camera_info(b, T0, w, h), delay=0.0)
    bad = b.image(rgb, T0 + 0.1)
    bad.data = bad.data[:-7]  # wrong data size
    b.image(rgb, T0 + 0.2)
    b.points(T0 + 0.2, [(5000.0, 10.0)], id="off_image")
    box, mask = gt["2.jpeg"][1][0]
    b.boxes(T0 + 0.2, [box])
    inside = cv2.distanceTransform(gt["2.jpeg"][1][1][1].astype(np.uint8), cv2.DIST_L2, 5)
    v, u = np.unravel_index(inside.argmax(), inside.shape)
    z = 2.0  # a point 2 m in front of the camera that projects onto the second toy
    for frame_id, delay in (("camera", 0.04), ("map", 0.05)):
        point = b.f.make("geometry_msgs/msg/Point", x=(u - w / 2) * z / 800.0, y=(v - h / 2) * z / 800.0, z=z)
        click = b.f.make("geometry_msgs/msg/PointStamped", header=b.header(T0 + 0.2, frame_id), point=point)
        b.add("/clicked_point", "geometry_msgs/msg/PointStamped", T0 + 0.2, click, delay)
    options = ReplayOptions(progress=False, storage="sqlite3",
                            topics=BagTopics(clicked_point="/clicked_point"))
    stats = replay_bag(b.write(tmp_path / "in.mcap.d", "mcap"), tmp_path / "out", processor, options)

    assert bag_storage(tmp_path / "out") == "sqlite3"
    assert stats["frames"] == 2 and stats["bad_frames"] == 1
    assert stats["prompts"]["skipped"] == 2  # the off-image PointPrompt and the click in "map"
    assert stats["prompts"]["box_prompts"] == 1 and stats["prompts"]["clicks"] == 1
    assert stats["encodes"] == 1 and stats["instances"] == 2
    warnings = stats["first_warnings"]
    assert any("data" in m and "bytes" in m for m in warnings)
    assert any("outside" in m for m in warnings)
    assert any("'map'" in m and "camera frame" in m for m in warnings)
    instances = [i for _, r in read_results(tmp_path / "out") for i in r.instances]
    by_id = {i.prompt_id: i for i in instances}
    assert _iou(by_id["det_0"].mask, mask) >= 0.9
    assert by_id["click_1"].mask[v, u] and _iou(by_id["click_1"].mask, gt["2.jpeg"][1][1][1]) >= 0.5


@pytest.mark.slow
def test_processor_answers_every_prompt_kind_in_order(mobile_sam_path, gt):
    """Box, text and everything prompts in one batch, through a real MobileSAM with a (random) CLIP
    recognizer. The query is the vocabulary's only class, so every everything-mode candidate answers it:
    text and everything must share the same candidate masks."""
    import torch

    from ovsam_ros.config import EverythingConfig, VocabConfig
    from ovsam_ros.model.feature_crop import build_feature_crop
    from ovsam_ros.model.sam import build_mobile_sam
    from ovsam_ros.predictor import Predictor
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.vocab.vocabulary import Vocabulary

    recognizer = build_feature_crop("RN50", random_init=True)[0]
    predictor = Predictor(build_mobile_sam(mobile_sam_path, recognizer=recognizer))
    processor = PromptProcessor(predictor, EverythingConfig(points_per_side=4),
                                VocabConfig(text_threshold=0.0))
    embeddings = torch.nn.functional.normalize(torch.randn(1, 1, recognizer.embed_dim), dim=-1)
    processor.set_vocabulary(Vocabulary.from_names(["toy"]), embeddings,
                             embed_phrases=lambda v: pytest.fail("'toy' is a class: nothing to embed"))
    rgb, objects = gt["2.jpeg"]
    features = processor.encode(rgb)
    prompts = [Prompt.from_box(objects[0][0], id="b"), Prompt.from_text("toy", standing=False),
               Prompt.everything(standing=False)]
    instances = processor.answer(features, prompts)
    kinds = [i.prompt_kind for i in instances]
    n = kinds.count(PromptKind.EVERYTHING)
    assert n > 0 and kinds == [PromptKind.BOX] + [PromptKind.TEXT] * n + [PromptKind.EVERYTHING] * n
    text, everything = instances[1:1 + n], instances[1 + n:]
    assert sorted(i.mask.sum() for i in text) == sorted(i.mask.sum() for i in everything)
    assert all(i.prompt_id == "toy" and i.label == "toy" for i in text)
    assert all(i.label == "toy" and i.top_k and i.top_k[0][0] == "toy" for i in everything)
    assert instances[0].label == "toy" and _iou(instances[0].mask, objects[0][1]) >= 0.9
    assert instances[0].top_k == [("toy", pytest.approx(instances[0].score))]  # box prompts get top-k too


def _bag_with_topics(tmp_path: Path) -> Path:
    b = BagBuilder()
    b.image(np.zeros((8, 8, 3), np.uint8), T0)
    b.add("/chatter", "std_msgs/msg/String", T0, b.f.make("std_msgs/msg/String", data="hi"))
    return b.write(tmp_path / "small")


def test_topic_resolution_rules():
    available = {IMAGE: "sensor_msgs/msg/Image", "/other/image": "sensor_msgs/msg/CompressedImage",
                 POINTS: "ovsam_ros/msg/PointPrompt", "/chatter": "std_msgs/msg/String",
                 "/ovsam/detections": "vision_msgs/msg/Detection2DArray"}
    with pytest.raises(BagError, match="several"):
        resolve_topics(available, BagTopics())
    roles = resolve_topics(available, BagTopics(image=IMAGE, text="/chatter"))
    assert roles == {"image": IMAGE, "points": POINTS, "text": "/chatter"}  # /ovsam/* is never an input
    with pytest.raises(BagError, match="is not in the bag"):
        resolve_topics(available, BagTopics(image="/nope"))
    with pytest.raises(BagError, match="carries std_msgs/msg/String"):
        resolve_topics(available, BagTopics(image="/chatter"))
    with pytest.raises(BagError, match="no sensor_msgs/msg/Image"):
        resolve_topics({"/chatter": "std_msgs/msg/String"}, BagTopics())


@pytest.mark.parametrize(("argv", "message"), [
    (["--image-topic", "/nope"], "'/nope' (--image-topic) is not in the bag"),
    (["--image-topic", "/chatter"], "carries std_msgs/msg/String"),
    (["--points-topic", "/chatter"], "--points-topic needs ovsam_ros/msg/PointPrompt"),
])
def test_cli_bag_topic_errors_are_one_line(tmp_path, capsys, argv, message):
    src = _bag_with_topics(tmp_path)
    assert main(["bag", str(src), str(tmp_path / "out"), "--model", "mobilesam", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_bag_that_cannot_be_opened(tmp_path, capsys):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not a bag at all")
    assert main(["bag", str(junk), str(tmp_path / "out")]) == 1
    assert "cannot open bag" in capsys.readouterr().err
    assert main(["bag", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "does not exist" in capsys.readouterr().err
