import json

import cv2

from ovsam_ros import assets


def test_mobile_sam_checkpoint_is_the_real_file(mobile_sam_path):
    assert mobile_sam_path.stat().st_size == 40_728_226
    assert assets.sha256_file(mobile_sam_path) == assets.MOBILE_SAM_SHA256


def test_bear_dataset_has_three_photos_and_six_instances(bear):
    coco = json.loads(bear.annotations.read_text())
    assert len(coco["images"]) == 3
    assert len(coco["annotations"]) == 6
    for image in coco["images"]:
        photo = cv2.imread(str(bear.image_dir / image["file_name"]))
        assert photo.shape == (image["height"], image["width"], 3)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    assert assets.cache_dir() == tmp_path


def test_corrupt_cached_file_is_replaced(monkeypatch, tmp_path, bear):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    (tmp_path / "downloads").mkdir()
    first = assets.bear_dataset()
    victim = first.image_dir / "1.jpeg"
    victim.write_bytes(b"not a jpeg")
    again = assets.bear_dataset()
    assert assets.sha256_file(again.image_dir / "1.jpeg") == assets.BEAR_IMAGES["1.jpeg"]
