"""A tiny run of the benchmark (real MobileSAM, small photo, one repeat): every section is there and
every figure is a positive number. No timing thresholds."""

from __future__ import annotations

import json

import pytest
import torch

from ovsam_ros import bench


def _positive_times(entry: dict) -> None:
    assert entry["n"] >= 1 and entry["median_ms"] > 0 and entry["min_ms"] > 0


@pytest.mark.slow
def test_bench_smoke(mobile_sam_path, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--model", "mobilesam", "--device", "cpu", "--image-size", "320", "--repeats", "1",
                       "--warmup", "0", "--vocabularies", "coco", "lvis", "--no-architecture",
                       "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["config"]["image"] == [320, 240] and result["machine"]["device"] == "cpu"
    assert result["params_m"] == pytest.approx(10.13, abs=0.01)
    _positive_times(result["encode"])
    assert set(result["decode"]) == {"1", "8", "32"}
    for n, entry in result["decode"].items():
        _positive_times(entry)
        assert entry["per_prompt_ms"] == pytest.approx(entry["median_ms"] / int(n))
    assert result["classifier"]["lvis"]["shape"] == [1203, 2, 768]  # the released LVIS classifier shape
    assert result["classifier"]["lvis"]["rows"] < 1203 * 2  # padding is not stored
    everything = result["everything"]
    _positive_times(everything)
    assert everything["points_per_side"] == 32 and everything["masks_kept"] >= 1
    for n, entry in result["tracking"].items():
        _positive_times(entry)
        assert entry["tracks"] == int(n)  # the same object re-found on the same features every frame
        assert entry["per_track_ms"] == pytest.approx(entry["median_ms"] / int(n))
        assert 0 < entry["tracker_ms"] < entry["median_ms"]
    assert set(result["ratios"]) == {"encode_over_one_prompt", "prompts_32_over_encode",
                                     "everything_over_encode", "track_over_encode"}
    assert all(value > 0 for value in result["ratios"].values())
    for entry in result["classifier"].values():
        _positive_times(entry["1"])
        _positive_times(entry["32"])
    assert result["names_masks"] is False and result["recognition_modes"] is None
    conv = result["conversion"]
    for key in ("image_msg_to_array", "result_to_messages", "serialize_instance_array"):
        _positive_times(conv[key])
    assert 0 < conv["fraction_of_model_time"] < conv["fraction_with_serialization"]
    assert result["memory"]["peak_rss_mb"] > 0
    assert len(result["load_average"]["before"]) == 3 and result["seconds"] > 0
    assert "architecture" not in result


def test_flop_counter_counts_a_matmul():
    """The FLOP convention the architecture figures use: a multiply-add is 2."""
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert bench.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    assert bench.params_m(torch.nn.Linear(1000, 1000)) == pytest.approx(1.001)


def test_random_boxes_inside_image():
    boxes = bench.random_boxes(32, (240, 320))
    assert boxes.shape == (32, 4)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 240).all()
    assert (bench.random_boxes(32, (240, 320)) == boxes).all()  # same prompts every run


def test_bad_options(capsys):
    assert bench.main(["--model", "mobilesam", "--repeats", "0"]) == 2
    assert capsys.readouterr().err.startswith("ovsam-ros bench: error: need --repeats >= 1")
    with pytest.raises(SystemExit) as exit_info:  # argparse: the preset choices are the registry's
        bench.main(["--model", "nope", "--no-architecture"])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_flops_on_meta_device():
    """Counting on the meta device (no arithmetic) gives the same FLOPs as a real run."""
    from ovsam_ros.model.sam import build_mobile_sam

    model = build_mobile_sam(None, random_init=True)
    images = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        decoder = model.mask_decoder.output_hypernetworks_mlps[0]
        real = bench.count_flops(lambda: decoder(torch.randn(5, 256)))
    model.to("meta")
    meta = bench.count_flops(lambda: decoder(torch.randn(5, 256, device="meta")))
    assert real == meta == 2 * 5 * (256 * 256 * 2 + 256 * 32)
    encode = bench.count_flops(lambda: model.encode(images.to("meta")))
    assert 50e9 < encode < 100e9  # TinyViT-5M at 1024 px: about 37 G multiply-adds
